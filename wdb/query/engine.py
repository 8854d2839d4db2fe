"""Where the heavy batches run: in this process (the default) or on a Dask cluster.

``--workers N`` (or ``WDB_ENGINE=local:N``) starts a local cluster of N single-threaded worker
processes for one command and stops it afterwards; ``WDB_ENGINE=tcp://host:8786`` uses a running
Dask scheduler (its workers must see the same database folder, catalog and store). What runs
there: ``wdb query novelty``'s nearest-neighbour search, ``wdb evaluate``'s batches (the task's
``evaluate_rows``), and ``wdb analyze``'s relations (nearest and novelty through the same
search, Chamfer distances split by target), all relations of one ``wdb analyze --workers N``
on one cluster (:func:`scope`).

Why Dask and not Ray: ``distributed`` is pure Python, a local cluster starts in a couple of
seconds with no daemon, and its futures map one-to-one on "run this function over these
chunks"; Ray's object store and dashboard are a heavier service for a 2-core laptop and CI.

Same results to the last bit: work is split by query rows, and every row's distances are computed
by exactly the in-process code (``wdb.query.nearest.knn`` / ``aligned_knn``, one row at a time), on the
same stored bytes; workers reopen the database from its path and URLs. Evaluation is split
by batches of checkpoints: this process reads each batch's rows and context from the catalog
and the store, a worker runs the task's ``evaluate_rows`` on them, and this process writes the
results in batch order, so the catalog has one writer and the write protocol is unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from wdb.errors import WdbError

#: the engine (and its running client) of an enclosing :func:`scope`, if any
_scope: dict[str, Any] = {}

#: glibc malloc settings for local workers (set before each worker process starts). Dask's
#: default, ``MALLOC_TRIM_THRESHOLD_=65536``, turns off glibc's sliding mmap threshold, so every
#: array of 128 KiB or more is a fresh ``mmap`` of zeroed pages: a scan's chunk buffers cost
#: ~800k page faults per 200k x 2k novelty query instead of ~65k (measured, ``ru_minflt``). These
#: are the values glibc's sliding thresholds reach on their own (32 MiB mmap, twice that trim),
#: so freed memory still goes back to the system beyond 64 MiB.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}


def spec(workers: int | None = None) -> str:
    """The engine to use: ``"local"`` (in process), ``"local:N"`` or a scheduler address;
    ``workers`` beats an enclosing :func:`scope`, which beats ``WDB_ENGINE``."""
    if workers is not None:
        return "local" if workers <= 1 else f"local:{int(workers)}"
    return _scope.get("engine") or os.environ.get("WDB_ENGINE", "local")


@contextlib.contextmanager
def scope(engine: str) -> Iterator[None]:
    """Run everything inside on ``engine``, with one cluster for all of it: ``wdb analyze
    --workers N`` computes many relations, and a cluster per relation would spend seconds
    starting each."""
    if _scope:
        raise WdbError("engine scopes do not nest")
    with _start(engine) as c:
        _scope.update(engine=engine, client=c)
        try:
            yield
        finally:
            _scope.clear()


@contextlib.contextmanager
def client(engine: str) -> Iterator[Any]:
    """A Dask client for ``engine`` (None for in process); the enclosing scope's, if it has
    one for this engine."""
    if _scope and _scope["engine"] == engine:
        yield _scope["client"]
        return
    with _start(engine) as c:
        yield c


@contextlib.contextmanager
def on_demand(engine: str) -> Iterator[Callable[[], Any]]:
    """A function that returns :func:`client` for ``engine``, started on its first call and
    stopped with the block: a command that finds nothing to compute starts no cluster."""
    with contextlib.ExitStack() as stack:
        started: list[Any] = []

        def get() -> Any:
            if not started:
                started.append(stack.enter_context(client(engine)))
            return started[0]

        yield get


@contextlib.contextmanager
def _start(engine: str) -> Iterator[Any]:
    if engine == "local":
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise WdbError(
            f"engine '{engine}' needs Dask (pip install 'wdb[dask]'), or use --workers 1"
        ) from None
    if engine.startswith("local:"):
        n = int(engine.split(":", 1)[1])
        import dask

        env = {"OMP_NUM_THREADS": "1", "WDB_PROGRESS": "0"}
        spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC}
        with (
            dask.config.set(
                {
                    "distributed.nanny.pre-spawn-environ": spawn,
                    # one task per worker at a time: the next scan partition goes to the first
                    # worker free, not to one that queued it while still busy (default 1.1)
                    "distributed.scheduler.worker-saturation": 1.0,
                }
            ),
            LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env=env,
            ) as cluster,
            Client(cluster) as c,
        ):
            yield c
        return
    with Client(engine) as c:
        yield c


def n_workers(c) -> int:
    """How many workers the cluster has now (at least 1): what the work is split by."""
    return max(1, len(c.scheduler_info()["workers"]))


def _knn_part(handle, space, q_rows, q_ids, ref, k, aligned, budget):
    """One chunk of queries, on a worker: the in-process search, unchanged. ``handle`` (a
    ``wdb.db.Handle``) reopens the database there: a connection does not travel."""
    from wdb.query.nearest import aligned_knn, knn

    db = handle.open()
    if aligned:
        return aligned_knn(db, space, q_rows, q_ids, ref, k, budget)
    return knn(db, space, q_rows, q_ids, ref, k, budget)


def _scan_part(refs, ref_ids, queries, q_ids, k, plan):
    """One partition of the references, on a worker: its squared top-k of every query. The
    worker opens only the array store, from the row sources' root (no catalog, no Database)."""
    from wdb.query.scan import topk_sq

    return topk_sq(refs, ref_ids, queries, q_ids, k, plan)


#: partitions of a cluster scan per worker. One each left the cluster waiting for its slowest
#: worker (on 2 cores the driver shares one worker's core while it reads the catalog); with
#: several, the next partition goes to whichever worker is free (a local cluster's scheduler
#: hands a worker one task at a time: ``worker-saturation`` 1.0). 200k x 2k novelty, 2 pinned
#: workers, medians of 3 queries in 2 rounds: 1 per worker 5.9-6.1 s, 4: 5.3-5.8 s, 8: 4.5-5.4 s.
SPLIT = 8


def partitions(n_refs: int, workers: int, ref_bytes: int, query_bytes: int) -> int:
    """How many partitions a cluster scan cuts the references into: :data:`SPLIT` per worker,
    fewer where every partition's read of all the queries would come to more than a quarter of
    the references' bytes (big targets against few references), at least one per worker."""
    per = max(1, min(SPLIT, ref_bytes // max(1, 4 * query_bytes * workers)))
    return max(1, min(n_refs, workers * per))


def _scan(c, db, space, q_rows, q_ids: list, ref, k: int, budget: int, meanwhile=None) -> tuple:
    """The byte-bounded scan with the references split into :func:`partitions`; each worker
    keeps its top-k of each, this process merges them (``wdb.query.scan.merge``). The plan is
    made here, for a worker's share of the budget, so every worker sums on the same grid."""
    from wdb.query.nearest import stored
    from wdb.query.scan import finish, merge, plan, source

    n = n_workers(c)
    queries = source(q_rows)
    refs = stored(db, space, ref.rows)
    qid = np.array([-1 if i is None else int(i) for i in q_ids], dtype=np.int64)
    isz = max(refs.dtype.itemsize, queries.dtype.itemsize)
    plan_ = plan(len(ref), len(queries), space.n_params, isz, k, budget // n, "a worker's scan")
    row_bytes = space.n_params * isz
    parts = partitions(len(ref), n, len(ref) * row_bytes, len(queries) * row_bytes)
    bounds = np.linspace(0, len(ref), parts + 1).astype(int)
    futures = [
        c.submit(
            _scan_part,
            refs.subset(slice(a, b)),
            ref.ids[a:b],
            queries,
            qid,
            k,
            plan_,
            pure=False,
        )
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        if b > a
    ]
    if meanwhile is not None:
        meanwhile()
    d2, ids = merge(gather(c, futures, "the scan"), k)
    ids, dist = finish(d2, ids)
    info = {"path": "scan", "index_version": "scan", "approximate": False, "rounds": 0}
    return ids, dist, dict(info, plan=plan_.describe(), parts=len(futures))


def knn(
    db,
    space,
    q_rows,
    q_ids: list,
    ref,
    k: int,
    aligned: bool,
    engine: str,
    budget: int | None = None,
    meanwhile: Callable[[], Any] | None = None,
    path: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """``wdb.query.nearest.knn`` (or ``aligned_knn``) over all query rows, on ``engine``.

    ``q_rows`` is an array or a row source. On a cluster, the byte-bounded scan splits the
    references between the workers (each keeps its top-k; the merge is exact); the FAISS path
    and the aligned search split the queries. ``meanwhile`` is called once, while the workers
    compute (in process: after the search): the caller's catalog reads that do not need the
    neighbours. Why: on a cluster those reads (error sets, metrics, the reference's fingerprint:
    ~1 s for 200k references) would otherwise add to the wall time after the scan is back.
    ``path``: ``nearest.path_for``'s answer when the caller already has it (read with its
    other catalog reads, on one connection)."""
    from wdb.memory import budget as resolve
    from wdb.query import nearest as query
    from wdb.query.scan import source

    def then(result: tuple) -> tuple:
        if meanwhile is not None:
            meanwhile()
        return result

    budget = resolve(budget)
    src = source(q_rows)
    if aligned:
        q_rows = src.read(slice(None))
        if engine == "local" or len(q_rows) < 2:
            return then(query.aligned_knn(db, space, q_rows, q_ids, ref, k, budget))
    elif engine == "local":
        return then(query.knn(db, space, src, q_ids, ref, k, budget, path))
    elif (path or query.path_for(db, space, len(ref), budget)) == "scan":
        with client(engine) as c:
            ids, dist, info = _scan(c, db, space, src, q_ids, ref, k, budget, meanwhile)
        return ids, dist, dict(info, engine=engine)
    else:
        q_rows = src.read(slice(None))
        if len(q_rows) < 2:
            return then(query.knn(db, space, q_rows, q_ids, ref, k, budget))
        from wdb.query.index import ensure

        ensure(db, space)  # built once here, not by every worker at once
    with client(engine) as c:
        n = n_workers(c)
        bounds = np.linspace(0, len(q_rows), min(len(q_rows), n) + 1).astype(int)
        parts = [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        ref_f, space_f = c.scatter(ref, broadcast=True), c.scatter(space, broadcast=True)
        futures = [
            c.submit(
                _knn_part,
                db.handle(),
                space_f,
                q_rows[a:b],
                q_ids[a:b],
                ref_f,
                k,
                aligned,
                budget // n,
                pure=False,
            )
            for a, b in parts
        ]
        if meanwhile is not None:
            meanwhile()
        got = gather(c, futures, "the nearest-neighbour search")
    info = dict(got[-1][2], engine=engine, parts=len(parts))
    return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got]), info


def gather(c, futures: list, what: str) -> list:
    """``c.gather(futures)``; a worker that died under a task is retried by Dask (on another
    worker or a restarted one, ``distributed.scheduler.allowed-failures`` times), and when it
    keeps dying the query fails with one line. Nothing is stored before every part is back,
    so a failed query leaves no partial results."""
    from distributed import KilledWorker

    try:
        return c.gather(futures)
    except KilledWorker as exc:
        c.cancel(futures)
        raise WdbError(
            f"{what} failed: a Dask worker died while computing it ({exc.args[0] if exc.args else exc}), "
            "also when retried; nothing was stored (check the workers' memory: --memory / WDB_MEMORY)"
        ) from None


def ordered_map(c, fn: Callable, items: Iterable[tuple], window: int) -> Iterator[Any]:
    """``fn(*item)`` on the cluster for every item, results in the items' order, with at most
    ``window`` in flight: the items are made (read from the store) while workers compute, and
    a long selection is never held in memory at once."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(c.submit(fn, *item, pure=False))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def task_ref(task) -> str:
    """What a worker passes to ``wdb.study.tasks.get`` to have the same task: its file, or its name."""
    return str(getattr(task, "source", None) or task.name)
