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
from pathlib import Path

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


# -- bring your own evaluations ----------------------------------------------------------------
#: columns of an outputs file that key its rows to checkpoints (never metrics).
KEY_COLUMNS = ("checkpoint_id", "run", "step")
#: array names of an outputs file that hold per-item outputs, not metrics.
ITEM_COLUMNS = ("errors", "predictions", "labels")


def read_outputs_file(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a per-checkpoint outputs file: ``.npz`` (named arrays), ``.npy`` (a
    structured array: its fields) or ``.csv`` (a header row). Never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: np.asarray(z[k]) for k in z.files}
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.dtype.names is None:
                raise BadInput(
                    f"{path}: a plain .npy array has no checkpoint keys; use a structured array "
                    "with a checkpoint_id (or run/step) field, or an .npz of named arrays"
                )
            return {k: np.asarray(arr[k]) for k in arr.dtype.names}
        if suffix == ".csv":
            import pandas as pd

            df = pd.read_csv(path)
            return {c: df[c].to_numpy() for c in df.columns}
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt files: one line naming the file
        raise BadInput(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    raise BadInput(f"{path}: unknown outputs format '{suffix}' (use .npz, .npy or .csv)")


def _checkpoint_keys(db, path: Path, cols: dict[str, np.ndarray], n: int) -> list[int]:
    if "checkpoint_id" in cols:
        ids = [int(i) for i in cols["checkpoint_id"]]
        found = {
            int(r["checkpoint_id"])
            for r in db.checkpoints(
                "checkpoint_id IN (SELECT unnest(CAST(:ids AS BIGINT[])))", {"ids": ids}
            )
        }
        missing = [i for i in ids if i not in found]
        if missing:
            raise BadInput(f"{path}: checkpoint ids not in the database: {missing[:5]}")
        return ids
    if "run" not in cols:
        raise BadInput(f"{path}: needs a checkpoint_id column, or run (and step) columns")
    runs = [str(r) for r in cols["run"]]
    steps = [int(s) for s in cols["step"]] if "step" in cols else None
    info = db.checkpoints("run IN (SELECT unnest(CAST(:runs AS VARCHAR[])))", {"runs": runs})
    by_key = {(r["run"], int(r["step"])): int(r["checkpoint_id"]) for r in info}
    per_run: dict[str, list[int]] = {}
    for r in info:
        per_run.setdefault(r["run"], []).append(int(r["checkpoint_id"]))
    ids = []
    for i in range(n):
        if steps is not None:
            cid = by_key.get((runs[i], steps[i]))
            if cid is None:
                raise BadInput(f"{path}: row {i}: run '{runs[i]}' step {steps[i]} is not stored")
        else:
            many = per_run.get(runs[i], [])
            if len(many) != 1:
                raise BadInput(
                    f"{path}: row {i}: run '{runs[i]}' has {len(many)} checkpoints; add a step "
                    "column"
                )
            cid = many[0]
        ids.append(cid)
    return ids


def ingest_outputs(
    db,
    path: str | Path,
    eval_set: str,
    task: str | None = None,
    split: str | None = "test",
) -> dict:
    """Store externally computed evaluations: per-checkpoint metrics, error sets or predictions.

    The file (see :func:`read_outputs_file`) keys each row by ``checkpoint_id`` or ``run`` (+
    ``step``); ``errors`` (``[N, T]`` 0/1) or ``predictions`` (``[N, T]`` class ids, with
    ``labels`` ``[T]`` in the file or already stored with the eval set) become outputs of eval
    set ``eval_set``; every other numeric column of length N is a metric (``accuracy``, ``loss``,
    ...; NaN = missing). Everything is checked before anything is written.
    """
    import wdb.study.tasks

    path = Path(path)
    cols = read_outputs_file(path)
    lengths = {k: len(v) for k, v in cols.items() if k in KEY_COLUMNS}
    if not lengths:
        raise BadInput(f"{path}: needs a checkpoint_id column, or run (and step) columns")
    n = next(iter(lengths.values()))
    if any(v != n for v in lengths.values()):
        raise BadInput(f"{path}: key columns have different lengths {lengths}")
    ids = _checkpoint_keys(db, path, cols, n)
    if len(set(ids)) != len(ids):
        raise BadInput(f"{path}: a checkpoint appears twice")
    metric_names = [
        k
        for k, v in cols.items()
        if k not in KEY_COLUMNS and k not in ITEM_COLUMNS and v.ndim == 1 and len(v) == n
    ]
    for k in metric_names:
        if not np.issubdtype(cols[k].dtype, np.number):
            raise BadInput(f"{path}: column '{k}' is not numeric")
    ignored = [k for k in cols if k not in KEY_COLUMNS + ITEM_COLUMNS and k not in metric_names]
    if ignored:
        raise BadInput(f"{path}: arrays {ignored} are neither [N] metrics nor errors/predictions")
    kind = "errors" if "errors" in cols else ("predictions" if "predictions" in cols else None)
    if "errors" in cols and "predictions" in cols:
        raise BadInput(f"{path}: give errors or predictions, not both")
    data = labels_arr = None
    existing = db.sql("SELECT * FROM eval_sets WHERE name = :n", {"n": eval_set})
    if kind:
        data = np.asarray(cols[kind])
        if data.ndim != 2 or data.shape[0] != n:
            raise BadInput(f"{path}: '{kind}' must be [{n}, T], not {list(data.shape)}")
        t = data.shape[1]
        if existing and existing[0]["n_items"] not in (None, t):
            raise BadInput(
                f"{path}: eval set '{eval_set}' has {existing[0]['n_items']} items, "
                f"the file's {kind} have {t}"
            )
        if kind == "errors" and not np.isin(data, (0, 1)).all():
            raise BadInput(f"{path}: 'errors' must be 0/1 (or boolean) per item")
        if "labels" in cols:
            labels_arr = np.asarray(cols["labels"]).reshape(-1)
            if len(labels_arr) != t:
                raise BadInput(f"{path}: labels have {len(labels_arr)} items, {kind} have {t}")
        stored_labels = existing and db.outputs_store.has(f"labels/{existing[0]['id']}")
        if kind == "predictions" and labels_arr is None and not stored_labels:
            raise BadInput(
                f"{path}: predictions need labels (a 'labels' array, or an eval set with them)"
            )
    if not metric_names and kind is None:
        raise BadInput(f"{path}: no metrics, errors or predictions to store")
    if task:
        wdb.study.tasks.get(task)  # an unknown task fails here, before anything is written
    eid = ensure_eval_set(
        db,
        eval_set,
        task,
        split,
        labels=labels_arr,
        n_items=None if data is None else data.shape[1],
    )
    rows = [
        {"checkpoint_id": c, "eval_set_id": eid, "name": k, "value": float(cols[k][i])}
        for k in metric_names
        for i, c in enumerate(ids)
        if np.isfinite(float(cols[k][i]))
    ]
    db.add_metrics(rows)
    if kind:
        write_outputs(db, eid, kind, ids, data)
    return {
        "file": str(path),
        "eval_set": eval_set,
        "eval_set_id": eid,
        "checkpoints": len(ids),
        "metrics": ", ".join(metric_names),
        "outputs": kind or "",
    }
