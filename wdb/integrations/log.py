"""``log_checkpoint``: one checkpoint from a training loop, straight into the store.

It goes through the same write protocol as ingest (``Database.write_checkpoints``: bytes first,
then one catalog transaction): the state dict becomes one row of the weight space of its layout
(created on first use), ``metrics`` become the checkpoint's reported metrics (eval set
``reported:<zoo>``, as metrics a source file reports at ingest), ``config`` becomes the run's
config. Lineage: the checkpoint's ``meta`` names the run's previous step
(``parent_checkpoint_id``, ``parent_step``), so a run's checkpoints form a chain in SQL
(``SELECT checkpoint_id, meta FROM checkpoint_info JOIN checkpoints ...``) as well as by step.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from wdb.errors import BadInput

_OPEN: dict[str, Any] = {}


def database(db: Any = None) -> Any:
    """A ``Database`` from one, a path, or None (``WDB_DB``, else ``./.wdb``); opened (created
    or upgraded) once per path and process."""
    from wdb.db import Database, resolve_path

    if isinstance(db, Database):
        return db
    key = str(resolve_path(db).resolve())
    if key not in _OPEN:
        import wdb

        _OPEN[key] = wdb.open(key)
    return _OPEN[key]


def plain_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Numeric, finite metric values as floats (tensors and numpy scalars included); other
    entries (strings, lists, NaN) are left out."""
    out: dict[str, float] = {}
    for k, v in (metrics or {}).items():
        if hasattr(v, "numel") and v.numel() != 1:
            continue
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(float(v)):
            out[str(k)] = float(v)
    return out


def log_checkpoint(
    state_dict: Any,
    run: str,
    step: int,
    metrics: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    db: str | os.PathLike | Any = None,
    zoo: str | None = None,
    kind: str = "training",
    meta: Mapping[str, Any] | None = None,
) -> int:
    """Write ``state_dict`` (tensors or numpy arrays, or a module) as checkpoint ``step`` of
    ``run`` in ``db`` (a path, a ``Database``, or None: ``WDB_DB`` / ``./.wdb``); returns its
    checkpoint id. Logging the same step again with the same weights returns the stored id;
    with other weights, or a ``config`` other than the run's, it fails in one line."""
    from wdb.store.spaces import Layout, old_bf16_layouts
    from wdb.store.tensors import state_to_numpy, values_of
    from wdb.store.write import KINDS, NewCheckpoint, to_json

    if not run or not isinstance(run, str):
        raise BadInput("log_checkpoint needs a run name")
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise BadInput(f"step must be a non-negative integer, not {step!r}")
    if kind not in KINDS:
        raise BadInput(f"kind must be one of {', '.join(KINDS)}, not '{kind}'")
    if not isinstance(state_dict, Mapping) and callable(getattr(state_dict, "state_dict", None)):
        state_dict = state_dict.state_dict()
    arrays, dtypes = state_to_numpy(state_dict)
    layout = Layout.from_arrays(arrays, dtypes)
    dbase = database(db)
    # a bf16 space made before 2-byte storage: keep logging into it, as the ingest does
    layout = old_bf16_layouts(dbase).get(layout.hash, layout)
    row = layout.flatten(arrays)
    if not np.isfinite(values_of(row, layout.storage_dtype)).all():
        raise BadInput(f"run '{run}' step {step}: the weights contain NaN or Inf values")
    space = dbase.ensure_space(layout)
    have = dbase.sql("SELECT id, config FROM runs WHERE name = :n", {"n": run})
    if have and config is not None:
        stored = have[0]["config"]
        if stored is None:
            with dbase.write_lock():
                dbase.sql(
                    "UPDATE runs SET config = :c WHERE id = :i",
                    {"c": to_json(dict(config)), "i": have[0]["id"]},
                    write=True,
                )
        elif json.loads(stored) != json.loads(to_json(dict(config))):
            raise BadInput(f"run '{run}' already has a different config; log to a new run name")
    prev = dbase.sql(
        "SELECT checkpoint_id, step FROM checkpoint_info WHERE run = :n AND step < :s "
        "ORDER BY step DESC LIMIT 1",
        {"n": run, "s": int(step)},
    )
    lineage: dict[str, Any] = {"logged_by": "wdb.log_checkpoint"}
    if prev:
        lineage.update(parent_checkpoint_id=prev[0]["checkpoint_id"], parent_step=prev[0]["step"])
    item = NewCheckpoint(
        run=run,
        step=int(step),
        row=row,
        kind=kind,
        zoo=zoo,
        metrics=plain_metrics(metrics),
        run_config=None if config is None else dict(config),
        meta={**lineage, **(meta or {})},
    )
    result = dbase.write_checkpoints(space, [item])
    if result.conflicts:
        raise BadInput(f"run '{run}' step {step}: {result.conflicts[0][1]}")
    return (result.added + result.existing)[0]
