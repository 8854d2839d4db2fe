"""Stored relations (``wdb query novelty``'s results): saving them in one short transaction, and
telling whether one is still current (its selections re-fingerprinted now)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from wdb.errors import NotFound

if TYPE_CHECKING:
    from wdb.query.nearest import RefSet


def _fp(items: Sequence) -> str:
    return hashlib.sha256("\n".join(map(str, items)).encode()).hexdigest()


def _in_list(db, column: str, name: str = "ids") -> str:
    if db.catalog.duckdb_file:
        return f"{column} IN (SELECT unnest(CAST(:{name} AS BIGINT[])))"
    return f"{column} = ANY(:{name})"


def _reference_fingerprint(db, ref: RefSet, eval_set_id: int | None) -> str:
    ids, rows = ref.ids.tolist(), ref.rows.tolist()  # Python ints format 3x faster than numpy's
    sha = ref.info.column("sha256")
    parts = [f"{i}:{r}:{h}" for i, r, h in zip(ids, rows, sha, strict=True)]
    if eval_set_id is not None and len(ref):
        preds = db.sql(
            "SELECT checkpoint_id, array_path, row FROM predictions WHERE eval_set_id = :e AND "
            + _in_list(db, "checkpoint_id")
            + " ORDER BY checkpoint_id, array_path",
            {"e": eval_set_id, "ids": [int(i) for i in ref.ids]},
        )
        parts += [f"p{p['checkpoint_id']}:{p['array_path']}:{p['row']}" for p in preds]
    return _fp(parts)


def _save(db, rel: dict, rows: list[dict], nn_ids: np.ndarray, nn_d: np.ndarray) -> int:
    """One short write transaction: the relation row, its neighbours, its similarity rows."""
    from wdb.catalog.dialect import insert_many
    from wdb.catalog.schema import neighbors, relations, similarity

    nb = [
        {
            "checkpoint_id": r["checkpoint_id"],
            "rank": rank + 1,
            "neighbor_id": int(nn_ids[j, rank]),
            "distance": float(nn_d[j, rank]),
        }
        for j, r in enumerate(rows)
        for rank in range(nn_ids.shape[1])
        if nn_ids[j, rank] >= 0
    ]
    cols = ("checkpoint_id", "min_l2", "nearest_id", "max_iou", "max_iou_id", "accuracy")
    cols += ("own_lineage",) if rows and "own_lineage" in rows[0] else ()
    with db.write_lock(), db.catalog.begin() as conn:
        rid = int(
            conn.execute(relations.insert().values(**rel).returning(relations.c.id)).scalar_one()
        )
        insert_many(conn, neighbors, [dict(d, relation_id=rid) for d in nb])
        insert_many(
            conn, similarity, [{"relation_id": rid, **{c: r[c] for c in cols}} for r in rows]
        )
    return rid


def relation_status(db, relation_id: int | None = None) -> list[dict]:
    """Whether stored relations are current: targets and reference set (and their predictions)
    re-selected now and fingerprinted as when computed. ``stale`` says why when they differ."""
    where = "WHERE id = :id" if relation_id is not None else ""
    rels = db.sql(
        f"SELECT * FROM relations {where} ORDER BY id", {"id": relation_id} if where else None
    )
    if relation_id is not None and not rels:
        raise NotFound(f"relation {relation_id} not found")
    from wdb.query.nearest import select

    out = []
    for rel in rels:
        params = json.loads(rel["params"] or "{}")
        reasons = []
        ref = select(db, rel["reference_selection"], rel["space_id"])
        if (
            _reference_fingerprint(db, ref, params.get("eval_set_id"))
            != rel["reference_fingerprint"]
        ):
            reasons.append("reference set or its predictions changed")
        if "target_fingerprint" in params:
            tgt = select(db, rel["target_selection"], rel["space_id"])
            sha = tgt.info.column("sha256")
            fp = _fp([f"{i}:{h}" for i, h in zip(tgt.ids.tolist(), sha, strict=True)])
            if fp != params["target_fingerprint"]:
                reasons.append("target selection changed")
        out.append(
            {
                "relation_id": rel["id"],
                "kind": rel["kind"],
                "metric": rel["metric"],
                "space_id": rel["space_id"],
                "targets": rel["target_selection"],
                "reference": rel["reference_selection"],
                "created_at": rel["created_at"],
                "stale": bool(reasons),
                "why": "; ".join(reasons) or None,
            }
        )
    return out
