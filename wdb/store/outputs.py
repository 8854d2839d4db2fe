"""Per-checkpoint outputs on an eval set: predictions, error sets, point clouds.

The contract every part of wdb shares:

- an **eval set** is a row of ``eval_sets`` (name, task, split, n_items, labels_sha256) — the
  dataset identity, so outputs computed on different data are never compared;
- its labels live in ``outputs.zarr/labels/<eval_set_id>`` (one row, ``[1, T]``, int32);
- outputs are rows of ``outputs.zarr/<kind>/<eval_set_id>`` where kind is ``predictions``
  (``[n, T]`` int16 class ids), ``errors`` (``[n, T]`` uint8 error mask, for sources that give
  error sets but no predictions) or ``points`` (``[n, P, 3]`` float32 surface points);
- the ``predictions`` table maps (checkpoint_id, eval_set_id, array_path) → row.

Error sets are therefore computed from stored bytes, never by re-running a model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from wdb.errors import BadInput, NotFound

KINDS = {"predictions": "int16", "errors": "uint8", "points": "float32"}


def labels_sha256(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def ensure_eval_set(
    db,
    name: str,
    task: str | None,
    split: str | None,
    labels: np.ndarray | None = None,
    n_items: int | None = None,
    task_source: str | None = None,
) -> int:
    """The eval set called ``name``, created on first use; refuses different data under one name.

    ``task_source`` is the file a task plugin was loaded from (``--task ./my_task.py``), kept so
    that analyses can load the task again for spaces no installed plugin knows."""
    import sqlalchemy as sa

    from wdb.catalog.schema import eval_sets

    sha = labels_sha256(labels) if labels is not None else None
    n = int(len(labels)) if labels is not None else n_items
    with db.write_lock(), db.catalog.begin() as conn:
        found = conn.execute(sa.select(eval_sets).where(eval_sets.c.name == name)).first()
        if found is not None:
            row = found._mapping
            if sha is not None and row["labels_sha256"] not in (None, sha):
                raise BadInput(
                    f"eval set '{name}' exists with different labels "
                    f"(sha256 {row['labels_sha256'][:12]}… vs {sha[:12]}…): refusing to mix data"
                )
            fill: dict = {}
            if task_source and row.get("task_source") != task_source:
                fill["task_source"] = task_source
            if row["n_items"] is None and n is not None:  # metrics came first, outputs now
                fill["n_items"] = n
            if fill:
                conn.execute(sa.update(eval_sets).where(eval_sets.c.id == row["id"]).values(**fill))
            return int(row["id"])
        eid = int(
            conn.execute(
                eval_sets.insert()
                .values(
                    name=name,
                    task=task,
                    split=split,
                    n_items=n,
                    labels_sha256=sha,
                    **({"task_source": task_source} if task_source else {}),
                )
                .returning(eval_sets.c.id)
            ).scalar_one()
        )
        if labels is not None:
            path = f"labels/{eid}"
            db.outputs_store.create(path, int(len(labels)), "int32", rows_per_chunk=1)
            db.outputs_store.write(path, 0, np.asarray(labels, dtype=np.int32)[None])
    return eid


def eval_set(db, key: int | str) -> dict:
    """An eval set row by id or name."""
    if isinstance(key, int) or str(key).isdigit():
        rows = db.sql("SELECT * FROM eval_sets WHERE id = :k", {"k": int(key)})
    else:
        rows = db.sql("SELECT * FROM eval_sets WHERE name = :k", {"k": key})
    if not rows:
        raise NotFound(f"eval set '{key}' not found")
    return rows[0]


def labels(db, eval_set_id: int) -> np.ndarray:
    """The labels of an eval set ``[T]``."""
    path = f"labels/{eval_set_id}"
    if not db.outputs_store.has(path):
        raise NotFound(f"eval set {eval_set_id} has no stored labels")
    return db.outputs_store.read(path, [0])[0]


def write_outputs(
    db, eval_set_id: int, kind: str, checkpoint_ids: Sequence[int], data: np.ndarray
) -> None:
    """Store one output row per checkpoint (replacing earlier ones), bytes before catalog rows."""
    import sqlalchemy as sa

    from wdb.catalog.schema import predictions

    if kind not in KINDS:
        raise BadInput(f"output kind must be one of {sorted(KINDS)}, not '{kind}'")
    data = np.asarray(data).astype(KINDS[kind], copy=False)
    if data.shape[0] != len(checkpoint_ids):
        raise BadInput(f"{data.shape[0]} output rows for {len(checkpoint_ids)} checkpoints")
    if not len(checkpoint_ids):
        return
    path = f"{kind}/{eval_set_id}"
    ids = [int(i) for i in checkpoint_ids]
    with db.write_lock():
        rows_per_chunk = 8 if data.ndim > 2 else 64
        db.outputs_store.create(path, data.shape[1:], KINDS[kind], rows_per_chunk=rows_per_chunk)
        with db.catalog.begin() as conn:
            top = conn.execute(
                sa.select(sa.func.max(predictions.c.row)).where(predictions.c.array_path == path)
            ).scalar()
        start = 0 if top is None else int(top) + 1
        db.outputs_store.write(path, start, data)
        with db.catalog.begin() as conn:
            conn.execute(
                sa.delete(predictions).where(
                    predictions.c.eval_set_id == eval_set_id,
                    predictions.c.array_path == path,
                    predictions.c.checkpoint_id.in_(ids),
                )
            )
            conn.execute(
                predictions.insert(),
                [
                    dict(checkpoint_id=c, eval_set_id=eval_set_id, array_path=path, row=start + i)
                    for i, c in enumerate(ids)
                ],
            )


def _rows(db, checkpoint_ids: Sequence[int], eval_set_id: int, path: str) -> np.ndarray:
    ids = [int(i) for i in checkpoint_ids]
    found = db.sql(
        "SELECT checkpoint_id, row FROM predictions WHERE eval_set_id = :e AND array_path = :a",
        {"e": eval_set_id, "a": path},
    )
    by_id = {r["checkpoint_id"]: r["row"] for r in found}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise NotFound(
            f"no {path.split('/')[0]} on eval set {eval_set_id} for checkpoints {missing[:10]}"
        )
    return np.array([by_id[i] for i in ids], dtype=np.int64)


def read_outputs(db, checkpoint_ids: Sequence[int], eval_set_id: int, kind: str) -> np.ndarray:
    """Stored outputs of the given checkpoints, in order."""
    path = f"{kind}/{eval_set_id}"
    return db.outputs_store.read(path, _rows(db, checkpoint_ids, eval_set_id, path))


def has_outputs(db, eval_set_id: int, kind: str) -> set[int]:
    """Checkpoint ids that have outputs of ``kind`` on the eval set."""
    rows = db.sql(
        "SELECT checkpoint_id FROM predictions WHERE eval_set_id = :e AND array_path = :a",
        {"e": eval_set_id, "a": f"{kind}/{eval_set_id}"},
    )
    return {r["checkpoint_id"] for r in rows}


def error_masks(db, checkpoint_ids: Sequence[int], eval_set_id: int) -> np.ndarray:
    """Boolean error sets ``[n, T]``: from stored predictions vs labels, or stored error masks."""
    ids = [int(i) for i in checkpoint_ids]
    with_pred = has_outputs(db, eval_set_id, "predictions")
    with_err = has_outputs(db, eval_set_id, "errors")
    out: np.ndarray | None = None
    pred_ids = [i for i in ids if i in with_pred]
    err_ids = [i for i in ids if i not in with_pred and i in with_err]
    missing = [i for i in ids if i not in with_pred and i not in with_err]
    if missing:
        raise NotFound(f"no predictions on eval set {eval_set_id} for checkpoints {missing[:10]}")
    if pred_ids:
        masks = read_outputs(db, pred_ids, eval_set_id, "predictions") != labels(db, eval_set_id)
        out = np.zeros((len(ids), masks.shape[1]), dtype=bool)
        pos = {c: k for k, c in enumerate(ids)}
        out[[pos[c] for c in pred_ids]] = masks
    if err_ids:
        masks = read_outputs(db, err_ids, eval_set_id, "errors").astype(bool)
        if out is None:
            out = np.zeros((len(ids), masks.shape[1]), dtype=bool)
        pos = {c: k for k, c in enumerate(ids)}
        out[[pos[c] for c in err_ids]] = masks
    assert out is not None
    return out
