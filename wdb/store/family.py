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
- **Key rows** bound every read to two decodes per chunk. A delta is taken against the
  parent's *key row*: the parent itself when it is stored as values (depth 0), else the row
  the parent's own delta is against (its ``parent_row``). So a delta row is always one link
  from a key row (depth 1) and reading it decodes its chunks and the key row's, never a chain
  (the first round chained up to four links and the slowest read took 4.8x a plain row's).
  What a chain bought, a child sharing most of its parent's chunks (a fine-tune with frozen
  layers), is kept by **borrowed chunks**: a chunk whose block hash equals the parent's block
  hash at that chunk is not written at all; its token points at the row holding the parent's
  bytes (``c=R``: values stored at row ``R``; ``c@R``: a residual against the same key row
  stored at row ``R``). Against a key row further away the residuals grow a little (the run
  of six steps at 1e-3: step 5 is about 2.2e-3 from step 0), which costs some 0.01x of raw
  on the bench's family.

``family_rows.delta_chunks`` holds the tokens, comma-separated: ``c`` (a residual stored at
the row itself), ``c@R`` and ``c=R``; a chunk without a token is stored as itself. Rows written
by the first round (chains of up to four links, plain ``c`` tokens) still decode: a delta
row's parent is decoded recursively whatever its depth.

Where the delta bytes live: in the same Zarr array, at the child's own row (the chunk holds the
residual instead of the values). Chosen over a separate array or a blob store because the
write protocol (bytes first, then one catalog transaction; a crash leaves unreferenced tail
rows that the next write overwrites), ``wdb compact`` (which copies chunks bit-exactly and so
keeps residuals), fsck's tail reclaim and object stores (zarr over fsspec) all keep working
unchanged, and there is no second namespace of files to garbage-collect. The cost: a program
reading the array with plain zarr sees residuals in delta rows; ``family_rows`` says which.

Reading (``wdb.store.deltaread``): ``DeltaIndex.read`` is ``ArrayStore.read`` for wide
spaces. A whole delta row is not read as stored first: it is decoded chunk by chunk on the codec's threads, a residual
chunk together with its key row's chunk (their byte planes XORed as they are placed into the
row, ``wdb.store.widechunk``), a borrowed chunk from the row that holds it; its xxh3_128
digest is then checked against ``family_rows.digest``. Before this, a delta row was read as
stored, its key row read whole, then the two XORed: two placements and rotations of every
chunk, and the slowest member of the bench's family read in 3.2x a plain row's time. Rows of
first-round chains (a key row that is itself a delta) take that older path. A missing or
damaged parent is :class:`DamagedFamily` naming both checkpoints, never wrong bytes; a chunk
of the row's own that does not decode is that row's damaged chunk (``wdb.store.verify``).
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

#: links from a key row at most for rows written now (first-round stores may hold up to 4)
MAX_DEPTH = 1
#: a delta chunk is kept without also coding the chunk alone when it is below this share of
#: the chunk's estimated size alone (``estimate``); otherwise both are coded and the smaller kept
CLEARLY = 0.9
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


class Sketcher:
    """A row's sketch taken segment by segment, in the pass that reads it for something else
    (a stream's hashing): a streamed row is not read again just to sketch it."""

    def __init__(self, n: int) -> None:
        self.pos = sketch_positions(n)
        self.out = np.empty(self.pos.size, dtype=np.float32)
        self.at = 0

    def add(self, seg: np.ndarray) -> None:
        """Take the next segment (values, or a bf16 space's ``uint16`` bits: the sketch is of
        values either way, so rows of both forms of a bf16 space compare)."""
        seg = np.asarray(seg).reshape(-1)
        pos, a = self.pos, self.at
        inside = (pos >= a) & (pos < a + seg.size)
        self.out[inside] = _values(seg[pos[inside] - a])
        self.at += seg.size

    def bytes(self) -> bytes:
        return self.out.tobytes()


def sketch(row: np.ndarray) -> bytes:
    """The sketch of a whole row, as float32 bytes."""
    vals = np.asarray(row).reshape(-1)[sketch_positions(int(np.asarray(row).size))]
    return _values(vals).astype(np.float32).tobytes()


def _values(picked: np.ndarray) -> np.ndarray:
    """Sketched values: ``uint16`` is a bf16 space's bit patterns (no other row is uint16)."""
    from wdb.store.tensors import from_storage

    return from_storage(picked, "bfloat16") if picked.dtype == np.uint16 else picked


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


def parse_tokens(text: str | None, row: int) -> dict[int, tuple[str, int]]:
    """``family_rows.delta_chunks`` of ``row`` as ``{chunk: (kind, source row)}``: kind ``x``
    (a residual against the key row, stored at the source row) or ``v`` (values stored at
    the source row)."""
    out: dict[int, tuple[str, int]] = {}
    for tok in (text or "").split(","):
        if not tok:
            continue
        if "@" in tok:
            c, r = tok.split("@")
            out[int(c)] = ("x", int(r))
        elif "=" in tok:
            c, r = tok.split("=")
            out[int(c)] = ("v", int(r))
        else:
            out[int(tok)] = ("x", row)
    return out


def format_tokens(tokens: dict[int, tuple[str, int]], row: int) -> str:
    parts = []
    for c in sorted(tokens):
        kind, src = tokens[c]
        parts.append(
            str(c) if (kind, src) == ("x", row) else f"{c}{'@' if kind == 'x' else '='}{src}"
        )
    return ",".join(parts)


@dataclass
class Written:
    """What :func:`write_row` stored: the ``family_rows`` entry and the bytes it saved."""

    digest: str
    sketch: bytes
    #: chunk tokens (see :func:`parse_tokens`); empty: the row is stored as itself
    tokens: dict[int, tuple[str, int]] = field(default_factory=dict)
    bytes_saved: int = 0
    sha256: str | None = None
    #: the row's block hashes for verified reads (``wdb.store.verify.chunk_hashes``)
    chunk_hashes: str = ""

    @property
    def delta(self) -> bool:
        """Whether any chunk is a residual (the row decodes through its key row)."""
        return any(k == "x" for k, _ in self.tokens.values())


@dataclass
class Parent:
    """What a child's write needs of its parent: the key row's values to take residuals
    against, and the parent's block hashes and tokens to borrow its equal chunks."""

    key_row: int | None
    key: np.ndarray | None
    row: int | None = None
    blocks: bytes | None = None  # the parent's block digests (16 bytes each), same width
    tokens: dict[int, tuple[str, int]] = field(default_factory=dict)
    #: whether the parent's residual tokens are against ``key_row`` (then borrowable)
    same_key: bool = False


def write_row(
    store: ArrayStore,
    path: str,
    row: int,
    n: int,
    segments: Iterator[np.ndarray],
    parent: Parent | None,
    sha256: bool = False,
) -> Written:
    """Write one row of a wide space chunk by chunk. A chunk equal to the parent's (by block
    hash) is borrowed, not written; else, with a key row, its XOR with the key row's chunk is
    coded and kept when clearly smaller than the chunk's estimated size alone (else the chunk
    is also coded alone and the smaller kept); else it is coded alone. Hashing, sketching and
    reading the next chunk run here while the codec's threads code the previous ones. Bytes
    only: the caller records the result in the catalog after (the write protocol)."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    from wdb.store.codec import _pool
    from wdb.store.verify import block_digest
    from wdb.store.widechunk import chunks, estimate

    arr = store.array(path)
    if row + 1 > arr.shape[0]:
        arr.resize((row + 1, *arr.shape[1:]))
    dtype, width = arr.dtype, int(arr.chunks[1])
    hasher = xxhash.xxh3_128()
    sha = hashlib.sha256() if sha256 else None
    sk = Sketcher(n)
    out = Written(digest="", sketch=b"")
    lock = threading.Lock()
    key = parent.key if parent is not None else None

    def one(c: int, chunk: np.ndarray) -> None:
        blob, saved, tok = None, 0, None
        if key is not None:
            a = c * width
            pc = key[a : a + width]
            if pc.size < width:  # the edge chunk: zero padded, as stored
                pc = np.concatenate([pc, np.zeros(width - pc.size, dtype=dtype)])
            delta = _encode(np.bitwise_xor(_bits(chunk), _bits(pc)).view(dtype), dtype)
            guess = estimate(chunk)
            if len(delta) < CLEARLY * guess:
                blob, saved, tok = delta, guess - len(delta), ("x", row)
            else:
                own = _encode(chunk, dtype)
                blob = own
                if len(delta) < len(own):
                    blob, saved, tok = delta, len(own) - len(delta), ("x", row)
        if blob is None:
            blob = _encode(chunk, dtype)
        _set_chunk(arr, row, c, blob)
        with lock:
            if tok is not None:
                out.tokens[c] = tok
                out.bytes_saved += saved

    def borrowed(c: int, digest_: bytes) -> tuple[str, int] | None:
        if parent is None or parent.blocks is None or parent.row is None:
            return None
        if parent.blocks[c * 16 : c * 16 + 16] != digest_:
            return None
        kind, src = parent.tokens.get(c, ("v", parent.row))
        if kind == "x" and not parent.same_key:
            return None
        return kind, src

    pending = []
    pool: ThreadPoolExecutor = _pool()
    blocks: list[bytes] = []
    for c, chunk in chunks(n, width, segments, dtype):
        a = c * width
        valid = chunk[: max(0, min(width, n - a))]
        hasher.update(valid.data)
        blocks.append(block_digest(valid))
        if sha is not None:
            sha.update(valid.data)
        sk.add(valid)
        tok = borrowed(c, blocks[-1])
        if tok is not None:
            _del_chunk(arr, row, c)  # a crashed earlier write may have left bytes there
            out.tokens[c] = tok
            out.bytes_saved += valid.nbytes
            continue
        pending.append(pool.submit(one, c, chunk))
        if len(pending) >= (os.cpu_count() or 1) * 2:  # memory: a few chunks in flight
            pending.pop(0).result()
    for f in pending:
        f.result()
    out.digest, out.sketch = hasher.hexdigest(), sk.bytes()
    out.sha256 = sha.hexdigest() if sha is not None else None
    out.chunk_hashes = f"{width}:{b''.join(blocks).hex()}"
    return out


def _del_chunk(arr: Any, row: int, c: int) -> None:
    from zarr.core.sync import sync

    sync(arr.store_path.store.delete(_chunk_key(arr, row, c)))


def read_key(
    store: ArrayStore, path: str, row: int, tokens: dict[int, tuple[str, int]]
) -> np.ndarray:
    """A key row's values from its own chunks and the chunks it borrows (``v`` tokens); for a
    row of the batch being written, which the catalog does not know yet."""
    arr = store.array(path)
    raw = np.asarray(arr[row])
    _fill_borrowed(arr, row, raw, tokens, None)
    return raw


def _fill_borrowed(
    arr: Any, row: int, raw: np.ndarray, tokens: dict[int, tuple[str, int]], key: np.ndarray | None
) -> None:
    """Put each chunk's stored bytes into ``raw`` (borrowed ones read from their rows, runs of
    adjacent chunks of one row in one read) and XOR the residual chunks with ``key``."""
    width = int(arr.chunks[1])
    span: list[int] = []

    def flush() -> None:
        if span:
            src, a, b = tokens[span[0]][1], span[0] * width, (span[-1] + 1) * width
            raw[a:b] = arr[src, a : min(b, raw.size)]
            span.clear()

    for c in sorted(tokens):
        src = tokens[c][1]
        if src == row:
            continue
        if span and (span[-1] + 1 != c or tokens[span[-1]][1] != src):
            flush()
        span.append(c)
    flush()
    if key is None:
        return
    bits, kbits = _bits(raw), _bits(key)
    for c, (kind, _) in tokens.items():
        if kind == "x":
            a = c * width
            bits[a : a + width] ^= kbits[a : a + width]


def live_rows(conn: Any, space_id: int) -> set[int]:
    """Rows in use: those a checkpoint points to, and every row a live delta row decodes
    through (its key row, the rows holding the chunks it borrows)."""
    import sqlalchemy as sa

    live = {
        int(r)
        for (r,) in conn.execute(
            sa.text("SELECT DISTINCT row FROM checkpoints WHERE space_id = :s"), {"s": space_id}
        )
    }
    parents: dict[int, set[int]] = {}
    for r, p, chunks in conn.execute(
        sa.text(
            "SELECT row, parent_row, delta_chunks FROM family_rows WHERE space_id = :s "
            "AND parent_row IS NOT NULL"
        ),
        {"s": space_id},
    ):
        used = {int(p)} | {src for _, src in parse_tokens(chunks, int(r)).values()}
        parents[int(r)] = used - {int(r)}
    todo = list(live)
    while todo:
        for p in parents.get(todo.pop(), ()):
            if p not in live:
                live.add(p)
                todo.append(p)
    return live
