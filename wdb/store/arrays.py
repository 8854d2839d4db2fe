"""The weight store: one 2-D Zarr array per weight space, ``[checkpoints, parameters]``.

Chunking. A chunk is ``ROWS_PER_CHUNK`` rows by up to ``COLS_PER_CHUNK`` columns. Reading one
checkpoint decompresses ``ceil(D / COLS_PER_CHUNK)`` chunks; a column slice across N checkpoints
(e.g. "the last two BN layers of every model") decompresses ``N / ROWS_PER_CHUNK`` chunks of only
the columns it needs. 32 x 8192 float32 is 1 MiB raw: large enough for zstd to work with and for
file counts to stay small (a 10k-param space grows by one or two files per 32 checkpoints), small
enough that a single-row read costs about a millisecond. ``benchmarks/bench_store.py`` measures it.

Wide spaces (``WIDE`` = 1,048,576 parameters or more: a real model rather than a zoo MLP) use one
row per chunk and ``WIDE_COLS``-column chunks (4 MiB of float32) instead: with 32-row chunks
every appended checkpoint would rewrite (read, decompress, recompress) ``D / 8192`` chunks of
mostly other rows, and a 200 MB model took 20 s to ingest; such models are read whole, one
checkpoint at a time, so the column-slice argument above does not apply. Existing arrays keep
the chunking they were created with (Zarr records it per array).

Codec: ``wdb.rowdelta`` (``wdb.store.codec``): each row as itself or as its integer residual from
the row above, the line through the two above or the parabola through the three above,
whichever is smallest; then byte planes (the residual rows' column by column), zstd level 1
per plane; lossless on every bit pattern. Measured with
``benchmarks/bench_store.py`` against the codec before it (Blosc zstd1 bitshuffle, which arrays
created before it keep: zarr records the codecs per array, and ``wdb compact`` re-encodes them).
Level 1 rather than higher: weights barely compress at any level (a prototype of per-plane zstd
on the bench's independent runs: 0.842x of raw at level 1, 0.848x at 3, 0.830x at 19) and
ingest pays for every level.

bf16 spaces (storage dtype ``bfloat16``, ``wdb.store.tensors``) are ``uint16`` arrays of the bit
patterns, marked by the array attribute ``"values": "bfloat16"`` so that a plain Zarr reader can
tell. :meth:`ArrayStore.read` gives their values widened to float32, like every other space's;
:meth:`ArrayStore.read_stored` gives the bits (what the hashes, deltas and fsck work on); the
writers take values or bits (``wdb.store.tensors.to_stored``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import zarr

ROWS_PER_CHUNK = 32
COLS_PER_CHUNK = 8192
WIDE = 1 << 20
WIDE_COLS = 1 << 20


def _compressor(dtype: np.dtype) -> Any:
    """The codec new arrays get (``dtype`` kept for codecs that need the item size)."""
    from wdb.store.codec import RowDeltaCodec

    return RowDeltaCodec(level=1)


class ArrayStore:
    """A Zarr group of 2-D row-appendable arrays (weights, predictions, point clouds)."""

    def __init__(self, root: Path | str):
        self.root = str(root)
        self._group: zarr.Group | None = None
        #: checks every row read against the catalog (``wdb.store.verify.RowHashes``); the
        #: database sets it on its weight store
        self.verifier: Any = None
        #: decodes delta rows of wide spaces (``wdb.store.deltaread.DeltaIndex``); the database
        #: sets it on its weight store
        self.family: Any = None
        #: the key row the last write decoded, ``(path, row, values, digest)``
        #: (``wdb.store.write``): checked against the catalog before it is used again
        self.family_key: tuple | None = None
        self._storage: dict[str, str | None] = {}  # path -> "bfloat16" for bit arrays

    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            import zarr  # imported lazily: ~0.3 s that catalog-only commands need not pay

            from wdb.store.codec import register

            register()  # the entry point does this for installs; a source checkout needs it
            self._group = zarr.open_group(self.root, mode="a")
        return self._group

    def reopen(self) -> None:
        """Forget the opened group, whose member listing is cached (after arrays were moved
        underneath it, as ``wdb compact`` does)."""
        self._group = None
        self._storage.clear()

    def storage(self, path: str) -> str | None:
        """``"bfloat16"`` for an array of bf16 bit patterns, else None (values as stored)."""
        if path not in self._storage:
            arr = self.array(path)
            bits = arr.dtype == np.uint16 and arr.attrs.get("values") == "bfloat16"
            self._storage[path] = "bfloat16" if bits else None
        return self._storage[path]

    def value_dtype(self, path: str) -> np.dtype:
        """The dtype :meth:`read` gives for ``path`` (float32 for bf16 bit arrays)."""
        return np.dtype(np.float32) if self.storage(path) else np.dtype(self.array(path).dtype)

    def _to_stored(self, path: str, values: np.ndarray) -> np.ndarray:
        storage = self.storage(path)
        if storage is None:
            return values
        from wdb.store.tensors import to_stored

        return to_stored(values, storage, path)

    def create(
        self,
        path: str,
        n_cols: int | tuple[int, ...],
        dtype: str,
        rows_per_chunk: int = ROWS_PER_CHUNK,
        attrs: dict | None = None,
    ) -> zarr.Array:
        """Create an empty array with rows of shape ``n_cols`` (idempotent). ``dtype``
        ``bfloat16`` makes a ``uint16`` array of bit patterns (see the module docstring)."""
        if path in self.group:
            return self.group[path]
        from wdb.store.tensors import BITS, numpy_storage

        if dtype in BITS:
            attrs = {**(attrs or {}), "values": dtype}
            dtype = numpy_storage(dtype).name
        tail = (n_cols,) if isinstance(n_cols, int) else tuple(n_cols)
        chunks = (rows_per_chunk, min(tail[0], COLS_PER_CHUNK), *tail[1:])
        if rows_per_chunk == ROWS_PER_CHUNK and len(tail) == 1 and tail[0] >= WIDE:
            chunks = (1, WIDE_COLS)
        arr = self.group.create_array(
            path,
            shape=(0, *tail),
            chunks=chunks,
            dtype=dtype,
            compressors=_compressor(np.dtype(dtype)),
            fill_value=0,
        )
        if attrs:
            arr.attrs.update(attrs)
        return arr

    def array(self, path: str) -> zarr.Array:
        return self.group[path]

    def has(self, path: str) -> bool:
        return path in self.group

    def n_rows(self, path: str) -> int:
        return self.array(path).shape[0]

    def write(self, path: str, start: int, rows: np.ndarray) -> None:
        """Write ``rows`` at ``start``, growing the array as needed (append = start == n_rows)."""
        arr = self.array(path)
        rows = self._to_stored(path, rows)
        stop = start + rows.shape[0]
        if stop > arr.shape[0]:
            arr.resize((stop, *arr.shape[1:]))
        arr[start:stop] = rows

    def write_stream(
        self, path: str, row: int, n: int, segments: Iterable[np.ndarray]
    ) -> tuple[str, str]:
        """Write one row of ``n`` values given as consecutive segments, one column chunk at a
        time (memory: one chunk, not the row); returns the sha256 of the bytes written (the
        same digest as ``wdb.store.spaces.row_sha256`` of the whole row, stored form) and
        their block hashes (``wdb.store.verify.chunk_hashes``)."""
        import hashlib

        from wdb.store.verify import block_digest, hash_width

        arr = self.array(path)
        if row + 1 > arr.shape[0]:
            arr.resize((row + 1, *arr.shape[1:]))
        width, hashed = int(arr.chunks[1]), hash_width(arr)
        buf = np.empty(min(width, n), dtype=arr.dtype)
        digest = hashlib.sha256()
        blocks: list[bytes] = []
        col, fill = 0, 0
        for seg in segments:
            seg = np.ascontiguousarray(self._to_stored(path, seg), dtype=arr.dtype).reshape(-1)
            digest.update(seg.data)
            while seg.size:
                if buf.size == 0:
                    raise ValueError(f"row stream gave more than {n} values")
                take = min(buf.size - fill, seg.size)
                buf[fill : fill + take] = seg[:take]
                fill, seg = fill + take, seg[take:]
                if fill == buf.size:
                    blocks += [block_digest(buf[a : a + hashed]) for a in range(0, fill, hashed)]
                    arr[row, col : col + fill] = buf
                    col, fill = col + fill, 0
                    buf = buf[: min(width, n - col)] if n > col else buf[:0]
        if fill:
            blocks += [block_digest(buf[a : min(fill, a + hashed)]) for a in range(0, fill, hashed)]
            arr[row, col : col + fill] = buf[:fill]
            col += fill
        if col != n:
            raise ValueError(f"row stream gave {col} values, expected {n}")
        return digest.hexdigest(), f"{hashed}:{b''.join(blocks).hex()}"

    def truncate(self, path: str, n_rows: int) -> None:
        arr = self.array(path)
        arr.resize((n_rows, *arr.shape[1:]))

    def read(
        self, path: str, rows: np.ndarray | list[int], cols=None, verify: bool = True
    ) -> np.ndarray:
        """Rows' values in the order given (:meth:`read_stored`, bf16 bits widened to float32):
        the store's one reader."""
        out = self.read_stored(path, rows, cols, verify)
        if self.storage(path) is None:
            return out
        from wdb.store.tensors import bf16_widen

        return bf16_widen(out)

    def read_stored(
        self, path: str, rows: np.ndarray | list[int], cols=None, verify: bool = True
    ) -> np.ndarray:
        """Rows as stored in the order given (bf16: bit patterns), delta rows decoded
        (``wdb.store.family``).

        With a ``verifier`` (the weight store of a database) every row a checkpoint references
        is checked, after decoding, against the catalog's hashes, and damage raises
        ``DamagedChunk``; ``verify=False`` reads the values without that check (``wdb fsck``,
        which checks them itself, and the verifier's own read)."""
        if verify and self.verifier is not None:
            return self.verifier.read(self, path, rows, cols)
        arr = self.array(path)
        if self.family is not None and len(arr.shape) == 2 and arr.chunks[0] == 1:
            return self.family.read(self, path, np.asarray(rows, dtype=np.int64), cols)
        return self._read_raw(path, rows, cols)

    def _read_raw(self, path: str, rows: np.ndarray | list[int], cols=None) -> np.ndarray:
        """Rows as stored. Contiguous runs of sorted rows are read as slices."""
        rows = np.asarray(rows, dtype=np.int64)
        arr = self.array(path)
        col_sel = slice(None) if cols is None else cols
        if rows.size == 0:
            width = arr.shape[1] if cols is None else len(np.arange(arr.shape[1])[cols])
            return np.empty((0, width, *arr.shape[2:]), dtype=arr.dtype)
        steps = np.diff(rows)
        order = None if bool(np.all(steps >= 0)) else np.argsort(rows, kind="stable")
        srt = rows if order is None else rows[order]
        lo, hi = int(srt[0]), int(srt[-1]) + 1
        exact = order is None and bool(np.all(steps == 1))  # the range lo..hi, in order
        if srt.size > 0.5 * (hi - lo):
            # a range, only the columns asked for (a slice or a list of columns: Zarr decodes
            # just the chunks they fall in); no copy when the rows are that range in order
            sel = (slice(lo, hi), col_sel)
            block = arr[lo:hi] if cols is None else arr.get_orthogonal_selection(sel)
            out_sorted = block if exact else block[srt - lo]
        else:
            out_sorted = arr.get_orthogonal_selection((srt, col_sel))
        if order is None:
            return out_sorted
        out = np.empty_like(out_sorted)
        out[order] = out_sorted
        return out

    def iter_read(
        self, path: str, rows: np.ndarray | list[int], batch: int = 4096
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream ``(positions, block)`` for large selections with bounded memory."""
        rows = np.asarray(rows, dtype=np.int64)
        for start in range(0, rows.size, batch):
            pos = np.arange(start, min(start + batch, rows.size))
            yield pos, self.read(path, rows[pos])
