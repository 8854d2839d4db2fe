"""Reader processes that load, flatten and hash small files ahead of the one writer."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import xxhash

from wdb.errors import BadInput, WdbError
from wdb.files.checkpoint import Loaded, as_loaded, digest
from wdb.ingest.readers import Found
from wdb.memory import one_ahead
from wdb.store.spaces import Layout
from wdb.store.tensors import BITS, bf16_as_bits, bf16_widen, to_stored
from wdb.store.write import RowStream

#: see :func:`ingest_workers`; 0 reads in the writing process), used for folders of at least
#: ``POOL_MIN_FILES`` files of at most ``POOL_MAX_BYTES`` each (a big file's row would cross a
#: pipe for nothing: its reading is I/O and one pass of hashing, and the writer streams it).
POOL_MIN_FILES = 64
POOL_MAX_BYTES = 64 << 20
POOL_WINDOW = 512  # files in flight at once: bounds the rows waiting for the writer
#: file suffixes the generic loader understands.
_POOL_FOUND: list[Found] = []  # what forked workers read their files from


def ingest_workers() -> int:
    """Reader processes for an ingest, ``WDB_INGEST_WORKERS`` (default 0: the writer reads
    the files itself).

    Off by default because it did not pay where it was measured: on 2 cores, 2,000 files of
    40 KB took 2.35-3.1 s read by the writer and 2.6-3.6 s with 1 or 2 reader processes (a
    loop of ``db.ingest`` calls on ``benchmarks/bench_ingest.py``'s zoo; the benchmark itself
    prints both). Shipping each row back to the writer (pickling the 2,000 rows, 77 MB, took
    0.45 s there) costs about what parsing it does, and the writer's own work
    (Zarr encoding, already threaded, and the catalog) is the longer half. Machines with more
    cores than that may gain; measure with the benchmark before turning it on.
    """
    env = os.environ.get("WDB_INGEST_WORKERS", "0")
    try:
        return max(0, int(env))
    except ValueError:
        raise BadInput(f"WDB_INGEST_WORKERS must be a whole number, not {env!r}") from None


def _poolable(f: Found) -> bool:
    """Files a worker may read: plain checkpoint files, not shard sets (streamed by the
    writer), not rows a reader hands over itself, not problems or companions."""
    if f.problem or f.companion or f.layout is not None or f.source.endswith(".index.json"):
        return False
    try:
        return os.stat(f.source).st_size <= POOL_MAX_BYTES
    except OSError:
        return False


def _layout_of(got: Loaded, cache: dict[tuple, Layout]) -> Layout:
    """The layout of a loaded state dict; equal layouts are one object from ``cache``."""
    key = tuple((k, a.shape, got.dtypes[k]) for k, a in got.arrays.items())
    layout = cache.get(key)
    if layout is None:
        layout = cache[key] = Layout.from_arrays(got.arrays, got.dtypes)
    return layout


def row_of(got: Loaded, cache: dict[tuple, Layout]) -> tuple[Layout, np.ndarray | RowStream]:
    """:func:`flat_row`, except that a row of a wide space (``wdb.store.arrays.WIDE`` values or
    more) is a :class:`RowStream` of its tensors (views of the file as loaded: a mapped
    ``torch.save`` zip, a safetensors file), written chunk by chunk: flattening a 100 MB
    checkpoint into a row of its own had cost a copy, and fresh memory, per file."""
    from wdb.store.arrays import WIDE

    if got.row is not None and got.layout is not None:
        return got.layout, got.row
    layout = _layout_of(got, cache)
    if layout.n_params < WIDE:
        return layout, layout.flatten(got.arrays)
    if set(got.arrays) != set(layout.names):
        return layout, layout.flatten(got.arrays)  # flatten says what differs
    arrays = dict(got.arrays)

    def segments() -> Iterable[np.ndarray]:
        for e in layout.entries:
            yield layout.segment(e, arrays[e.name])

    size = layout.row_dtype.itemsize
    return layout, RowStream(layout.n_params, segments, itemsize=size, mapped=True)


def row_hash(row: np.ndarray | RowStream) -> str:
    """The row's sha256 (``wdb.files.checkpoint.digest``); a stream's in one pass that also
    takes its xxh3_128 (``RowStream.xxh3``), so that its write need not take a second sha256,
    and its sketch (``RowStream.sketch``), so that finding its parent need not read it again
    (for bf16 rows, widen it again)."""
    if not isinstance(row, RowStream):
        return digest(row)
    from wdb.store.family import Sketcher

    sha, xxh, n, sk = hashlib.sha256(), xxhash.xxh3_128(), 0, Sketcher(row.n)
    # a stream read from its files (shards, a big safetensors): the next tensor is read,
    # widened and checked on a thread of its own while this one is hashed (1.59 -> 1.0 s for a
    # 512 MB bf16 file); views of a mapped file cost nothing to make
    for seg in row.segments() if row.mapped else one_ahead(row.segments(), "wdb-segments"):
        data = np.ascontiguousarray(seg).data
        sha.update(data)
        xxh.update(data)
        sk.add(seg)
        n += seg.size
    if n != row.n:
        raise BadInput(f"the checkpoint's tensors hold {n} values, its layout {row.n}")
    row.xxh3, row.sketch = xxh.hexdigest(), sk.bytes()
    return sha.hexdigest()


def widened(row: np.ndarray | RowStream) -> np.ndarray | RowStream:
    """A bf16 row's bits as float32 values (for a space made before 2-byte bf16 storage); a
    stream's segments widened as they come (its hashes and sketch to be taken again)."""
    if not isinstance(row, RowStream):
        return bf16_widen(np.asarray(row))
    segments = row.segments
    return RowStream(
        row.n, lambda: (bf16_widen(seg) for seg in segments()), itemsize=4, mapped=row.mapped
    )


def check_row(layout: Layout, row: np.ndarray) -> np.ndarray:
    """A row given directly (flat format): right width, finite, exactly storable."""
    if row.ndim != 1 or row.shape[0] != layout.n_params:
        raise BadInput(f"row has {row.shape[-1]} values, the layout has {layout.n_params}")
    if not np.issubdtype(row.dtype, np.number):
        raise BadInput(f"row dtype {row.dtype} is not numeric")
    if not np.isfinite(row).all():
        raise BadInput("row contains NaN or Inf values")
    if layout.storage_dtype in BITS:  # narrowed exactly, or refused
        return to_stored(row, layout.storage_dtype, "row")
    stored = row.astype(layout.storage_dtype)
    back = layout.flatten(layout.unflatten(stored))
    if not np.array_equal(back, stored) or not np.array_equal(
        stored.astype(row.dtype, copy=False), row
    ):
        raise BadInput("row values are not exactly representable in the layout's dtypes")
    return stored


def into_old_space(
    old: dict[str, Layout], layout: Layout, row: np.ndarray | RowStream
) -> tuple[Layout, np.ndarray | RowStream, bool]:
    """``(layout, row)`` as a bf16 space made before 2-byte storage takes them (float32 rows,
    ``old`` from :func:`wdb.store.spaces.old_bf16_layouts`), or as they are; the flag: the
    row changed (its hashes are to be taken again)."""
    was = old.get(layout.hash)
    if was is None:
        return layout, row, False
    return was, widened(row), True


def flat_row(got: Loaded, cache: dict[tuple, Layout]) -> tuple[Layout, np.ndarray]:
    """(layout, row) of a loaded state dict (or the reader's own row). Equal layouts come out
    as one object from ``cache``: the writer's, or a worker's, whose results then pickle each
    layout once per batch rather than once per file."""
    if got.row is not None and got.layout is not None:
        return got.layout, got.row
    layout = _layout_of(got, cache)
    return layout, layout.flatten(got.arrays)


_WORKER_LAYOUTS: dict[tuple, Layout] = {}


def _prepare_in_worker(i: int) -> tuple | None:
    """In a forked worker: :func:`_prepare` of file ``i``."""
    return _prepare(_POOL_FOUND[i], _WORKER_LAYOUTS, stream=False)  # rows cross a pipe


def _prepare(f: Found, layouts: dict[tuple, Layout], stream: bool = True) -> tuple | None:
    """Read a file, flatten it (``stream``: a wide row as a stream, :func:`row_of`) and hash
    the row. Returns ``("ok", layout, row, sha256, Loaded without its tensors)``, ``("skip",
    reason)``, or None for "let the writer do it" (a reader that streams)."""
    try:
        with bf16_as_bits():  # bf16 spaces store the bits: not widened to be narrowed back
            got = as_loaded(f.load())
            if got.stream is not None:
                return None
            layout, row = row_of(got, layouts) if stream else flat_row(got, layouts)
        light = Loaded(meta=got.meta, numbers=got.numbers)
        return ("ok", layout, row, row_hash(row), light)
    except WdbError as exc:
        return ("skip", str(exc))
    except Exception as exc:
        return ("skip", f"unreadable ({type(exc).__name__}: {exc})")


#: bytes of files a reading thread loads ahead of the writer (at least one file)
READ_AHEAD_BYTES = 256 << 20


def _loadable(f: Found) -> bool:
    """Files the reading thread may load: :func:`_poolable` files of any size."""
    return not (
        f.problem or f.companion or f.layout is not None or f.source.endswith(".index.json")
    )


def _room(ahead: Iterable[tuple], seen: dict) -> bool:
    """Whether another file may be loaded ahead: the files loaded and loading hold less than
    ``READ_AHEAD_BYTES``, each counted as its row when that is larger than its file (bf16
    widened to float32 is twice its file), a file still loading as the last loaded one's
    ratio says (``seen["ratio"]``; one at a time until a file has loaded). Counted as files,
    six 50 MB bf16 files read ahead had held 600 MB and pushed a bf16 family's ingest past
    1.5 GB."""
    held, pending = 0, 0
    for _, _, fut, size in ahead:
        if fut is None:
            continue
        if not fut.done():
            pending += size
            continue
        held += _learn(fut, size, seen)
    if pending and "ratio" not in seen:
        return False
    return held + pending * seen.get("ratio", 1.0) < READ_AHEAD_BYTES


def _learn(fut: Any, size: int, seen: dict) -> int:
    """A loaded file's bytes as held (its row's when larger), noting its row bytes per file
    byte in ``seen["ratio"]``: how :func:`_room` counts the files still loading."""
    got = None if fut.cancelled() or fut.exception() else fut.result()
    if got and got[0] == "ok" and size:
        layout = got[1]
        row = layout.n_params * layout.row_dtype.itemsize
        seen["ratio"] = max(1.0, row / size)
        return max(size, row)
    return size


def read_ahead(
    items: Iterable[tuple[Found, tuple | None]],
) -> Iterable[tuple[Found, tuple | None]]:
    """``items`` with what :func:`_prepare_in_worker` makes of each file loaded ahead by one
    thread, up to ``READ_AHEAD_BYTES`` of files: the next files are read, parsed, flattened
    and hashed while the writer encodes this one. Most of that work (reading, CRC-32, copying,
    sha256) and of the encoding (zstd, numpy) runs outside the GIL; one file after the other,
    the two halves had taken turns and a family of 100 MB checkpoints went in at half the
    speed of ``zstd -3`` on the same files."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    ahead: deque = deque()  # (found, pre, future or None, bytes)
    layouts: dict[tuple, Layout] = {}  # the reading thread's own (see flat_row)
    it = iter(items)
    seen: dict = {}  # a loaded file's row bytes per file byte (_room)
    pool = ThreadPoolExecutor(1, thread_name_prefix="wdb-read")
    try:
        done = False
        while True:
            while not done and (not ahead or _room(ahead, seen)):
                nxt = next(it, None)
                if nxt is None:
                    done = True
                    break
                f, pre = nxt
                size = 0
                fut = None
                if pre is None and _loadable(f):
                    try:
                        size = os.stat(f.source).st_size
                    except OSError:
                        size = 0
                    fut = pool.submit(_prepare, f, layouts)
                ahead.append((f, pre, fut, size))
            if not ahead:
                return
            f, pre, fut, size = ahead.popleft()
            if fut is not None:  # waits for it: a file taken once loaded still teaches the ratio
                _learn(fut, size, seen)
            yield f, (fut.result() if fut is not None else pre)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def prefetched(found: list[Found]) -> Iterable[tuple[Found, tuple | None]]:
    """``(found, what a worker made of it or None)`` in the scan's order.

    The heavy part of ingesting many small files is parsing them (zip, pickle, tensor views)
    and flattening and hashing the rows, all of which holds the GIL; forked worker processes do
    it for windows of files ahead of the writer, which alone touches the catalog and the
    store. Fork (not spawn) so that workers start in milliseconds with the readers' state; where
    fork is unavailable, or the folder is small, the writer reads the files itself.
    """
    import multiprocessing as mp

    workers = ingest_workers()
    pool_idx = [i for i, f in enumerate(found) if _poolable(f)]
    if workers < 1 or len(pool_idx) < POOL_MIN_FILES or "fork" not in mp.get_all_start_methods():
        for f in found:
            yield f, None
        return
    global _POOL_FOUND
    _POOL_FOUND = found
    pooled = set(pool_idx)
    windows = [
        range(a, min(a + POOL_WINDOW, len(found))) for a in range(0, len(found), POOL_WINDOW)
    ]
    try:
        with mp.get_context("fork").Pool(workers) as pool:

            def submit(w: range) -> Any:
                todo = [i for i in w if i in pooled]
                chunk = max(1, len(todo) // (4 * workers))
                return todo, pool.map_async(_prepare_in_worker, todo, chunk)

            ahead = submit(windows[0])
            for k, window in enumerate(windows):
                todo, res = ahead
                if k + 1 < len(windows):  # the next window is read while this one is written
                    ahead = submit(windows[k + 1])
                results = dict(zip(todo, res.get(), strict=True))
                for i in window:
                    yield found[i], results.get(i)
    finally:
        _POOL_FOUND = []
