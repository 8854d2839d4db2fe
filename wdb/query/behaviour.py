"""What a neighbour query joins to its rows: stored metrics and error sets.

Which eval set a comparison is made on (the one most of the compared checkpoints have outputs
on), which metric values go in a column (one eval set per metric), and who has outputs where.
Shared by ``wdb query nearest`` and ``wdb query novelty`` (``wdb.query.nearest``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wdb.query.relations import _in_list


def metrics_of(db, ids: Sequence[int]) -> list[dict]:
    """Every stored metric of ``ids``, with its eval set's name and split."""
    ids = sorted({int(i) for i in ids})
    if not ids:
        return []
    return db.sql(
        "SELECT m.checkpoint_id, m.name, m.value, m.eval_set_id, e.name AS eval_set, e.split "
        "FROM metrics m JOIN eval_sets e ON e.id = m.eval_set_id WHERE "
        + _in_list(db, "m.checkpoint_id"),
        {"ids": ids},
    )


def pick_metrics(rows: list[dict], ids: Sequence[int]) -> tuple[dict[int, dict], dict[str, str]]:
    """One eval set per metric name: the one covering most of ``ids``, computed before reported.

    Mixing eval sets within one column would compare numbers measured on different data.
    """
    by_name: dict[str, dict[int, list[dict]]] = {}
    for r in rows:
        by_name.setdefault(r["name"], {}).setdefault(r["eval_set_id"], []).append(r)
    values: dict[int, dict] = {int(i): {} for i in ids}
    chosen: dict[str, str] = {}
    for name in sorted(by_name):
        sets = by_name[name]

        def score(es: int, sets=sets) -> tuple:
            rs = sets[es]
            reported = rs[0]["split"] == "reported"
            return (-len({r["checkpoint_id"] for r in rs}), reported, es)

        es = min(sets, key=score)
        chosen[name] = sets[es][0]["eval_set"]
        for r in sets[es]:
            if int(r["checkpoint_id"]) in values:
                values[int(r["checkpoint_id"])][name] = r["value"]
    return values, chosen


def output_sets(db, ids: Sequence[int] | np.ndarray) -> dict[int, set[int]]:
    """eval_set_id -> checkpoints (among ``ids``) with predictions or error masks there. When
    the table has fewer rows than ``ids``, all are read and filtered here: 200k ids sent as a
    list parameter cost ~0.5 s, more than reading a study's outputs (an empty table: nothing,
    and the ids are not even made unique: ``np.unique`` of 200k took 70 ms of a cluster
    query's driver)."""
    ids = np.asarray(ids, dtype=np.int64)
    if not ids.size:
        return {}
    kinds = "(array_path LIKE 'predictions/%' OR array_path LIKE 'errors/%')"
    n = db.sql("SELECT count(*) AS n FROM predictions")[0]["n"]
    if not n:
        return {}
    ids = np.unique(ids)
    if n <= ids.size:
        rows = db.sql(f"SELECT eval_set_id, checkpoint_id FROM predictions WHERE {kinds}")
        got = np.array([int(r["checkpoint_id"]) for r in rows], dtype=np.int64)
        rows = [r for r, keep in zip(rows, np.isin(got, ids), strict=True) if keep]
    else:
        where = f"{_in_list(db, 'checkpoint_id')} AND {kinds}"
        rows = db.sql(
            f"SELECT eval_set_id, checkpoint_id FROM predictions WHERE {where}",
            {"ids": ids.tolist()},
        )
    out: dict[int, set[int]] = {}
    for r in rows:
        out.setdefault(int(r["eval_set_id"]), set()).add(int(r["checkpoint_id"]))
    return out


def pick_eval_set(
    sets: dict[int, set[int]], must: Sequence[int], others: Sequence[int]
) -> int | None:
    """The eval set where most of ``must`` (then of ``others``) have outputs; on a tie the
    newest (a store re-evaluated on a task's new eval set, as mnist-bn's ``test-perturbed-v1``,
    compares on it, not on the set it replaced)."""
    best, key = None, None
    if not sets:  # no outputs anywhere: no sets of 200k ids to build
        return None
    must_s, others_s = set(must), set(others)
    for es, have in sets.items():
        k = (len(have & must_s), len(have & others_s), es)
        if k[0] and k[1] and (key is None or k > key):
            best, key = es, k
    return best


def eval_set_id(db, key: int | str | None) -> int | None:
    if key is None:
        return None
    from wdb.store.outputs import eval_set

    return int(eval_set(db, key)["id"])
