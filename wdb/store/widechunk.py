"""One-row chunks of wide spaces (``wdb.store.arrays.WIDE``): their byte planes, coded and
decoded without the row-delta machinery of ``wdb.store.codec`` (same chunk format).

Coding. A wide chunk is 4 MiB of one row; each byte plane (1 MiB) is coded by zstd with a
match finder that barely looks (``codec.LITERAL_PARAMS``: fastest strategy, 64-entry tables,
matches of 7 bytes or more): such a plane has almost no repeats worth a match, and level 1's
search for them had taken 9-12 ms of a 16 ms chunk on the exponent plane, for a larger result.
Measured on 4 MiB of normal float32 values: the exponent plane 0.359x of its bytes at level 1,
0.326x so; a 3e-3 fine-tune residual's third plane 0.457x and 0.434x; each 3-5x faster. Any
zstd decoder reads the frames: nothing changes for readers, and rows of small spaces (many rows
per chunk, where matches across rows do pay) keep level 1 as it is.

Decoding straight into a row (:func:`decode_row_chunk`): ``wdb.store.family`` reads a delta
row chunk by chunk, a residual chunk together with its key row's chunk.
"""

from __future__ import annotations

import contextlib
import struct
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numcodecs import Blosc

from wdb.store import placing
from wdb.store.codec import (
    _UINT,
    BITS,
    NAME,
    RAW,
    SCRATCH_MAX_BYTES,
    VERSION,
    _bits,
    _kind,
    _rotate,
    _scratch,
    _unpack,
    decode,
)


def row_planes(u: np.ndarray, kind: str) -> np.ndarray:
    """The byte planes ``[itemsize, n]`` of one long row, built a slice at a time: the whole
    row's rotated words and their temporary (8 MiB for a 4 MiB chunk, in each encoding
    thread) are what had pushed a sharded ingest's peak memory past 1.5x its largest shard."""
    size, t = u.itemsize, u.dtype.type
    planes = np.empty((size, u.size), dtype=np.uint8)
    if placing.usable(size):  # one compiled pass (wdb.store.placing)
        placing.split(u, planes, kind == "f")
        return planes
    width = SCRATCH_MAX_BYTES // (2 * size)
    words, tmp = _scratch("slice", width, t), _scratch("slice_tmp", width, t)
    for a in range(0, u.size, width):
        b = min(u.size, a + width)
        w = words[: b - a]
        if kind == "f":
            _rotate(u[a:b], True, out=w, tmp=tmp[: b - a])
        else:
            np.copyto(w, u[a:b])
        planes[:, a:b] = w.view(np.uint8).reshape(-1, size).T
    return planes


def _one_row_planes(blob: bytes | np.ndarray, n: int, dtype: np.dtype) -> list | None:
    """The byte planes of a one-row chunk of ``n`` values (a wide space's), each decoded on
    its own (a stored plane is a view of ``blob``); None when the chunk is another kind
    (several rows, another version or value size): :func:`decode` reads those."""
    buf = memoryview(np.frombuffer(blob, dtype=np.uint8))
    size = dtype.itemsize
    if len(buf) < 3 + 5 * size or size not in _UINT:
        return None
    version, got, mode = struct.unpack_from("<BBB", buf)
    if version != VERSION or got != size or mode != RAW:
        return None
    at = 3
    coders = bytes(buf[at : at + size])
    lengths = struct.unpack_from(f"<{size}I", buf, at + size)
    at += 5 * size
    planes = []
    for i, (coder, length) in enumerate(zip(coders, lengths, strict=True)):
        part = buf[at : at + length]
        at += length
        if coder == BITS:  # _unpack's work array is shared by the planes: one of its own
            try:
                planes.append(np.frombuffer(Blosc().decode(part), dtype=np.uint8))
            except Exception as exc:
                raise ValueError(f"{NAME}: byte plane {i} does not decode to {n} values") from exc
            if planes[-1].size != n:
                raise ValueError(f"{NAME}: byte plane {i} does not decode to {n} values")
        else:
            planes.append(_unpack(coder, part, n, i))
    return planes


def decode_row_chunk(
    blob: bytes | np.ndarray,
    out: np.ndarray,
    key: bytes | np.ndarray | None = None,
    onto: bool = False,
) -> None:
    """Decode a one-row chunk (a wide space's) straight into ``out`` (its values, the chunk's
    width, the storage dtype); with ``key``, the chunk is a residual (the XOR of a row's bit
    patterns with a key row's) and ``key`` the key row's chunk: ``out`` gets the values. With
    ``onto``, ``out`` already holds the key row's values (a scan's kept chunk) and the residual
    is XORed onto them in the same pass.

    Why not :func:`decode` twice and an XOR: XOR commutes with the byte planes and with the
    bit rotation, so the residual's and the key's planes are XORed as they are placed into
    ``out`` and the words rotated back once. One placement, one rotation and no temporaries
    instead of two of each, a copy and an XOR pass: reading a delta row had taken 2-3x a
    plain row's time, mostly in placing and rotating words twice."""
    if onto and key is not None:
        raise ValueError("decode_row_chunk: onto= takes the key's values in out, not a key")
    dtype = out.dtype
    n = out.size
    planes = _one_row_planes(blob, n, dtype)
    kplanes = None if key is None else _one_row_planes(key, n, dtype)
    if planes is None or (key is not None and kplanes is None):  # another kind: the long way
        words = decode(blob, (1, n), dtype).view(_UINT[dtype.itemsize])
        if key is not None:
            kw = decode(key, (1, n), dtype).view(words.dtype)
            np.bitwise_xor(words, kw, out=words)
        if onto:
            np.bitwise_xor(out.view(words.dtype), words, out=out.view(words.dtype))
        else:
            out.view(words.dtype)[:] = words
        return
    size, t = dtype.itemsize, _UINT[dtype.itemsize]
    words = out.view(t)
    if placing.usable(size):  # one compiled pass (wdb.store.placing)
        rotate = _kind(dtype) == "f"
        if kplanes is not None:
            placing.place(kplanes, words, rotate, xor=False)
        placing.place(planes, words, rotate, xor=onto or kplanes is not None)
        return
    keyed = words.copy() if onto else None  # the numpy path overwrites: XORed on at the end
    by_plane = words.view(np.uint8).reshape(n, size)
    for p in range(size):
        if kplanes is None:
            by_plane[:, p] = planes[p]
        else:
            np.bitwise_xor(planes[p], kplanes[p], out=by_plane[:, p])
    if _kind(dtype) == "f":  # back from the rotation, a slice at a time (a work array each)
        width = SCRATCH_MAX_BYTES // (2 * size)
        tmp = _scratch("slice_tmp", width, t)
        for a in range(0, n, width):
            b = min(n, a + width)
            _rotate(words[a:b], False, out=words[a:b], tmp=tmp[: b - a])
    if keyed is not None:
        np.bitwise_xor(words, keyed, out=words)


def estimate(chunk: np.ndarray) -> int:
    """The bytes ``chunk`` would take coded alone, from the order-0 entropy of its byte planes
    on a sample (what the codec itself estimates to choose a plane's coder): some 2% of the
    cost of coding it, so a delta that is clearly smaller is kept without that second coding."""
    u = chunk.view(np.dtype(f"u{chunk.dtype.itemsize}"))
    step = max(1, u.size // 65536)
    sample = np.ascontiguousarray(u[::step])
    if chunk.dtype.kind == "f":
        sample = _rotate(sample, True, out=np.empty_like(sample), tmp=np.empty_like(sample))
    planes = sample.view(np.uint8).reshape(-1, u.itemsize)
    counts = np.stack([np.bincount(planes[:, p], minlength=256) for p in range(u.itemsize)])
    bits = _bits(counts) / max(1, sample.size)
    return int(np.minimum(bits, 8.0).sum() / 8 * u.size)


def chunks(n: int, width: int, segments: Iterator[np.ndarray], dtype: np.dtype):
    """Yield ``(index, chunk)``: the row's values in ``width``-column chunks, the last one padded
    with zeros to ``width`` (as Zarr stores edge chunks). A chunk that lies inside one segment
    is a view of it (a flattened row: every chunk but the last, no copy); one that straddles
    segments is assembled in a buffer of its own (memory: one chunk)."""
    buf = np.zeros(width, dtype=dtype)
    col, fill, c = 0, 0, 0
    for seg in segments:
        seg = np.ascontiguousarray(seg, dtype=dtype).reshape(-1)
        at = 0
        while at < seg.size:
            if fill == 0 and seg.size - at >= width:  # a whole chunk inside the segment
                yield c, seg[at : at + width]
                c, col, at = c + 1, col + width, at + width
                continue
            take = min(width - fill, seg.size - at)
            buf[fill : fill + take] = seg[at : at + take]
            fill, at = fill + take, at + take
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


def _key(arr: Any, row: int, c: int) -> str:
    prefix = arr.store_path.path
    key = arr.metadata.encode_chunk_key((row, c))
    return f"{prefix}/{key}" if prefix else key


def _blobs(arr: Any, places: list[tuple[int, int]]) -> dict[tuple[int, int], Any]:
    """The stored bytes of chunks ``(row, c)`` (None: no such chunk), fetched together: one
    trip through Zarr's event loop for them all (one per chunk had cost a few thread hops
    each, which a loaded machine makes slow)."""
    import asyncio

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store, proto = arr.store_path.store, default_buffer_prototype()

    async def fetch() -> list:
        return await asyncio.gather(*(store.get(_key(arr, r, c), proto) for r, c in places))

    got = sync(fetch())
    return {p: None if g is None else g.as_numpy_array() for p, g in zip(places, got, strict=True)}


#: chunks of a row fetched at once (with their key row's), the next window while one decodes
WINDOW = 8


def direct(arr: Any) -> bool:
    """Whether a chunk of ``arr`` is the row-delta codec's bytes of little-endian values and
    nothing else, so that :func:`decode_row_chunk` reads it without Zarr."""
    from wdb.store.codec import RowDeltaCodec

    comps, ser = tuple(arr.compressors), arr.serializer
    endian = str(getattr(getattr(ser, "endian", None), "value", "little"))
    return (
        len(comps) == 1
        and isinstance(comps[0], RowDeltaCodec)
        and not tuple(arr.filters)
        and type(ser).__name__ == "BytesCodec"
        and (endian == "little" or arr.dtype.itemsize == 1)
    )


class _Kept:
    """Decoded key-row chunks kept for the delta rows read after them, up to ``cap`` bytes.

    Why: every delta row of a family is a residual against the same key row, and reading it had
    decoded that key row's chunk again each time (half of a nearest query's decoding on a
    fine-tune family). A key chunk's values are decoded once and XORed into each residual: XOR
    commutes with the byte planes and the bit rotation (see :func:`decode_row_chunk`), so the
    bits are the same. First come, kept: nothing is evicted while a scan runs, so a key row
    larger than ``cap`` keeps its first chunks for every row (an LRU would keep none of a
    cyclic scan's)."""

    def __init__(self, cap: int):
        self.cap, self.used, self.users = cap, 0, 1
        self.chunks: dict[tuple[str, int, int], np.ndarray] = {}
        self.lock = threading.Lock()

    def get(self, where: tuple[str, int, int]) -> np.ndarray | None:
        return self.chunks.get(where)

    def room(self, nbytes: int) -> bool:
        """Reserve ``nbytes`` if they fit (the caller then :meth:`put`s)."""
        with self.lock:
            if self.used + nbytes > self.cap:
                return False
            self.used += nbytes
            return True

    def put(self, where: tuple[str, int, int], values: np.ndarray) -> None:
        self.chunks[where] = values


_KEPT: _Kept | None = None
_KEPT_LOCK = threading.Lock()


@contextlib.contextmanager
def keep_key_chunks(nbytes: int) -> Iterator[None]:
    """While open, delta rows read by :func:`read_row` keep their key rows' decoded chunks (up
    to ``nbytes``, which the caller counts in its memory budget); dropped when the last scan
    using them closes (scans open at once in one process share the first one's)."""
    global _KEPT
    with _KEPT_LOCK:
        if _KEPT is not None:
            _KEPT.users += 1
        elif nbytes > 0:
            _KEPT = _Kept(nbytes)
        using = _KEPT is not None
    try:
        yield
    finally:
        if using:
            with _KEPT_LOCK:
                _KEPT.users -= 1
                if _KEPT.users == 0:
                    _KEPT = None


class OwnChunk(Exception):
    """A chunk stored at the row being read does not decode (not its parent's fault)."""


def _blame(exc: Exception, blob: np.ndarray, own: bool, dest: np.ndarray | None) -> None:
    """Re-raise a chunk's decoding error: as :class:`OwnChunk` when the bytes at fault are
    the row's own (``own``; with a key, only when ``blob`` alone fails to decode too)."""
    if own:
        try:
            if dest is not None:
                decode_row_chunk(blob, dest)
        except Exception:
            raise OwnChunk() from exc
        if dest is None:
            raise OwnChunk() from exc
    raise exc


def read_row(
    arr: Any,
    row: int,
    tokens: dict[int, tuple[str, int]],
    key_row: int,
    key_tokens: dict[int, tuple[str, int]],
    out: np.ndarray,
    span: range | None = None,
) -> None:
    """Decode a delta row of ``arr`` into ``out``, chunk by chunk on the codec's threads: a
    chunk stored as values from the row that holds them (``tokens``, see
    ``wdb.store.family.parse_tokens``), a residual together with the key row's chunk (itself
    perhaps borrowed: ``key_tokens``). A missing chunk of another row is a ``KeyError``; a
    chunk of the row's own that does not decode, :class:`OwnChunk`. ``span``: only those
    chunks, ``out`` then holding their columns (a column block of a scan)."""
    from wdb.store.codec import _pool

    width, n = int(arr.chunks[1]), int(arr.shape[1])
    span = range(-(-n // width)) if span is None else span
    base = span.start * width
    kept, name = _KEPT, str(arr.store_path)

    def one(c: int, blobs: dict[tuple[int, int], Any]) -> None:
        a, b = c * width - base, min(n, (c + 1) * width) - base
        kind, src = tokens.get(c, ("v", row))
        dest = out[a:b] if b - a == width else np.empty(width, dtype=arr.dtype)
        blob = blobs.get((src, c))
        if kind == "x":
            ksrc = key_tokens.get(c, ("v", key_row))[1]
            values = None if kept is None else kept.get((name, ksrc, c))
            key = None if values is not None else blobs.get((ksrc, c))
            if blob is None or (key is None and values is None):
                raise KeyError(f"chunk {c} of row {src if blob is None else ksrc} is missing")
            if values is None and kept is not None and kept.room(width * arr.dtype.itemsize):
                values = np.empty(width, dtype=arr.dtype)  # decoded once, kept for the next rows
                decode_row_chunk(key, values)
                kept.put((name, ksrc, c), values)
            try:
                if values is None:
                    decode_row_chunk(blob, dest, key)
                else:
                    dest[:] = values
                    decode_row_chunk(blob, dest, onto=True)
            except Exception as exc:
                _blame(exc, blob, src == row, dest)
        elif blob is None:
            if src != row:
                raise KeyError(f"chunk {c} of row {src} is missing")
            dest[:] = 0  # as Zarr reads a chunk never written (the digest will tell)
        else:
            try:
                decode_row_chunk(blob, dest)
            except Exception as exc:
                _blame(exc, blob, src == row, None)
        if b - a != width:
            out[a:b] = dest[: b - a]

    def places(window: range) -> list[tuple[int, int]]:
        got = [(tokens.get(c, ("v", row))[1], c) for c in window]
        keyed = [c for c in window if tokens.get(c, "v")[0] == "x"]
        keys = [(key_tokens.get(c, ("v", key_row))[1], c) for c in keyed]
        if kept is not None:  # a key chunk kept decoded is not read again
            keys = [(r, c) for r, c in keys if kept.get((name, r, c)) is None]
        return got + keys

    windows = [range(w, min(span.stop, w + WINDOW)) for w in range(span.start, span.stop, WINDOW)]
    pool, running = _pool(), deque()
    with ThreadPoolExecutor(1, thread_name_prefix="wdb-fetch") as fetcher:
        ahead = fetcher.submit(_blobs, arr, places(windows[0]))
        for k, window in enumerate(windows):
            got = ahead.result()
            if k + 1 < len(windows):  # the next window's bytes are read while this one decodes
                ahead = fetcher.submit(_blobs, arr, places(windows[k + 1]))
            running.append([pool.submit(one, c, got) for c in window])
            if len(running) > 1:  # two windows decoding at most (memory), no pause between
                for f in running.popleft():
                    f.result()
        for futures in running:
            for f in futures:
                f.result()
