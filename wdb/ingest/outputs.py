"""Outputs computed elsewhere (predictions, error sets, metrics in a ``.npz``/``.npy``/``.csv``)
ingested as an eval set's outputs: ``wdb ingest-outputs FILE``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wdb.errors import BadInput
from wdb.store.outputs import ensure_eval_set, write_outputs

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
