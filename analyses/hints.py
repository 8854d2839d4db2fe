"""Why a table, a column or a figure of an analysis is empty, and the command that fills it.

An analysis runs on whatever the database holds; where a piece is missing (no noise baseline in
the weight space, samples not evaluated yet, no generator at all), the CLI output, the result
record and the report say so in one line that names the command to run next.
"""

from __future__ import annotations

import re
from typing import Any

#: a figure group's commands: what writes the checkpoints of an empty selection
_MAKES = {
    "noise_1": "wdb generate noise --train {train} --set sigma=0.01",
    "noise_2": "wdb generate noise --train {train} --set sigma=0.1",
    "average": "wdb generate average --train {train}",
    "gaussian": "wdb generate gaussian --train {train}",
}


def _quote(sql: str) -> str:
    return '"' + sql.replace('"', '\\"') + '"'


def _train(ctx: Any) -> str:
    sel = getattr(ctx, "train_selection", "") or "kind = 'training'"
    return _quote(sel)


def _zoo_train(db) -> str | None:
    rows = db.sql(
        "SELECT zoo, count(*) AS n FROM checkpoint_info WHERE kind = 'training' "
        "GROUP BY zoo ORDER BY n DESC LIMIT 1"
    )
    if not rows:
        return None
    z = rows[0]["zoo"]
    return _quote(f"zoo = '{z}' AND kind = 'training'" if z else "kind = 'training'")


def make_samples(db) -> str:
    """The commands that give a generator's samples to analyse, on the largest zoo here."""
    train = _zoo_train(db) or _quote("kind = 'training'")
    return (
        f"make samples with a generator, then evaluate them: `wdb generate pdiff --train "
        f"{train} --set size=small` (or hyperrep, gpt, ...), then `wdb evaluate`"
    )


def nothing(db) -> str:
    """The suffix of the "nothing to analyse" error: the commands that make samples."""
    train = _zoo_train(db)
    if train is None:
        return (
            ": there are no training checkpoints either; train or ingest a zoo first "
            "(`wdb zoo train mnist-mlp --out zoo/ --size small`, `wdb ingest zoo/`)"
        )
    return (
        f"; {make_samples(db)}; a baseline's samples can be analysed too "
        f"(`wdb generate noise --train {train} --set sigma=0.05`)"
    )


def empty_selection(name: str, ctx: Any) -> str:
    """Why selection ``name`` holds no checkpoint, and what writes some."""
    if name in _MAKES:
        what = "noise baseline" if name.startswith("noise") else f"{name} baseline"
        return (
            f"no {what} in weight space {ctx.space_id} "
            f"(run `{_MAKES[name].format(train=_train(ctx))}`)"
        )
    if name == "training":
        return f"generator run {ctx.gen} recorded no training checkpoints that still exist"
    if name == "test":
        return f"no held-out checkpoints (split = 'test') in zoo '{ctx.zoo}'"
    return "the selection matched no checkpoint"


def unevaluated(db, novelty_table: str, counts: dict[str, int]) -> dict[str, str]:
    """selection → why its accuracy / max error-set IoU are empty (checkpoints not evaluated)."""
    rows = db.sql(
        f"SELECT selection, count(*) AS n, count(accuracy) AS acc, count(max_iou) AS iou "
        f"FROM {novelty_table} GROUP BY selection"
    )
    out = {}
    for r in rows:
        n, acc, iou = int(r["n"]), int(r["acc"]), int(r["iou"])
        if acc == n and iou == n:
            continue
        gaps = []
        if acc < n:
            gaps.append(f"{n - acc} of {n} have no accuracy")
        if iou < n:
            gaps.append(f"{n - iou} of {n} no max error-set IoU")
        fix = "run `wdb evaluate`, then `wdb analyze` again"
        out[str(r["selection"])] = f"{r['selection']}: {'; '.join(gaps)} ({fix})"
    for s, n in counts.items():
        if n and s not in {str(r["selection"]) for r in rows}:
            out.setdefault(s, f"{s}: not in the novelty table")
    return out


_LITERAL = re.compile(r"'([a-z][a-z0-9_]*)'")


def groups_of(sql: str, selections: dict[str, int]) -> list[str]:
    """The selections a table's SQL names as string literals (``selection IN ('training', ...)``),
    or every selection when it names none (the figure shows whatever groups there are)."""
    literals = list(dict.fromkeys(_LITERAL.findall(sql or "")))
    if not selections:  # every name the SQL quotes (the caller intersects)
        return literals
    return [g for g in literals if g in selections] or list(selections)


def missing_groups(
    expected: list[str],
    present: set[str],
    counts: dict[str, int],
    not_evaluated: dict[str, str],
    ctx: Any,
) -> list[dict[str, str]]:
    """The groups a figure should show but does not, each with why and what to run."""
    out = []
    for g in expected:
        if g in present:
            continue
        if not counts.get(g):
            why = empty_selection(g, ctx)
        elif g in not_evaluated:
            why = not_evaluated[g].split(": ", 1)[1]
        else:
            why = "no rows for it in the figure's table"
        out.append({"group": g, "why": why})
    return out
