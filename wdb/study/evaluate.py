"""``wdb evaluate``: run each selected checkpoint's task on its eval set; store metrics and outputs.

Flow: select checkpoints (``db.checkpoints(where)``) → group by weight space → resolve the task
(``task=`` or ``wdb.study.tasks.for_space``; an unknown space is a one-line error naming it and a
checkpoint, raised before anything is computed) → skip checkpoints that already have the task's
primary metric on its eval set (unless ``force``) → evaluate in batches: read rows (the catalog
connection is closed again before computing), compute, then store outputs
(``wdb.store.outputs.write_outputs``: bytes, then catalog rows) and metrics (``db.add_metrics``).
Outputs are written before metrics, and "done" means "has the metric", so an interrupted run
re-evaluates the unfinished batch and replaces its outputs.

Classifiers store ``accuracy`` (fraction), ``loss`` and per-item ``predictions`` on
``<task>:<eval split>`` (``<task>:test``; mnist-bn: ``test-perturbed-v1``, 10,000 items, plus
``clean_accuracy`` on its first 1,000, docs/eval-sets.md); neural fields store 2048 surface
``points``, ``mesh_empty`` (0/1) and, when the run config names its shape, ``chamfer`` to that
shape's ground truth, on ``<task>:points``.
"""

from __future__ import annotations

import collections
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdb.errors import BadInput, WdbError
from wdb.store.tensors import value_dtype

OUTPUT_KINDS = ("predictions", "points", "errors")


@dataclass
class EvalReport:
    """What one ``evaluate`` call did, per task."""

    evaluated: int = 0
    skipped: int = 0
    by_task: dict[str, dict] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """One summary row per task (for the CLI table)."""
        return [{"task": k, **v} for k, v in self.by_task.items()]


def primary_metric(task) -> str:
    return "mesh_empty" if getattr(task, "kind", "classifier") == "field" else "accuracy"


def evaluate(
    db,
    where: str | None = None,
    task: str | None = None,
    force: bool = False,
    batch: int = 256,
    params: dict | None = None,
    workers: int | None = None,
    memory: int | str | None = None,
) -> EvalReport:
    """Evaluate the checkpoints matching ``where`` (SQL over ``checkpoint_info``) on their task.

    ``workers`` (or ``WDB_ENGINE``) computes the batches on a Dask cluster (``wdb.query.engine``);
    the rows are read and the results written here, in the same order, with the same values.
    The batches stay those of ``batch``: a vectorised task's numbers depend on which models
    share a batch (measured: mnist-mlp's loss moved in the last bits when 37 checkpoints were
    cut into batches of 10), so a small selection needs a smaller ``batch`` to spread.

    ``memory`` (bytes or "1GB"; default ``WDB_MEMORY`` or 1 GB, ``wdb.memory``) caps a batch's
    rows: a batch holds at most as many checkpoints as fit, read ``READ_FACTOR`` times over
    (issue 25: 256 checkpoints of 100 MB were one 25 GB read). Only batches of big checkpoints
    are cut, and those then differ from ``batch``'s (see above)."""
    from wdb.memory import budget
    from wdb.query import engine as engines
    from wdb.query.scan import READ_FACTOR
    from wdb.study import tasks as registry

    if batch < 1:
        raise BadInput(f"batch must be ≥ 1, not {batch}")
    selected = db.checkpoints(where, params, what="--where")
    # A generator's own network (run genmodel_<id>, kind 'model') is no task's model: skip it, so
    # a bare `wdb evaluate` after `wdb generate` works.
    selected = [
        c for c in selected if not (c["kind"] == "model" and c["generator_run_id"] is not None)
    ]
    forced = registry.get(task) if task else None
    groups: dict[int, list[dict]] = defaultdict(list)
    for c in selected:
        groups[int(c["space_id"])].append(c)
    plan = []
    for space_id, cks in groups.items():
        space = db.space(space_id)
        t = forced or registry.for_space(space, db)
        if t is None:
            raise WdbError(
                f"checkpoint {cks[0]['checkpoint_id']} (run '{cks[0]['run']}'): space "
                f"'{space.name}' ({space.n_params} params) belongs to no known task; "
                f"pass --task NAME ({', '.join(registry.names())}) or --task ./my_task.py"
            )
        known = {h for lay in t.layouts() for h in (lay.hash, lay.as_float32().hash)}
        if space.layout.hash not in known:  # (a bf16 space made before 2-byte storage too)
            raise WdbError(
                f"checkpoint {cks[0]['checkpoint_id']} (run '{cks[0]['run']}'): space "
                f"'{space.name}' is not a weight space of task '{t.name}'"
            )
        plan.append((t, space, cks))

    mem = budget(memory)
    report = EvalReport()
    with engines.on_demand(engines.spec(workers)) as cluster_for:
        for t, space, cks in plan:
            row = space.n_params * value_dtype(space.layout.storage_dtype).itemsize
            fits = max(1, mem // (row * READ_FACTOR))
            _evaluate_task(db, t, cks, force, min(batch, fits), cluster_for, report)
    for stats in report.by_task.values():
        for key in ("accuracy", "mesh_empty"):
            if key in stats:
                vals = stats.pop(key)
                stats[f"mean_{key}"] = float(np.mean(vals)) if vals else None
    return report


def _evaluate_task(db, t, cks: list[dict], force: bool, batch: int, cluster_for, report) -> None:
    """One task's checkpoints: skip the evaluated ones, compute the rest batch by batch (here,
    or on the cluster ``cluster_for()`` starts when there is work), store each batch's outputs
    and metrics in order."""
    from wdb.progress import progress
    from wdb.store.outputs import ensure_eval_set

    eid = ensure_eval_set(
        db,
        t.eval_set_name(),
        t.name,
        t.eval_split,
        t.eval_labels(),
        task_source=getattr(t, "source", None),
    )
    metric = primary_metric(t)
    done = {
        r["checkpoint_id"]
        for r in db.sql(
            "SELECT checkpoint_id FROM metrics WHERE eval_set_id = :e AND name = :n",
            {"e": eid, "n": metric},
        )
    }
    todo = [c for c in cks if force or c["checkpoint_id"] not in done]
    stats = report.by_task.setdefault(
        t.name,
        {"eval_set": t.eval_set_name(), "evaluated": 0, "skipped": 0, metric: []},
    )
    stats["skipped"] += len(cks) - len(todo)
    report.skipped += len(cks) - len(todo)

    def batches():
        for start in range(0, len(todo), batch):
            part = todo[start : start + batch]
            ids = [int(c["checkpoint_id"]) for c in part]
            yield ids, db.weights(ids), t.prepare(db, part)

    cluster = cluster_for() if todo else None
    if cluster is None:
        results = ((ids, t.evaluate_rows(rows, ctx)) for ids, rows, ctx in batches())
    else:
        results = evaluate_on(cluster, db, t, batches())
    bar = progress(total=len(todo), desc=f"evaluate {t.name}")
    for ids, result in results:
        _store(db, eid, ids, result, replace=force)
        values = np.asarray(result.get(metric, []), dtype=float)
        stats[metric].extend(values[np.isfinite(values)].tolist())
        stats["evaluated"] += len(ids)
        report.evaluated += len(ids)
        bar.update(len(ids))
    bar.close()


def _store(db, eval_set_id: int, ids: list[int], result: dict, replace: bool) -> None:
    """Outputs first (bytes, then catalog rows), then metric rows (one transaction). Without
    ``force`` the checkpoints have no metric on this eval set yet (that is how they were picked,
    and a batch's metrics commit together), so the per-row delete of an upsert is skipped."""
    from wdb.store.outputs import write_outputs

    for kind in OUTPUT_KINDS:
        if kind in result:
            write_outputs(db, eval_set_id, kind, ids, result[kind])
    metric_rows = []
    for name, values in result.items():
        if name in OUTPUT_KINDS:
            continue
        values = np.asarray(values, dtype=float)
        if values.shape != (len(ids),):
            continue
        for cid, v in zip(ids, values, strict=True):
            if np.isfinite(v):
                metric_rows.append(
                    dict(checkpoint_id=cid, eval_set_id=eval_set_id, name=name, value=float(v))
                )
    with db.write_lock():
        db.add_metrics(metric_rows, replace=replace)


def _evaluate_part(db_spec, ref: str, rows: np.ndarray, context) -> dict:
    """One batch, on a worker: the task's own ``evaluate_rows``, unchanged. The context's
    database is reopened here (a connection does not travel), for tasks that read from it."""
    from wdb.study import tasks

    context.db = db_spec.open()
    return tasks.get(ref).evaluate_rows(rows, context)


def evaluate_on(c, db, task, batches: Iterable[tuple[list[int], np.ndarray, Any]]) -> Iterator:
    """``(ids, result)`` for each ``(ids, rows, context)`` batch, computed on the cluster ``c``,
    in the batches' order."""
    import dataclasses

    from wdb.query import engine as engines

    n = engines.n_workers(c)
    spec_f = db.handle()
    ref = engines.task_ref(task)
    held: collections.deque = collections.deque()

    def items():
        for ids, rows, context in batches:
            held.append(ids)
            yield spec_f, ref, rows, dataclasses.replace(context, db=None)

    for result in engines.ordered_map(c, _evaluate_part, items(), window=2 * n):
        yield held.popleft(), result
