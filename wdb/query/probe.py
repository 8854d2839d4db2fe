"""What a neighbour query may start from: a run name, a checkpoint id, or tensors.

``nearest`` and ``novelty`` (``wdb.query.nearest``) search from stored checkpoints; a user with a
model in memory (a state dict, or a ``torch.nn.Module``) should not have to ingest it first. Its
tensors are flattened with the layout of the weight space that has exactly its names, shapes and
dtypes, and searched with like any stored row (it has no id, so it excludes nothing, and has no
predictions, so no error-set IoU).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from wdb.errors import BadInput, NotFound


def _is_tensors(value: Any) -> bool:
    return isinstance(value, Mapping) or callable(getattr(value, "state_dict", None))


def space_of(db: Any, state: Any) -> tuple[Any, np.ndarray]:
    """The stored weight space ``state`` (a state dict or a module) belongs to, and its row
    (``[1, D]``, values as reads give them), flattened with that space's layout."""
    from wdb.store.spaces import Layout
    from wdb.store.tensors import state_to_numpy, values_of

    if not isinstance(state, Mapping):
        state = state.state_dict()
    arrays, dtypes = state_to_numpy(state)
    mine = Layout.from_arrays(arrays, dtypes)
    rows = db.sql("SELECT id, hash, layout FROM spaces ORDER BY id")
    same = [r for r in rows if r["hash"] == mine.hash]
    if not same:  # the same tensors in another order: the space's layout orders them
        same = [r for r in rows if set(Layout.from_json(r["layout"]).names) == set(arrays)]
    for r in same:
        space = db.space(int(r["id"]))
        try:
            row = space.layout.flatten(arrays)  # a bf16 space's bits: searched as values
            return space, values_of(row, space.layout.storage_dtype)[None]
        except BadInput:
            continue
    raise NotFound(
        f"no weight space holds tensors like these ({len(arrays)} tensors, {mine.n_params} "
        "parameters): ingest or log a checkpoint of this model first (see `wdb ls spaces`)"
    )


def probe(db: Any, query: Any, step: int | None = None) -> tuple[Any, Any, int | None]:
    """``(space, rows, checkpoint id or None)`` for a run name (its last step unless ``step``),
    a checkpoint id, or a state dict / module. ``rows`` is ``[1, D]`` in memory for tensors, and
    a stored row source (read within the memory budget by the scan) for a stored checkpoint."""
    if _is_tensors(query):
        if step is not None:
            raise BadInput("step applies to a run name, not to tensors")
        space, row = space_of(db, query)
        return space, row, None
    if isinstance(query, int | np.integer) and not isinstance(query, bool):
        if step is not None:
            raise BadInput("step applies to a run name, not to a checkpoint id")
        found = db.checkpoints("checkpoint_id = :id", {"id": int(query)})
        if not found:
            raise NotFound(f"checkpoint {int(query)} not found")
        info = found[0]
    elif isinstance(query, str):
        info = db.checkpoint(query, step)
    else:
        raise BadInput(
            f"query by a run name, a checkpoint id or a state dict, not a {type(query).__name__}"
        )
    from wdb.query.nearest import stored

    space = db.space(int(info["space_id"]))
    return (
        space,
        stored(db, space, np.array([info["row"]], dtype=np.int64)),
        int(info["checkpoint_id"]),
    )


def nearest(db: Any, query: Any, step: int | None = None, **kw: Any) -> list[dict]:
    """``wdb.query.nearest.nearest`` from a run name, a checkpoint id or tensors."""
    from wdb.query.nearest import nearest as search

    return search(db, query, step=step, **kw)


def novelty(
    db: Any,
    targets: Any,
    reference: str | None = None,
    k: int = 1,
    aligned: bool = False,
    **kw: Any,
) -> list[dict]:
    """``wdb.query.nearest.novelty`` for a SQL selection, a run name (all its checkpoints), a
    checkpoint id, or tensors (one row, ``checkpoint_id`` None; nothing is saved for tensors)."""
    from wdb.query import nearest as nn

    if _is_tensors(targets):
        return [_novelty_of(db, targets, reference or nn.DEFAULT_REFERENCE, k, aligned)]
    if isinstance(targets, int | np.integer) and not isinstance(targets, bool):
        targets = f"checkpoint_id = {int(targets)}"
    elif isinstance(targets, str) and db.sql("SELECT 1 FROM runs WHERE name = :n", {"n": targets}):
        targets = "run = '" + targets.replace("'", "''") + "'"
    return nn.novelty(db, targets, reference=reference, k=k, aligned=aligned, **kw)


def _novelty_of(db: Any, state: Any, reference: str, k: int, aligned: bool) -> dict:
    from wdb.query.nearest import aligned_knn, knn, select

    space, row = space_of(db, state)
    ref = select(db, reference, space.id)
    out = {"checkpoint_id": None, "space": space.name, "min_l2": None, "nearest_id": None}
    out.update({"nearest_run": None, "nearest_step": None, "n_reference": len(ref)})
    if len(ref):
        ids, dist, _ = (aligned_knn if aligned else knn)(db, space, row, [None], ref, k)
        if ids[0, 0] >= 0:
            meta = ref.info[ref.position()[int(ids[0, 0])]]
            out.update(min_l2=float(dist[0, 0]), nearest_id=int(ids[0, 0]))
            out.update(nearest_run=meta["run"], nearest_step=meta["step"])
    return out
