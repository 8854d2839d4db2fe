"""The ONE adapter between analyses and wdb's engines for relations (nearest, novelty, shapes).

Analyses never compute neighbours, error-set similarity or shape distances themselves: nearest
and novelty go through ``wdb.query.nearest.novelty`` (exact L2 or aligned L2 via FAISS + exact re-rank,
max error-set IoU via the bit-packed ``wdb.query.similarity`` engine), which materialises ``relations``
/ ``neighbors`` / ``similarity`` rows with provenance; shape distances use the shapes task's
Chamfer function on the stored point clouds. This module only translates a spec's request
(targets / reference as SQL filters over ``checkpoint_info``) into those calls and returns the
relation id, so the engine can copy the rows into the analysis' own tables. ``ENGINE`` records
which engine served each kind, and the report shows it.
"""

from __future__ import annotations

import numpy as np

from wdb.plugin import WdbError

#: Which engine served each relation kind in this process.
ENGINE: dict[str, str] = {}


def _ids(db, where: str) -> list[int]:
    return [r["checkpoint_id"] for r in db.checkpoints(where)]


# -- public API used by the engine ------------------------------------------------------------
def novelty(db, targets: str, reference: str, metric: str = "l2", k: int = 1) -> int:
    """Per target: min L2 (self excluded), nearest reference, max error IoU, accuracy, and its k
    nearest references; returns the ``relations`` id whose rows are in ``similarity`` and
    ``neighbors`` (``wdb.query.nearest.novelty``)."""
    from wdb.plugin import novelty as query_novelty

    ENGINE["novelty"] = "wdb.query.nearest.novelty"
    rows = query_novelty(
        db,
        targets=targets,
        reference=reference,
        k=k,
        aligned=metric == "aligned_l2",
        eval_set=current_eval_set(db, targets, reference),
    )
    ids = {r["relation_id"] for r in rows}
    if len(ids) != 1:
        raise WdbError(f"targets '{targets}' span {len(ids)} weight spaces; select one space")
    return int(ids.pop())


def current_eval_set(db, targets: str, reference: str) -> str | None:
    """The eval set the targets' task evaluates on today, when the reference set has outputs
    there; None (the engine's choice: where most targets have outputs) otherwise.

    Why: a task may change its eval set (mnist-bn's went from ``test``, 1,000 items, to
    ``test-perturbed-v1``), and a store evaluated before and after holds outputs on both; left to
    itself the engine breaks the tie by the older set. Every selection of one analysis is scored
    on this one set, so old and new outputs are never mixed in a table (a target without outputs
    there gets no max IoU, and the report says to run ``wdb evaluate``)."""
    from wdb.plugin import id_in, task_for_space

    found = db.checkpoints(targets)
    if not found:
        return None
    space = db.space(int(found[0]["space_id"]))
    task = task_for_space(space, db)
    if task is None or getattr(task, "kind", "classifier") != "classifier":
        return None
    name = task.eval_set_name()
    ref_ids = [int(r["checkpoint_id"]) for r in db.checkpoints(reference)]
    if not ref_ids:
        return None
    have = db.sql(
        "SELECT count(*) AS n FROM predictions p JOIN eval_sets e ON e.id = p.eval_set_id "
        f"WHERE e.name = :e AND {id_in(db, 'p.checkpoint_id')} "
        "AND (p.array_path LIKE 'predictions/%' OR p.array_path LIKE 'errors/%')",
        {"e": name, "ids": ref_ids},
    )
    return name if have and int(have[0]["n"]) else None


def nearest(db, targets: str, reference: str, k: int = 3, metric: str = "l2") -> int:
    """k nearest reference checkpoints of every target (rank 1 = nearest, never itself); returns
    the ``relations`` id whose rows are in ``neighbors``."""
    ENGINE["nearest"] = "wdb.query.nearest.novelty(k)"
    return novelty(db, targets, reference, metric=metric, k=k)


def shape_distances(
    db, targets: str, reference: str, workers: int | None = None
) -> dict[int, tuple[float, int]]:
    """Per target: (min Chamfer distance to the reference shapes, nearest reference id).

    Pairwise distances come from the shapes task's Chamfer engine (``wdb.study.tasks.shapes.chamfer``,
    the paper's definition) over the stored 2048-point clouds (``wdb.store.outputs`` kind ``points``);
    empty meshes (all points equal) are left out. ``workers`` (or the engine of ``wdb.query.engine``)
    splits the targets over a Dask cluster; each target's loop is the same, so are the results.
    """
    from wdb.plugin import engine as engines
    from wdb.plugin import nearest_shapes, nonempty, shapes

    ENGINE["chamfer"] = "wdb.study.tasks.shapes.chamfer"
    tid, P = stored_points(db, _ids(db, targets))
    rid, Q = stored_points(db, _ids(db, reference))
    ok_r = [j for j in range(len(rid)) if nonempty(Q[j])]
    run_on = engines.spec(workers)
    if run_on == "local" or len(tid) < 2:
        return nearest_shapes(P, tid, Q, rid, ok_r)
    with engines.client(run_on) as c:
        ENGINE["chamfer"] += f" on {run_on}"
        return shapes.nearest_shapes_on(c, P, tid, Q, rid, ok_r)


def stored_points(db, ids: list[int]) -> tuple[list[int], np.ndarray]:
    """Stored surface points of the checkpoints that have them (the eval set most of them use)."""
    from wdb.plugin import outputs

    if not ids:
        return [], np.empty((0, 0, 3), np.float32)
    from wdb.plugin import id_in

    es = db.sql(
        "SELECT eval_set_id, count(*) AS n FROM predictions WHERE array_path LIKE 'points/%' "
        f"AND {id_in(db, 'checkpoint_id')} GROUP BY 1 ORDER BY n DESC",
        {"ids": [int(i) for i in ids]},
    )
    if not es:
        return [], np.empty((0, 0, 3), np.float32)
    e = es[0]["eval_set_id"]
    have = outputs.has_outputs(db, e, "points")
    keep = [i for i in ids if i in have]
    if not keep:
        return [], np.empty((0, 0, 3), np.float32)
    return keep, outputs.read_outputs(db, keep, e, "points")
