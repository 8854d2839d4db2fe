"""``wdb.rowdelta``: the weight store's lossless Zarr codec for chunks of checkpoint rows.

A chunk is ``R`` rows (checkpoints) by ``C`` values. The codec, a Zarr v3 bytes-to-bytes codec
placed after the default ``bytes`` codec (little-endian), does three things, all bijective on
the bit patterns (NaN payloads, -0.0 and denormals come back as they went in):

1. **Row delta.** Each row after the first may be stored as the difference from the row above
   it, taken on the integer order of the values (floats mapped to unsigned integers that sort
   like the floats, subtracted modulo 2**bits, then zigzag-coded so that small differences of
   either sign have many leading zero bits). Consecutive checkpoints of one run sit in adjacent
   rows (ingest appends a run's steps in order), so their difference is small. A third choice
   is the residual from the line through the two rows above (the difference of differences:
   optimisers with momentum move weights in steady directions); on the bench's consecutive
   Adam steps it took the store from 0.651x to 0.594x of raw, and P-diff's BN-only steps from
   0.571x to 0.532x. Which of the three a row gets is decided per row, by the order-0 entropy of
   its byte planes each way: unrelated rows (other runs, the zero padding of a chunk still
   filling up) stay as they are. The choice is one byte per row in the chunk's header.
2. **Byte planes.** The values' bytes are regrouped by significance (all first bytes, all
   second bytes, ...), ZipNN's idea: the plane holding the exponent has 2-3 bits of entropy,
   the low mantissa planes about 8. Floats stored as themselves are first rotated left one bit,
   so that the exponent fills one byte plane and the sign moves next to the noise.
3. **zstd per plane.** Each plane is compressed on its own, so zstd's Huffman tables fit the
   plane (one zstd call over the concatenated planes mixes them inside its blocks and loses
   about a sixth of the gain on independent runs: 0.870x against 0.842x of raw, measured). A plane of
   noise (estimated entropy above 7.9 bits a byte: low mantissa bytes) is stored as it is, as
   zstd would end up doing after spending the time; a near-constant plane (under 1.5 bits, e.g.
   the sign bits left alone in a byte when bf16 values sit in float32 rows) is also tried
   bit-shuffled (Blosc), since Huffman cannot spend less than one bit a byte. The choice is one
   byte per plane in the header.

Why a Zarr codec and not a row-group layout of our own: the chunk is already the unit the
store reads and rewrites, the delta reference (the row above) lives in the same chunk, so a
single-row read still decodes exactly one chunk per column block; and any program with ``zarr``
and this package installed reads the arrays (the codec is registered under the ``zarr.codecs``
entry point). Integer rather than XOR delta: on the bench's consecutive Adam steps of the digits
MLPs (case (b) of ``benchmarks/bench_store.py``), a prototype gave 0.709x of raw with XOR and
0.666x with the integer delta (0.639x vs 0.539x with lr 1e-3 instead of 1e-2).

Rows of wide spaces (one row per chunk, ``wdb.store.WIDE``) have no row above them in their
chunk: they get byte planes and zstd only.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numcodecs import Blosc
from numcodecs.zstd import Zstd
from zarr.abc.codec import BytesBytesCodec
from zarr.core.common import JSON, parse_named_configuration

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer

NAME = "wdb.rowdelta"
VERSION = 1
RAW, DELTA, DELTA2 = 0, 1, 2  # row modes: itself; minus the row above; minus the line through two
ZSTD, BITS, STORED = 0, 1, 2  # plane coders: zstd; bit-shuffled + zstd (Blosc); as they are
SAMPLES = 512  # values per row the mode choice looks at
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_INT = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
_local = threading.local()
#: work arrays larger than this are not kept between chunks: Zarr encodes with several threads
#: at once, and kept arrays of 4 MiB chunks (wide spaces) cost more memory than page faults.
SCRATCH_MAX_BYTES = 2 << 20


def _scratch(name: str, n: int, dtype: type) -> np.ndarray:
    """A work array of this thread, reused from chunk to chunk. Measured: a fresh 1 MiB array
    costs ~0.4 ms of page faults here (glibc hands freed large blocks back to the system), ten
    times the arithmetic done on it; so every step below writes into these with ``out=``."""
    if n * np.dtype(dtype).itemsize > SCRATCH_MAX_BYTES:  # a wide space's chunk: not kept
        return np.empty(n, dtype=dtype)
    cache = _local.__dict__.setdefault("arrays", {})
    arr = cache.get((name, dtype))
    if arr is None or arr.size < n:
        arr = cache[(name, dtype)] = np.empty(n, dtype=dtype)
    return arr[:n]


def _kind(dtype: np.dtype) -> str:
    """'f' (float bits: rotate, order by sign-magnitude), 'i' (signed), 'u' (anything else
    of 1, 2, 4 or 8 bytes: booleans, unsigned)."""
    return dtype.kind if dtype.kind in "fi" else "u"


def _ordered(
    u: np.ndarray, kind: str, out: np.ndarray, tmp: np.ndarray, inverse: bool = False
) -> np.ndarray:
    """Unsigned integers that sort like the values (a bijection on the bit patterns): floats
    flip all bits when negative and the sign bit when not; signed integers flip the sign bit.
    ``inverse`` maps them back. ``out`` may be ``u``."""
    t = u.dtype.type
    top = t(1 << (8 * u.itemsize - 1))
    if kind == "f":
        np.right_shift(u, t(8 * u.itemsize - 1), out=tmp)  # the sign bit (inverse: the top bit)
        if inverse:
            np.subtract(tmp, t(1), out=tmp)  # all ones (was negative) or 0
        else:
            np.negative(tmp, out=tmp)  # 0 or all ones (negative)
        np.bitwise_or(tmp, top, out=tmp)
        return np.bitwise_xor(u, tmp, out=out)
    if kind == "i":
        return np.bitwise_xor(u, top, out=out)
    np.copyto(out, u)
    return out


def _zigzag(d: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """In place: signed differences to unsigned, small magnitudes first (0, -1, 1, -2, ...)."""
    s = d.view(_INT[d.itemsize])
    np.right_shift(s, 8 * d.itemsize - 1, out=tmp.view(s.dtype))
    np.left_shift(s, 1, out=s)
    np.bitwise_xor(s, tmp.view(s.dtype), out=s)
    return d


def _unzigzag(z: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """In place: the inverse of :func:`_zigzag`."""
    t = z.dtype.type
    np.bitwise_and(z, t(1), out=tmp)
    np.negative(tmp, out=tmp)
    np.right_shift(z, t(1), out=z)
    return np.bitwise_xor(z, tmp, out=z)


def _rotate(u: np.ndarray, left: bool, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Rotate the bits by one (left: the sign bit becomes the lowest); ``out`` may be ``u``."""
    t, bits = u.dtype.type, 8 * u.itemsize
    a, b = (t(1), t(bits - 1)) if left else (t(bits - 1), t(1))
    np.right_shift(u, b, out=tmp)
    np.left_shift(u, a, out=out)
    return np.bitwise_or(out, tmp, out=out)


def _histograms(words: np.ndarray) -> np.ndarray:
    """Byte histograms ``[rows, planes, 256]`` of every row of ``words`` [R, S] (unsigned)."""
    n_rows, n_cols = words.shape
    size = words.itemsize
    planes = np.ascontiguousarray(words).view(np.uint8).reshape(n_rows, n_cols, size)
    slot = (np.arange(n_rows)[:, None] * size + np.arange(size)[None, :]) * 256
    counts = np.bincount((planes + slot[:, None, :]).ravel(), minlength=n_rows * size * 256)
    return counts.reshape(n_rows, size, 256)


def _bits(counts: np.ndarray) -> np.ndarray:
    """Order-0 entropy in bits of the histograms on the last axis, times their sample count
    (``N log2 N - sum c log2 c``): what zstd's Huffman stage would pay, near enough to choose
    by."""
    total = counts.sum(axis=-1)
    table = _clog2(int(total.max(initial=0)))
    return table[total] - table[counts].sum(axis=-1)


@functools.cache
def _clog2_table(n: int) -> np.ndarray:
    c = np.arange(n + 1, dtype=np.float64)
    return c * np.log2(np.maximum(c, 1))


def _clog2(n: int) -> np.ndarray:
    """``c log2 c`` for c = 0..n (at least), from a cached table."""
    return _clog2_table(max(1 << 15, 1 << int(n).bit_length()))


def _row_modes(u: np.ndarray, words: np.ndarray, kind: str) -> np.ndarray:
    """Per row, the cheapest of: itself, its delta from the row above, its residual from the
    line through the two rows above (momentum). Rewrites ``words`` (both [R, C]) in place
    and returns the modes."""
    n_rows, n_cols = u.shape
    n = u.size
    t = u.dtype.type
    tmp = _scratch("tmp", n, t)
    o = _ordered(u.reshape(-1), kind, _scratch("o", n, t), tmp).reshape(n_rows, n_cols)
    d1 = np.subtract(o[1:], o[:-1], out=_scratch("d1", n - n_cols, t).reshape(-1, n_cols))
    cands = [words[1:], None]
    if n_rows > 2:
        e2 = _scratch("e2", n - n_cols, t).reshape(-1, n_cols)
        np.subtract(d1[1:], d1[:-1], out=e2[1:])
        np.copyto(e2[:1], d1[:1])
        cands.append(_zigzag(e2, tmp[: e2.size].reshape(e2.shape)))
    cands[1] = _zigzag(d1, tmp[: d1.size].reshape(d1.shape))
    step = max(1, n_cols // SAMPLES)
    cost = np.stack([_bits(_histograms(c[:, ::step])).sum(axis=1) for c in cands])
    pick = cost.argmin(axis=0)
    if n_rows > 2 and pick[0] == DELTA2:  # row 1 has one row above it: its "e2" is its delta
        pick[0] = DELTA
    for r in np.flatnonzero(pick != RAW):
        words[r + 1] = cands[pick[r]][r]
    modes = np.zeros(n_rows, dtype=np.uint8)
    modes[1:] = pick
    return modes


def _cumsum_rows(x: np.ndarray) -> None:
    """In place: the running sum of ``x``'s rows (modulo 2**bits), in about 2 sqrt(R) numpy
    calls instead of R: blocks of rows are summed side by side, then each block gets the last
    row of the one before. Fewer calls matter more than passes here: under Zarr's reader
    threads each numpy call waits for the GIL (with asyncio's six threads on 2 cores, one call
    per row cost ~50 us instead of 4)."""
    m = len(x)
    s = max(1, math.isqrt(m))
    g = m // s
    blocks = x[: g * s].reshape(g, s, *x.shape[1:])
    for j in range(1, s):
        np.add(blocks[:, j - 1], blocks[:, j], out=blocks[:, j])
    for b in range(1, g):
        np.add(blocks[b], blocks[b - 1, -1], out=blocks[b])
    for i in range(g * s, m):
        np.add(x[i - 1], x[i], out=x[i])


def _undelta(words: np.ndarray, modes: np.ndarray, kind: str, tmp: np.ndarray) -> None:
    """In place: the rows of a chunk ([R, C], as assembled from the byte planes) back from
    their ``modes``. Everything happens in the one output array (raw rows to integer order,
    each run of delta rows un-zigzagged and summed down, then all rows back to values), so a
    decode touches three arrays instead of five: under Zarr's reader threads the extra
    arrays' cache misses and page faults had made all-delta reads ~2x the old codec's."""
    n_rows, n_cols = words.shape
    raw = np.flatnonzero(modes == RAW)
    # the usual chunk of one run's steps has one raw row, its first; more are gathered, so
    # that a few calls do them all
    rows = words[:1] if len(raw) == 1 else words[raw]
    part = tmp[: rows.size].reshape(rows.shape)
    if kind == "f":
        _rotate(rows, False, out=rows, tmp=part)
    _ordered(rows, kind, out=rows, tmp=part)
    if len(raw) > 1:
        words[raw] = rows
    r = 1
    while r < n_rows:  # each run of one delta mode, in order: a delta refers to rows rebuilt first
        if modes[r] == RAW:
            r += 1
            continue
        end = r
        while end < n_rows and modes[end] == modes[r]:
            end += 1
        _unzigzag(words[r:end], tmp[: (end - r) * n_cols].reshape(end - r, n_cols))
        if modes[r] == DELTA2:  # residuals -> slopes (from the slope above) -> rows
            words[r] += words[r - 1]
            words[r] -= words[r - 2]
            _cumsum_rows(words[r:end])
        _cumsum_rows(words[r - 1 : end])  # plain deltas (or slopes): a running sum down the rows
        r = end
    _ordered(words, kind, out=words, tmp=tmp.reshape(words.shape), inverse=True)


def _row_planes(u: np.ndarray, kind: str) -> np.ndarray:
    """The byte planes ``[itemsize, n]`` of one long row, built a slice at a time: the whole
    row's rotated words and their temporary (8 MiB for a 4 MiB chunk, in each encoding
    thread) are what had pushed a sharded ingest's peak memory past 1.5x its largest shard."""
    size, t = u.itemsize, u.dtype.type
    planes = np.empty((size, u.size), dtype=np.uint8)
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


def encode(data: bytes | np.ndarray, shape: tuple[int, ...], dtype: np.dtype, level: int) -> bytes:
    """The chunk's little-endian bytes (``shape``, ``dtype``) to the codec's bytes."""
    dtype = np.dtype(dtype)
    size = dtype.itemsize
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        return struct.pack("<BB", VERSION, 0)
    if size not in _UINT:
        return struct.pack("<BB", VERSION, 0) + Zstd(level).encode(raw)
    kind, t = _kind(dtype), _UINT[size]
    n_rows = shape[0] if len(shape) > 1 else 1
    u = raw.view(t)
    n = u.size
    step = max(1, n // (SAMPLES * 32))
    modes = np.zeros(n_rows, dtype=np.uint8)
    if n_rows == 1 and n * size > SCRATCH_MAX_BYTES:  # a wide space's chunk: no row above
        planes = _row_planes(u, kind)
        counts = np.stack([np.bincount(pl[::step], minlength=256) for pl in planes])
        plane_bits = _bits(counts) / planes[0, ::step].size
        plane_of = planes.__getitem__  # contiguous views: stored planes need no copy
        reused = False
    else:
        words = _scratch("words", n, t)
        if kind == "f":
            _rotate(u, True, out=words, tmp=_scratch("tmp", n, t))
        else:
            np.copyto(words, u)
        if n_rows > 1:
            modes = _row_modes(u.reshape(n_rows, -1), words.reshape(n_rows, -1), kind)
        plane_bits = _bits(_histograms(words[None, ::step]))[0] / words[::step].size
        by_plane = words.view(np.uint8).reshape(-1, size)
        plane = _scratch("plane", n, np.uint8)
        reused = True  # one work array for every plane: a stored plane is copied out

        def plane_of(p: int) -> np.ndarray:
            np.copyto(plane, by_plane[:, p])
            return plane

    coders, blobs = [], []
    for p in range(size):
        data_p = plane_of(p)
        if plane_bits[p] > 7.9:  # noise (low mantissa bytes): zstd would store it as it is
            coders.append(STORED)
            blobs.append(data_p.copy() if reused else data_p)
            continue
        blob, coder = Zstd(level).encode(data_p), ZSTD
        if plane_bits[p] < 1.5:  # Huffman pays >= 1 bit a byte; bit planes need not
            shuffled = Blosc("zstd", level, Blosc.BITSHUFFLE).encode(data_p)
            if len(shuffled) < len(blob):
                blob, coder = shuffled, BITS
        coders.append(coder)
        blobs.append(blob)
    head = struct.pack(
        f"<BB{n_rows}s{size}s{size}I",
        VERSION,
        size,
        modes.tobytes(),
        bytes(coders),
        *(len(memoryview(b).cast("B")) for b in blobs),
    )
    return b"".join([head, *blobs])  # one copy of the planes, not two


def decode(blob: bytes | np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The codec's bytes back to the chunk's little-endian bytes (a new uint8 array)."""
    dtype = np.dtype(dtype)
    buf = memoryview(np.frombuffer(blob, dtype=np.uint8))
    version, size = struct.unpack_from("<BB", buf)
    if version != VERSION:
        raise ValueError(f"{NAME}: chunk written by codec version {version}, this is {VERSION}")
    if size == 0:  # empty, or values of an odd size: plain zstd
        rest = buf[2:]
        return np.frombuffer(Zstd().decode(rest) if len(rest) else b"", dtype=np.uint8)
    if size != dtype.itemsize:
        raise ValueError(f"{NAME}: chunk of {size}-byte values read as {dtype}")
    kind, t = _kind(dtype), _UINT[size]
    n_rows = shape[0] if len(shape) > 1 else 1
    at = 2
    modes = np.frombuffer(buf[at : at + n_rows], dtype=np.uint8)
    coders = bytes(buf[at + n_rows : at + n_rows + size])
    at += n_rows + size
    lengths = struct.unpack_from(f"<{size}I", buf, at)
    at += 4 * size
    n = int(np.prod(shape))
    words = np.empty(n, dtype=t)  # the output: the planes go straight into their bytes of it
    tmp = _scratch("tmp", n, t)
    plane = _scratch("plane", n, np.uint8)
    by_plane = words.view(np.uint8).reshape(n, size)
    for p, (coder, length) in enumerate(zip(coders, lengths, strict=True)):
        part = buf[at : at + length]
        at += length
        try:
            if coder == STORED:
                if len(part) != n:
                    raise ValueError(f"{len(part)} bytes")
                src = np.frombuffer(part, dtype=np.uint8)
            else:
                (Blosc() if coder == BITS else Zstd()).decode(part, out=plane)
                src = plane
        except Exception as exc:  # a short, long or damaged plane: say which
            raise ValueError(f"{NAME}: byte plane {p} does not decode to {n} values") from exc
        by_plane[:, p] = src
    if n_rows and (modes[0] != RAW or modes.max() > DELTA2 or (n_rows > 1 and modes[1] == DELTA2)):
        raise ValueError(f"{NAME}: damaged chunk header (row modes)")
    if (modes != RAW).any():
        _undelta(words.reshape(n_rows, -1), modes, kind, tmp)
    elif kind == "f":
        _rotate(words, False, out=words, tmp=tmp)
    return words.view(np.uint8)


@dataclass(frozen=True)
class RowDeltaCodec(BytesBytesCodec):
    """The Zarr face of :func:`encode` / :func:`decode` (``{"name": "wdb.rowdelta"}``)."""

    is_fixed_size = False
    level: int = 1

    def __init__(self, *, level: int = 1) -> None:
        if not isinstance(level, int) or not -7 <= level <= 22:
            raise ValueError(f"{NAME}: zstd level must be an integer in -7..22, got {level!r}")
        object.__setattr__(self, "level", level)

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, config = parse_named_configuration(data, NAME)
        return cls(**config)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {"name": NAME, "configuration": {"level": self.level}}

    def _encode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer | None:
        dtype = chunk_spec.dtype.to_native_dtype()
        out = encode(chunk_bytes.as_numpy_array(), chunk_spec.shape, dtype, self.level)
        return chunk_spec.prototype.buffer.from_bytes(out)

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        dtype = chunk_spec.dtype.to_native_dtype()
        out = decode(chunk_bytes.as_numpy_array(), chunk_spec.shape, dtype)
        return chunk_spec.prototype.buffer.from_array_like(out)

    async def _encode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_pool(), self._encode_sync, chunk_bytes, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_pool(), self._decode_sync, chunk_bytes, chunk_spec)

    def compute_encoded_size(self, _input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError


_pools: dict[int, ThreadPoolExecutor] = {}


def _pool() -> ThreadPoolExecutor:
    """The codec's threads: one per core, not asyncio's default of cores + 4. More threads
    than cores only take turns at the GIL between numpy calls, and each keeps its own malloc
    arena of chunk-sized temporaries (with six, ingesting a 210 MB sharded checkpoint peaked
    at 1.5x its largest shard). One pool per process id, so a forked child makes its own."""
    pid = os.getpid()
    if pid not in _pools:
        _pools.clear()
        _pools[pid] = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="wdb-codec")
    return _pools[pid]


def register() -> None:
    """Make the codec known to zarr in this process (the entry point does it for installs)."""
    from zarr.registry import register_codec

    register_codec(NAME, RowDeltaCodec)
