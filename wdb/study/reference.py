"""A generator run's reference set: what its samples are compared against (revision 0009).

The paper compares each method's samples with a particular set of checkpoints (METHODS.md):
G.pt with the final checkpoint of each training run, Hyper-Representations with the
autoencoder's reconstructions of the last epoch, HyperDiffusion with the training-split fields,
P-diff with its training checkpoints. A method declares its set (``MethodInfo.reference`` and
``reference_steps``, or a ``reference_set(train, samples)`` function, see
:class:`wdb.study.contract.Generator`); when a generator run finishes, the framework records the
set's checkpoint ids in ``reference_sets`` (one row per id) and a one-line description in the
run's config (``reference``). ``wdb query novelty``, ``wdb analyze`` and the report use it by
default for that run's samples. In SQL::

    SELECT generator_run_id, method, kind, count(*) FROM reference_info GROUP BY ALL
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from wdb.errors import WdbError
from wdb.study.contract import TrainingSet

STEPS = ("all", "final")


def final_positions(train: TrainingSet) -> list[int]:
    """Positions in ``train`` of the highest step of each run (ties: the highest id)."""
    best: dict[str, tuple[int, int, int]] = {}
    for p, r in enumerate(train.info):
        key = (int(r["step"]), int(train.ids[p]), p)
        if r["run"] not in best or key > best[r["run"]]:
            best[r["run"]] = key
    return sorted(v[2] for v in best.values())


def reference_ids(
    method: Any, train: TrainingSet, samples: Sequence[dict]
) -> tuple[list[int], str]:
    """The checkpoint ids of the reference set ``method`` declares, and a one-line description.

    ``samples``: what the run wrote, dicts with ``checkpoint_id``, ``kind`` and ``info``."""
    from wdb.study.methods import method_info

    name = str(getattr(method, "NAME", "generator"))
    hook = getattr(method, "reference_set", None)
    if callable(hook):
        got = hook(train, list(samples))
        try:
            ids = sorted({int(i) for i in np.asarray(list(got), dtype=np.int64)})
        except (TypeError, ValueError) as exc:
            raise WdbError(f"{name}: reference_set() must return checkpoint ids ({exc})") from None
        known = {int(i) for i in train.ids} | {int(s["checkpoint_id"]) for s in samples}
        if not ids or not set(ids) <= known:
            raise WdbError(
                f"{name}: reference_set() must return a non-empty subset of the training and "
                "sample checkpoint ids"
            )
        return ids, f"{len(ids)} checkpoints chosen by {name}.reference_set()"
    info = method_info(method)
    steps = info.reference_steps
    if steps not in STEPS:
        raise WdbError(f"{name}: MethodInfo.reference_steps must be one of {STEPS}, not {steps!r}")
    pos = final_positions(train) if steps == "final" else list(range(len(train)))
    chosen = [int(train.ids[p]) for p in pos]
    what = (
        f"the final checkpoint of each training run ({len(chosen)} of {len(train)})"
        if steps == "final"
        else f"every training checkpoint ({len(chosen)})"
    )
    if info.reference == "reconstructed":
        rec = [s for s in samples if s["kind"] == "reconstructed"]
        keep = set(chosen)
        with_src = [s for s in rec if (s.get("info") or {}).get("source_checkpoint") is not None]
        if with_src:
            rec = [s for s in with_src if int(s["info"]["source_checkpoint"]) in keep]
        if rec:
            ids = sorted(int(s["checkpoint_id"]) for s in rec)
            return ids, f"{len(ids)} reconstructions of {what}"
        what += ", no reconstructions were written"
    return sorted(chosen), what


def record(db, gid: int, ids: Sequence[int]) -> None:
    """Write generator run ``gid``'s reference set (one short transaction)."""
    from wdb.catalog.dialect import insert_many
    from wdb.catalog.schema import reference_sets

    rows = [{"generator_run_id": int(gid), "checkpoint_id": int(i)} for i in sorted(set(ids))]
    with db.catalog.begin() as conn:
        insert_many(conn, reference_sets, rows)
