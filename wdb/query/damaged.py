"""``--skip-damaged``: queries that go on without checkpoints whose stored bytes are damaged.

Every read of a stored row is verified (``wdb.store.verify``), so a damaged row fails the query
with :class:`wdb.errors.DamagedChunk`, which lists the damaged checkpoints that read met. Here
the query is simply run again with those checkpoints left out of its selections (and, from the
start, those ``wdb fsck --fix`` marked damaged), until it succeeds. Damage is rare, so the cost
is one extra run per damaged chunk met, and the scans themselves stay unchanged.

Limit: building a FAISS index reads every row of a space, whatever the selection; a query that
must build (or rebuild) an index over a damaged space still fails. Exact scans (reference sets
up to ``wdb.query.nearest.BRUTE_MAX`` rows, ``--aligned``) and searches over an index built
before the damage skip as promised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from wdb.errors import DamagedChunk

T = TypeVar("T")
#: how many failed runs a query may take before giving up (each leaves out at least one chunk)
MAX_TRIES = 100


def without(where: str, skipped: set[int]) -> str:
    """``where`` (over ``checkpoint_info``) minus marked-damaged and ``skipped`` checkpoints."""
    parts = [f"({where})", "damaged IS NULL"]
    if skipped:
        parts.append(f"checkpoint_id NOT IN ({', '.join(str(int(i)) for i in sorted(skipped))})")
    return " AND ".join(parts)


def _marked(db, where: str) -> int:
    return int(
        db.sql(
            f"SELECT count(*) AS n FROM checkpoint_info WHERE ({where}) AND damaged IS NOT NULL"
        )[0]["n"]
    )


def retrying(
    call: Callable[[set[int]], T], keep: frozenset[int] = frozenset()
) -> tuple[T, set[int]]:
    """``call(skipped)`` until it raises no :class:`DamagedChunk`; a damaged checkpoint in
    ``keep`` (the query itself) cannot be left out, and its error stands."""
    skipped: set[int] = set()
    for _ in range(MAX_TRIES):
        try:
            return call(skipped), skipped
        except DamagedChunk as exc:
            new = set(exc.checkpoint_ids) - skipped
            if not new or new & keep:
                raise
            skipped |= new
    raise DamagedChunk(f"more than {MAX_TRIES} damaged chunks met; run `wdb fsck`")


def nearest(
    db, run: str, step: int | None = None, among: str | None = None, **kw
) -> tuple[list[dict], int]:
    """``wdb.query.nearest.nearest`` without damaged references → (rows, how many skipped)."""
    from wdb.query import nearest as q

    ref = among or q.DEFAULT_REFERENCE
    qid = int(db.checkpoint(run, step)["checkpoint_id"])
    rows, skipped = retrying(
        lambda s: q.nearest(db, run, step=step, among=without(ref, s), **kw), frozenset({qid})
    )
    space = int(db.checkpoint(run, step)["space_id"])
    return rows, len(skipped) + _marked(db, f"({ref}) AND space_id = {space}")


def novelty(db, targets: str, reference: str | None = None, **kw) -> tuple[list[dict], int]:
    """``wdb.query.nearest.novelty`` without damaged targets or references → (rows, how many
    distinct checkpoints skipped)."""
    from wdb.query import nearest as q

    tgt = q.select(db, without(targets, set())) if reference is None else None
    if tgt is not None and len(tgt):  # each generator run's recorded reference, else the default
        import sys

        from wdb.query.reference import default_groups

        chosen, notes = default_groups(db, tgt.ids, q.DEFAULT_REFERENCE)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        rows, n = [], _marked(db, targets)
        for ref, pos in chosen.items():
            ids = ", ".join(str(int(tgt.ids[p])) for p in pos)
            part, m = novelty(db, f"({targets}) AND checkpoint_id IN ({ids})", ref, **kw)
            rows += part
            n += m
        return rows, n
    ref = reference or q.DEFAULT_REFERENCE
    rows, skipped = retrying(
        lambda s: q.novelty(db, without(targets, s), reference=without(ref, s), **kw)
    )
    return rows, len(skipped) + _marked(db, f"({targets}) OR ({ref})")
