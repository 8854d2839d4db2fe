"""Where each new checkpoint's bytes go, and which checkpoint it came from (revision 0007).

Called by the write protocol (``wdb.store.write``) under the write lock, before any byte is
written: it reads the catalog, gives every new checkpoint a row (an existing one when its sha256
is already stored in the space: *shared*), and, in wide spaces, a parent row to store a delta
against (``wdb.store.family``). The lineage it infers is recorded whatever the storage does:

1. ``previous_step``: the highest stored step below this one of the same run;
2. ``declared``: ``NewCheckpoint.base`` (``RUN`` or ``RUN:STEP``), when that run is stored in the
   space (a base named in a file but not in the store is ignored);
3. ``found``: the nearest row of the space by sketch (``family.distance``); recorded only when
   the delta saved bytes or the row is shared (an unrelated checkpoint gets no parent).

On noise-only families the direction of an edge is not in the weights (STACK.md, MoTHer): ingest
order decides it (a parent is always stored before its child).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wdb.store import family


@dataclass
class Plan:
    """One new checkpoint's place: its row, whether its bytes are already stored, its parent."""

    row: int
    shared: bool = False
    #: checkpoint id of the lineage parent, or ``-(index in batch) - 1`` for one of this batch
    parent_ref: int | None = None
    reason: str | None = None
    distance: float | None = None
    #: the parent's row (chunks equal to its chunks are borrowed), and the key row residuals
    #: are taken against (None: chunks stored as themselves)
    parent_row: int | None = None
    key_row: int | None = None
    #: the parent's residual chunks are against ``key_row`` (so they can be borrowed)
    same_key: bool = False
    #: the stored parent's ``chunk_hashes`` and ``delta_chunks`` (None: in this batch)
    parent_hashes: str | None = None
    parent_tokens: str | None = None
    sketch: bytes | None = None


@dataclass
class _Known:
    cid: int  # checkpoint id, or -(batch index) - 1
    run: str
    step: int
    row: int


def _parse_base(base: str) -> tuple[str, int | None]:
    run, sep, step = base.rpartition(":")
    if sep and step.lstrip("-").isdigit():
        return run, int(step)
    return base, None


def place(conn: Any, space: Any, items: list, start: int, wide: bool) -> list[Plan]:
    """A :class:`Plan` per item (in order); new rows are ``start, start + 1, ...``."""
    import sqlalchemy as sa

    shas = sorted({it.sha256 for it in items})
    stored: dict[str, tuple[int, int]] = {}  # sha256 -> (row, checkpoint id)
    for sha, row, cid in conn.execute(
        sa.text(
            "SELECT sha256, min(row), min(id) FROM checkpoints WHERE space_id = :s "
            "AND sha256 IN :h GROUP BY sha256"
        ).bindparams(sa.bindparam("h", expanding=True)),
        {"s": space.id, "h": shas},
    ):
        stored[sha] = (int(row), int(cid))
    known: list[_Known] = []
    fam: dict[int, tuple[int, int | None, str | None]] = {}  # row -> depth, parent row, tokens
    sketches: dict[int, bytes] = {}
    if wide:
        known = [
            _Known(int(c), r, int(s), int(w))
            for c, r, s, w in conn.execute(
                sa.text(
                    "SELECT c.id, r.name, c.step, c.row FROM checkpoints c "
                    "JOIN runs r ON r.id = c.run_id WHERE c.space_id = :s ORDER BY c.id"
                ),
                {"s": space.id},
            )
        ]
        for row, d, sk, prow, toks in conn.execute(
            sa.text(
                "SELECT row, depth, sketch, parent_row, delta_chunks FROM family_rows "
                "WHERE space_id = :s"
            ),
            {"s": space.id},
        ):
            fam[int(row)] = (int(d), None if prow is None else int(prow), toks)
            if sk is not None:
                sketches[int(row)] = bytes(sk)
    stored_rows = set(fam) | {k.row for k in known}
    plans: list[Plan] = []
    nxt = start
    for i, it in enumerate(items):
        plan = Plan(row=-1)
        hit = stored.get(it.sha256)
        if hit is not None:
            plan.row, plan.shared = hit[0], True
        else:
            plan.row, nxt = nxt, nxt + 1
            stored[it.sha256] = (plan.row, -i - 1)
        if wide:
            _parent(plan, it, known, sketches, hit)
            if plan.parent_ref is not None and not plan.shared:
                prow = _row_of(plan.parent_ref, known)
                d, pkey, toks = fam.get(prow, (0, None, None))
                if prow != plan.row:
                    plan.parent_row = prow
                    # the key row: the parent itself, or the row its residuals are against
                    # (a first-round chain deeper than one link: none, values only)
                    plan.key_row = prow if d == 0 else (pkey if d == 1 else None)
                    plan.same_key = d == 1
                    if prow in stored_rows:
                        plan.parent_tokens = toks
                        plan.parent_hashes = _hashes(conn, space.id, prow)
            fam.setdefault(plan.row, (1 if plan.key_row is not None else 0, plan.key_row, None))
            if plan.sketch is not None:
                sketches.setdefault(plan.row, plan.sketch)
            known.append(_Known(-i - 1, it.run, it.step, plan.row))
        elif getattr(it, "base", None):
            _declared_elsewhere(conn, plan, it.base)
        elif hit is not None:
            plan.parent_ref, plan.reason, plan.distance = hit[1], "found", 0.0
        if wide and plan.parent_ref is None and getattr(it, "base", None):
            _declared_elsewhere(conn, plan, it.base)
        plans.append(plan)
    return plans


def _hashes(conn: Any, space_id: int, row: int) -> str | None:
    import sqlalchemy as sa

    return conn.execute(
        sa.text(
            "SELECT chunk_hashes FROM checkpoints WHERE space_id = :s AND row = :r "
            "AND chunk_hashes IS NOT NULL LIMIT 1"
        ),
        {"s": space_id, "r": row},
    ).scalar()


def _declared_elsewhere(conn: Any, plan: Plan, base: str) -> None:
    """A declared base stored in another space (a PEFT adapter's base model) or in a small
    space: a lineage edge only (a delta needs one space)."""
    import sqlalchemy as sa

    run, step = _parse_base(base)
    got = conn.execute(
        sa.text(
            "SELECT c.id FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.name = :r "
            + ("AND c.step = :s " if step is not None else "")
            + "ORDER BY c.step DESC, c.id DESC LIMIT 1"
        ),
        {"r": run, "s": step},
    ).scalar()
    if got is not None:
        plan.parent_ref, plan.reason, plan.distance = int(got), "declared", None


def _row_of(ref: int, known: list[_Known]) -> int:
    return next(k.row for k in known if k.cid == ref)


def _sketch_of(it: Any) -> bytes:
    row = it.row
    if isinstance(row, np.ndarray):
        return family.sketch(row)
    if row.sketch is not None:  # taken by the pass that hashed it
        return row.sketch
    sk = family.Sketcher(row.n)  # a RowStream: one pass over its segments
    for seg in row.segments():
        sk.add(seg)
    return sk.bytes()


def _parent(plan: Plan, it: Any, known: list[_Known], sketches: dict[int, bytes], hit) -> None:
    """Fill ``plan``'s lineage: previous step, declared base, or nearest by sketch."""
    if it.run:
        before = [k for k in known if k.run == it.run and k.step < it.step]
        if before:
            k = max(before, key=lambda k: (k.step, k.cid))
            plan.parent_ref, plan.reason = k.cid, "previous_step"
    base = getattr(it, "base", None)
    if plan.parent_ref is None and base:
        run, step = _parse_base(base)
        cands = [k for k in known if k.run == run and (step is None or k.step == step)]
        if cands:
            k = max(cands, key=lambda k: (k.step, k.cid))
            plan.parent_ref, plan.reason = k.cid, "declared"
    if plan.shared and plan.parent_ref is None:
        holder = next((k for k in known if k.row == plan.row), None)
        if holder is not None:
            plan.parent_ref, plan.reason, plan.distance = holder.cid, "found", 0.0
        return
    if plan.shared:
        plan.distance = 0.0
        return
    plan.sketch = _sketch_of(it)
    if plan.parent_ref is not None:
        prow = _row_of(plan.parent_ref, known)
        if prow in sketches:
            plan.distance = family.distance(plan.sketch, sketches[prow])
        return
    best: tuple[float, int] | None = None
    for row, sk in sketches.items():
        if len(sk) == len(plan.sketch):
            d = family.distance(plan.sketch, sk)
            if best is None or d < best[0]:
                best = (d, row)
    if best is not None:
        holder = min((k for k in known if k.row == best[1]), key=lambda k: k.cid, default=None)
        if holder is not None:
            plan.parent_ref, plan.reason, plan.distance = holder.cid, "found", best[0]


def tree(db: Any, run: str) -> list[dict]:
    """The family tree of ``run``: every lineage edge from its checkpoints up to their roots and
    down to all their descendants, parents before children, with ``generation`` (0: a root)."""
    edges = db.sql(
        "SELECT child_id, child_run, child_step, parent_id, parent_run, parent_step, reason, "
        "distance, bytes_saved FROM lineage_info ORDER BY child_id"
    )
    up = {e["child_id"]: e for e in edges}
    down: dict[int, list[dict]] = {}
    for e in edges:
        down.setdefault(e["parent_id"], []).append(e)
    mine = [
        r["checkpoint_id"]
        for r in db.sql("SELECT checkpoint_id FROM checkpoint_info WHERE run = :r", {"r": run})
    ]
    keep: dict[int, dict] = {}
    for cid in mine:
        c = cid
        while c in up and up[c]["child_id"] not in keep:
            keep[c] = up[c]
            c = up[c]["parent_id"]
    todo = list(mine)
    while todo:
        for e in down.get(todo.pop(), []):
            if e["child_id"] not in keep:
                keep[e["child_id"]] = e
                todo.append(e["child_id"])

    def generation(cid: int) -> int:
        g = 0
        while cid in up and g < len(up):
            cid, g = up[cid]["parent_id"], g + 1
        return g

    rows = [{**e, "generation": generation(e["child_id"])} for e in keep.values()]
    return sorted(rows, key=lambda r: (r["generation"], r["child_id"]))
