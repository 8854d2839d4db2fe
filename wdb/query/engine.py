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
        env = {"OMP_NUM_THREADS": "1", "WDB_PROGRESS": "0"}
        with (
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


def _knn_part(handle, space, q_rows, q_ids, ref, k, aligned):
    """One chunk of queries, on a worker: the in-process search, unchanged. ``handle`` (a
    ``wdb.db.Handle``) reopens the database there: a connection does not travel."""
    from wdb.query.nearest import aligned_knn, knn

    db = handle.open()
    return (aligned_knn if aligned else knn)(db, space, q_rows, q_ids, ref, k)


def knn(
    db, space, q_rows: np.ndarray, q_ids: list, ref, k: int, aligned: bool, engine: str
) -> tuple[np.ndarray, np.ndarray, dict]:
    """``wdb.query.nearest.knn`` (or ``aligned_knn``) over all query rows, on ``engine``."""
    from wdb.query import nearest as query

    if engine == "local" or len(q_rows) < 2:
        return (query.aligned_knn if aligned else query.knn)(db, space, q_rows, q_ids, ref, k)
    if not aligned and len(ref) > query.BRUTE_MAX:
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
                pure=False,
            )
            for a, b in parts
        ]
        got = c.gather(futures)
    info = dict(got[-1][2], engine=engine, parts=len(parts))
    return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got]), info


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
