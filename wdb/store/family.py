"""Families of big checkpoints stored as what they share: shared rows, XOR deltas, lineage.

Why. A wide space (one row per Zarr chunk row, ``wdb.store.arrays.WIDE``) gives the row-delta
codec no neighbour, so an epoch of a run, a re-save or a fine-tune was stored as a stranger
(0.84x of raw on a family of 25M-parameter fine-tunes). Here:

- **Shared rows** (every space). A new checkpoint whose sha256 equals a stored checkpoint's of
  the same space points at that row: it costs its catalog row only. ``(space_id, row)`` is not
  unique since revision 0007; reclaiming rows (``wdb fsck --fix``) is mark-and-sweep over
  ``checkpoints.row`` plus the parents of live delta rows (:func:`live_rows`).
- **Delta rows** (wide spaces). A row may store some of its column chunks as the XOR of its bit
  patterns (the storage dtype's width) with the same chunk of a *parent row*, coded by the
  store's own codec (byte planes + zstd: a residual is just a row of small bit patterns), each
  chunk accepted only when it is smaller than the chunk coded alone.
- **Parent**: (a) the previous stored step of the same run; (b) a declared base
  (``NewCheckpoint.base``, ``wdb ingest --base RUN[:STEP]``); (c) otherwise the nearest stored
  row of the space by sketch. A sketch is ``SKETCH`` values of the row at seeded random
  positions (a sparse random projection): differences of sketches are samples of the
  difference of rows, so distances between noise-only relatives are told apart (a 64-dim dense
  projection mixes every coordinate into each dimension and its error on the distance is some
  18%, more than the 5% that separates a fine-tune's base from that base's previous step).
- **Chains** are bounded: a row whose parent is already ``MAX_DEPTH`` links from a full row is
  stored full (its lineage is still recorded), so any read decodes at most ``MAX_DEPTH + 1``
  rows.

Where the delta bytes live: in the same Zarr array, at the child's own row (the chunk holds the
residual instead of the values). Chosen over a separate array or a blob store because the
write protocol (bytes first, then one catalog transaction; a crash leaves unreferenced tail
rows that the next write overwrites), ``wdb compact`` (which copies chunks bit-exactly and so
keeps residuals), fsck's tail reclaim and object stores (zarr over fsspec) all keep working
unchanged, and there is no second namespace of files to garbage-collect. The cost: a program
reading the array with plain zarr sees residuals in delta rows; ``family_rows`` says which.

Reading: :class:`DeltaIndex` patches rows that ``ArrayStore.read`` returns: a delta row is
decoded (parent first, recursively), XORed, and its xxh3_128 digest checked against
``family_rows.digest``; a missing or damaged parent is :class:`DamagedFamily` naming both
checkpoints, never wrong bytes.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xxhash

from wdb.errors import BadInput

if TYPE_CHECKING:
    from wdb.store.arrays import ArrayStore

#: links from a full row at most (a read decodes at most MAX_DEPTH + 1 rows)
MAX_DEPTH = int(os.environ.get("WDB_FAMILY_DEPTH", "4"))
#: values in a row's sketch
SKETCH = 2048
SEED = 0x5EED


class DamagedFamily(BadInput):
    """A delta row whose parent is missing or damaged (or whose own bytes are)."""


def is_family(arr: Any) -> bool:
    """Whether an array is one row per chunk (a wide space), where deltas apply."""
    return len(arr.shape) == 2 and int(arr.chunks[0]) == 1


def digest(row: np.ndarray) -> str:
    return xxhash.xxh3_128_hexdigest(np.ascontiguousarray(row).data)


@functools.lru_cache(maxsize=8)
def sketch_positions(n: int) -> np.ndarray:
    """The seeded positions a row of ``n`` values is sketched at (sorted)."""
    if n <= SKETCH:
        return np.arange(n)
    rng = np.random.default_rng(SEED)
    return np.sort(rng.choice(n, SKETCH, replace=False))


def sketch(row: np.ndarray) -> bytes:
    """The sketch of a whole row, as float32 bytes."""
    vals = np.asarray(row).reshape(-1)[sketch_positions(int(np.asarray(row).size))]
    return vals.astype(np.float32).tobytes()


def distance(a: bytes, b: bytes) -> float:
    """Relative L2 distance of two sketches (finite values only)."""
    x, y = np.frombuffer(a, np.float32).astype(np.float64), np.frombuffer(b, np.float32)
    d = np.nan_to_num(x - y, nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(np.linalg.norm(np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0))) or 1.0
    return float(np.linalg.norm(d)) / scale


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def _chunk_key(arr: Any, row: int, c: int) -> str:
    prefix = arr.store_path.path
    key = arr.metadata.encode_chunk_key((row, c))
    return f"{prefix}/{key}" if prefix else key


def _set_chunk(arr: Any, row: int, c: int, blob: bytes) -> None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buf = default_buffer_prototype().buffer.from_bytes(blob)
    sync(arr.store_path.store.set(_chunk_key(arr, row, c), buf))


def _encode(chunk: np.ndarray, dtype: np.dtype) -> bytes:
    from wdb.store.codec import encode

    return encode(chunk.view(np.uint8), (1, chunk.size), dtype, 1)


@dataclass
class Written:
    """What :func:`write_row` stored: the ``family_rows`` entry and the bytes it saved."""

    digest: str
    sketch: bytes
    delta_chunks: list[int] = field(default_factory=list)
    bytes_saved: int = 0
    sha256: str | None = None
    #: the row's block hashes for verified reads (``wdb.store.verify.chunk_hashes``)
    chunk_hashes: str = ""


def _chunks(n: int, width: int, segments: Iterator[np.ndarray], dtype: np.dtype):
    """Yield ``(index, chunk)``: the row's values in ``width``-column chunks, the last one padded
    with zeros to ``width`` (as Zarr stores edge chunks); memory one chunk."""
    buf = np.zeros(width, dtype=dtype)
    col, fill, c = 0, 0, 0
    for seg in segments:
        seg = np.ascontiguousarray(seg, dtype=dtype).reshape(-1)
        while seg.size:
            take = min(width - fill, seg.size)
            buf[fill : fill + take] = seg[:take]
            fill, seg = fill + take, seg[take:]
            if fill == width:
                yield c, buf
                c, col, fill = c + 1, col + width, 0
                buf = np.zeros(width, dtype=dtype)
    if fill:
        buf[fill:] = 0
        yield c, buf
        col += fill
    if col != n:
        raise ValueError(f"row stream gave {col} values, expected {n}")


def write_row(
    store: ArrayStore,
    path: str,
    row: int,
    n: int,
    segments: Iterator[np.ndarray],
    parent: np.ndarray | None,
    sha256: bool = False,
) -> Written:
    """Write one row of a wide space chunk by chunk: each chunk as itself, or, with a decoded
    ``parent`` row, as its XOR with the parent's chunk when that codes smaller. Bytes only:
    the caller records the result in the catalog after (the write protocol)."""
    from concurrent.futures import ThreadPoolExecutor

    arr = store.array(path)
    if row + 1 > arr.shape[0]:
        arr.resize((row + 1, *arr.shape[1:]))
    dtype, width = arr.dtype, int(arr.chunks[1])
    hasher = xxhash.xxh3_128()
    import hashlib

    sha = hashlib.sha256() if sha256 else None
    pos = sketch_positions(n)
    sk = np.empty(pos.size, dtype=np.float32)
    out = Written(digest="", sketch=b"")
    lock = threading.Lock()

    def one(c: int, chunk: np.ndarray) -> None:
        own = _encode(chunk, dtype)
        blob, saved = own, 0
        if parent is not None:
            a = c * width
            pc = np.zeros(width, dtype=dtype)
            got = parent[a : a + width]
            pc[: got.size] = got
            res = (_bits(chunk) ^ _bits(pc)).view(dtype)
            delta = _encode(res, dtype)
            if len(delta) < len(own):
                blob, saved = delta, len(own) - len(delta)
        _set_chunk(arr, row, c, blob)
        with lock:
            if saved:
                out.delta_chunks.append(c)
                out.bytes_saved += saved

    from wdb.store.codec import _pool

    pending = []
    pool: ThreadPoolExecutor = _pool()
    from wdb.store.verify import block_digest

    blocks: list[bytes] = []
    for c, chunk in _chunks(n, width, segments, dtype):
        a = c * width
        valid = chunk[: max(0, min(width, n - a))]
        hasher.update(valid.data)
        blocks.append(block_digest(valid))
        if sha is not None:
            sha.update(valid.data)
        inside = (pos >= a) & (pos < a + width)
        sk[inside] = valid[pos[inside] - a]
        pending.append(pool.submit(one, c, chunk))
        if len(pending) >= (os.cpu_count() or 1) * 2:  # memory: a few chunks in flight
            pending.pop(0).result()
    for f in pending:
        f.result()
    out.delta_chunks.sort()
    out.digest, out.sketch = hasher.hexdigest(), sk.tobytes()
    out.sha256 = sha.hexdigest() if sha is not None else None
    out.chunk_hashes = f"{width}:{b''.join(blocks).hex()}"
    return out


class DeltaIndex:
    """Which stored rows are deltas, per array path, read from the catalog and cached.

    Rows at or below the highest row a checkpoint referenced when the cache was filled never
    change (rows are append-only; only unreferenced tail rows are ever rewritten), so a read
    of a higher row refreshes the cache first: another process's new delta rows are never read
    as values."""

    def __init__(self, catalog: Any):
        self.catalog = catalog
        self._cache: dict[str, tuple[int, int, dict[int, tuple[int, frozenset[int], str]]]] = {}
        #: the row (or column range) each thread decoded last: a scan reads a run's steps in
        #: order, so a delta row's parent is most often the row decoded just before it, and a
        #: chain of MAX_DEPTH links costs one read instead of MAX_DEPTH + 1
        self._last = threading.local()

    def _load(self, path: str) -> tuple[int, int, dict]:
        import sqlalchemy as sa

        try:
            return self._query(path)
        except sa.exc.DBAPIError:  # a catalog before revision 0007: no delta rows
            entry = (-1, 1 << 62, {})
            self._cache[path] = entry
            return entry

    def _query(self, path: str) -> tuple[int, int, dict]:
        import sqlalchemy as sa

        with self.catalog.begin() as conn:
            sid = conn.execute(
                sa.text("SELECT id FROM spaces WHERE array_path = :p"), {"p": path}
            ).scalar()
            if sid is None:  # no space yet: nothing to cache
                return (-1, -1, {})
            else:
                top = conn.execute(
                    sa.text("SELECT max(row) FROM checkpoints WHERE space_id = :s"), {"s": sid}
                ).scalar()
                rows = {}
                for r, p, chunks, dig in conn.execute(
                    sa.text(
                        "SELECT row, parent_row, delta_chunks, digest FROM family_rows "
                        "WHERE space_id = :s AND parent_row IS NOT NULL"
                    ),
                    {"s": sid},
                ):
                    cs = (
                        frozenset(int(x) for x in chunks.split(",") if x) if chunks else frozenset()
                    )
                    rows[int(r)] = (int(p), cs, dig)
                entry = (int(sid), -1 if top is None else int(top), rows)
        self._cache[path] = entry
        return entry

    def deltas(self, path: str, rows: np.ndarray) -> dict[int, tuple[int, frozenset[int], str]]:
        entry = self._cache.get(path)
        if entry is None or (rows.size and int(rows.max()) > entry[1]):
            entry = self._load(path)
        return entry[2]

    def _name(self, path: str, row: int) -> str:
        import sqlalchemy as sa

        sid = self._cache.get(path, (None,))[0]
        with self.catalog.begin() as conn:
            got = conn.execute(
                sa.text(
                    "SELECT c.id, r.name, c.step FROM checkpoints c JOIN runs r ON r.id = c.run_id "
                    "WHERE c.space_id = :s AND c.row = :r ORDER BY c.id LIMIT 1"
                ),
                {"s": sid, "r": row},
            ).first()
        if got is None:
            return f"row {row} (no checkpoint)"
        return f"checkpoint {got[0]} (run '{got[1]}' step {got[2]})"

    def decode(
        self,
        store: ArrayStore,
        path: str,
        row: int,
        depth: int = 0,
        cols: tuple[int, int] | None = None,
        raw: np.ndarray | None = None,
    ) -> np.ndarray:
        """The values of ``row`` (columns ``cols[0]:cols[1]`` only, if given), parents decoded
        first. ``raw``: the row's stored values for those columns, when the caller has read
        them already. A whole row is checked against its family digest; a column range cannot
        be (the digest is of the whole row), so a column read relies on the block hashes that
        verified reads check after decoding (``wdb.store.verify``)."""
        key = (store.root, path, row, cols)
        last = getattr(self._last, "entry", None)
        if last is not None and last[0] == key:
            return last[1]
        arr = store.array(path)
        info = self.deltas(path, np.array([row]))
        c0, c1 = cols if cols is not None else (0, int(arr.shape[1]))
        if raw is None:
            raw = np.asarray(arr[row] if cols is None else arr[row, c0:c1])
        if row not in info:  # a full row: kept when it is a parent (the next child needs it)
            if depth:
                self._last.entry = (key, raw if raw.base is None else raw.copy())
            return raw
        parent_row, chunks, want = info[row]
        if depth > 64:
            raise DamagedFamily(f"{self._name(path, row)}: delta chain loops in {path}")
        try:
            if parent_row >= arr.shape[0]:
                raise IndexError(f"row {parent_row} is past the array end")
            parent = self.decode(store, path, parent_row, depth + 1, cols)
        except Exception as exc:
            raise DamagedFamily(
                f"{self._name(path, row)}: its delta parent {self._name(path, parent_row)} "
                f"is missing or damaged in {path} ({exc})"
            ) from exc
        width = int(arr.chunks[1])
        bits, pbits = _bits(raw), _bits(parent)
        for c in chunks:
            a, b = max(c * width, c0), min((c + 1) * width, c1)
            if a < b:
                bits[a - c0 : b - c0] ^= pbits[a - c0 : b - c0]
        if cols is None and digest(raw) != want:
            raise DamagedFamily(
                f"{self._name(path, row)}: decoded bytes do not match their digest against "
                f"delta parent {self._name(path, parent_row)} in {path}: the parent or the "
                "row is damaged"
            )
        # kept as its own array: a view would keep the caller's whole batch alive
        self._last.entry = (key, raw if raw.base is None else raw.copy())
        return raw

    def patch(
        self, store: ArrayStore, path: str, rows: np.ndarray, cols: Any, out: np.ndarray
    ) -> np.ndarray:
        """Replace the delta rows of a read result (``out``: the rows as stored) by their
        decoded values, decoding only the columns read when they are one range."""
        info = self.deltas(path, rows)
        if not info:
            return out
        rng = None
        if isinstance(cols, slice) and cols.step in (None, 1):
            a, b, _ = cols.indices(int(store.array(path).shape[1]))
            rng = (a, max(a, b))
        for i, r in enumerate(rows.tolist()):
            if r in info:
                if cols is None or rng is not None:
                    out[i] = self.decode(store, path, int(r), cols=rng, raw=out[i])
                else:
                    out[i] = self.decode(store, path, int(r))[cols]
        return out


def live_rows(conn: Any, space_id: int) -> set[int]:
    """Rows in use: those a checkpoint points to, and every parent of a live delta row."""
    import sqlalchemy as sa

    live = {
        int(r)
        for (r,) in conn.execute(
            sa.text("SELECT DISTINCT row FROM checkpoints WHERE space_id = :s"), {"s": space_id}
        )
    }
    parents = {
        int(r): int(p)
        for r, p in conn.execute(
            sa.text(
                "SELECT row, parent_row FROM family_rows WHERE space_id = :s "
                "AND parent_row IS NOT NULL"
            ),
            {"s": space_id},
        )
    }
    todo = list(live)
    while todo:
        p = parents.get(todo.pop())
        if p is not None and p not in live:
            live.add(p)
            todo.append(p)
    return live
