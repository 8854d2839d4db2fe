"""The ONE adapter between analyses and wdb's engines for relations (nearest, novelty, shapes).

Analyses never compute neighbours, error-set similarity or shape distances themselves: nearest
and novelty go through ``wdb.query.novelty`` (exact L2 or aligned L2 via FAISS + exact re-rank,
max error-set IoU via the bit-packed ``wdb.similarity`` engine), which materialises ``relations``
/ ``neighbors`` / ``similarity`` rows with provenance; shape distances use the shapes task's
Chamfer function on the stored point clouds. This module only translates a spec's request
(targets / reference as SQL filters over ``checkpoint_info``) into those calls and returns the
relation id, so the engine can copy the rows into the analysis' own tables. ``ENGINE`` records
which engine served each kind, and the report shows it.
"""

from __future__ import annotations

import numpy as np

from wdb.errors import WdbError

#: Which engine served each relation kind in this process.
ENGINE: dict[str, str] = {}


def _ids(db, where: str) -> list[int]:
    return [r["checkpoint_id"] for r in db.checkpoints(where)]


# -- public API used by the engine ------------------------------------------------------------
def novelty(db, targets: str, reference: str, metric: str = "l2", k: int = 1) -> int:
    """Per target: min L2 (self excluded), nearest reference, max error IoU, accuracy, and its k
    nearest references; returns the ``relations`` id whose rows are in ``similarity`` and
    ``neighbors`` (``wdb.query.novelty``)."""
    from wdb.query import novelty as query_novelty

    ENGINE["novelty"] = "wdb.query.novelty"
    rows = query_novelty(
        db, targets=targets, reference=reference, k=k, aligned=metric == "aligned_l2"
    )
    ids = {r["relation_id"] for r in rows}
    if len(ids) != 1:
        raise WdbError(f"targets '{targets}' span {len(ids)} weight spaces; select one space")
    return int(ids.pop())


def nearest(db, targets: str, reference: str, k: int = 3, metric: str = "l2") -> int:
    """k nearest reference checkpoints of every target (rank 1 = nearest, never itself); returns
    the ``relations`` id whose rows are in ``neighbors``."""
    ENGINE["nearest"] = "wdb.query.novelty(k)"
    return novelty(db, targets, reference, metric=metric, k=k)


def shape_distances(db, targets: str, reference: str) -> dict[int, tuple[float, int]]:
    """Per target: (min Chamfer distance to the reference shapes, nearest reference id).

    Pairwise distances come from the shapes task's Chamfer engine (``wdb.tasks.shapes.chamfer``,
    METHODS.md's definition) over the stored 2048-point clouds (``wdb.outputs`` kind ``points``);
    empty meshes (all points equal) are left out.
    """
    from wdb.tasks.shapes import chamfer

    ENGINE["chamfer"] = "wdb.tasks.shapes.chamfer"
    tid, P = stored_points(db, _ids(db, targets))
    rid, Q = stored_points(db, _ids(db, reference))
    ok_r = [j for j in range(len(rid)) if _nonempty(Q[j])]
    out: dict[int, tuple[float, int]] = {}
    for i, c in enumerate(tid):
        if not _nonempty(P[i]):
            continue
        best, arg = np.inf, -1
        for j in ok_r:
            if rid[j] == c:
                continue
            d = chamfer(P[i], Q[j])
            if d < best:
                best, arg = d, rid[j]
        if arg >= 0:
            out[c] = (float(best), int(arg))
    return out


def _nonempty(p: np.ndarray) -> bool:
    return bool(len(p)) and bool(np.isfinite(p).all()) and float(np.ptp(p, axis=0).max()) > 0


def stored_points(db, ids: list[int]) -> tuple[list[int], np.ndarray]:
    """Stored surface points of the checkpoints that have them (the eval set most of them use)."""
    from wdb import outputs

    if not ids:
        return [], np.empty((0, 0, 3), np.float32)
    es = db.sql(
        "SELECT eval_set_id, count(*) AS n FROM predictions WHERE array_path LIKE 'points/%' "
        f"AND checkpoint_id IN ({','.join(map(str, ids))}) GROUP BY 1 ORDER BY n DESC"
    )
    if not es:
        return [], np.empty((0, 0, 3), np.float32)
    e = es[0]["eval_set_id"]
    have = outputs.has_outputs(db, e, "points")
    keep = [i for i in ids if i in have]
    if not keep:
        return [], np.empty((0, 0, 3), np.float32)
    return keep, outputs.read_outputs(db, keep, e, "points")
