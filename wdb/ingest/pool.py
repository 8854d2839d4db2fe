"""Reader processes that load, flatten and hash small files ahead of the one writer."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from wdb.errors import BadInput, WdbError
from wdb.files.checkpoint import Loaded, as_loaded, digest
from wdb.ingest.readers import Found
from wdb.store.spaces import Layout

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


def flat_row(got: Loaded, cache: dict[tuple, Layout]) -> tuple[Layout, np.ndarray]:
    """(layout, row) of a loaded state dict (or the reader's own row). Equal layouts come out
    as one object from ``cache``: the writer's, or a worker's, whose results then pickle each
    layout once per batch rather than once per file."""
    if got.row is not None and got.layout is not None:
        return got.layout, got.row
    key = tuple((k, a.shape, got.dtypes[k]) for k, a in got.arrays.items())
    layout = cache.get(key)
    if layout is None:
        layout = cache[key] = Layout.from_arrays(got.arrays, got.dtypes)
    return layout, layout.flatten(got.arrays)


_WORKER_LAYOUTS: dict[tuple, Layout] = {}


def _prepare_in_worker(i: int) -> tuple | None:
    """In a forked worker: read file ``i``, flatten it and hash the row. Returns ``("ok",
    layout, row, sha256, Loaded without its tensors)``, ``("skip", reason)``, or None for
    "let the writer do it" (a reader that streams)."""
    f = _POOL_FOUND[i]
    try:
        obj = f.load()
        got = as_loaded(obj)
        if got.stream is not None:
            return None
        layout, row = flat_row(got, _WORKER_LAYOUTS)
        light = Loaded(meta=got.meta, numbers=got.numbers)
        return ("ok", layout, row, digest(row), light)
    except WdbError as exc:
        return ("skip", str(exc))
    except Exception as exc:
        return ("skip", f"unreadable ({type(exc).__name__}: {exc})")


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
