"""Default reference sets and lineage for ``novelty`` (revision 0009).

A generator run records the paper's reference set of its method with its samples (table
``reference_sets``, written by ``wdb.study.reference``). When ``novelty`` is asked without a
reference, each target that is a generator run's sample is compared with that run's recorded
set; other targets, and samples of runs that recorded none (made before revision 0009, or by an
outside generator), with ``kind = 'training'`` as before, and a one-line note says so.

Lineage: ``own_lineage`` marks a target whose nearest reference is its own prompt, source or
parent (:func:`own_lineage`): then "nearest training model" measures provenance, not
memorization (a G.pt sample is always close to the initialisation it was prompted with).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from wdb.query.relations import _in_list

#: run-config keys through which a sample declares the checkpoint it came from (the framework
#: stores a method's per-sample ``Samples.info`` in the sample's run config): G.pt's prompt, the
#: training checkpoint Hyper-Representations / a noise baseline copied, or any method's parent.
LINEAGE_KEYS = ("prompt_checkpoint", "source_checkpoint", "parent_checkpoint")


def selection(gid: int) -> str:
    """The SQL filter over ``checkpoint_info`` of generator run ``gid``'s recorded reference."""
    return (
        "checkpoint_id IN (SELECT checkpoint_id FROM reference_sets "
        f"WHERE generator_run_id = {int(gid)})"
    )


def recorded(db, gids: Iterable[int]) -> dict[int, int]:
    """Generator run id → size of its recorded reference set (runs without one are absent)."""
    gids = sorted({int(g) for g in gids})
    if not gids:
        return {}
    rows = db.sql(
        "SELECT generator_run_id, count(*) AS n FROM reference_sets WHERE "
        + _in_list(db, "generator_run_id")
        + " GROUP BY generator_run_id",
        {"ids": gids},
    )
    return {int(r["generator_run_id"]): int(r["n"]) for r in rows}


def default_groups(
    db, target_ids: Sequence[int], fallback: str
) -> tuple[dict[str, list[int]], list[str]]:
    """Target positions per default reference selection, and one note per kind of default.

    A generator run's samples get its recorded reference; everything else gets ``fallback``.
    """
    ids = [int(i) for i in target_ids]
    gen: dict[int, int] = {}
    have: dict[int, int] = {}
    if ids:  # one query: each target's generator run and the size of its recorded set
        for r in db.sql(
            "SELECT c.checkpoint_id, c.generator_run_id, (SELECT count(*) FROM reference_sets s "
            "WHERE s.generator_run_id = c.generator_run_id) AS n FROM checkpoint_info c WHERE "
            + _in_list(db, "c.checkpoint_id")
            + " AND c.generator_run_id IS NOT NULL",
            {"ids": ids},
        ):
            gen[int(r["checkpoint_id"])] = g = int(r["generator_run_id"])
            if int(r["n"]):
                have[g] = int(r["n"])
    groups: dict[str, list[int]] = {}
    without: set[int] = set()
    for p, cid in enumerate(ids):
        g = gen.get(cid)
        if g is not None and g in have:
            groups.setdefault(selection(g), []).append(p)
        else:
            if g is not None:
                without.add(g)
            groups.setdefault(fallback, []).append(p)
    notes = []
    used = sorted({gen[c] for c in ids if gen.get(c) in have})
    if used:
        sizes = ", ".join(f"run {g}: {have[g]} checkpoints" for g in used[:5])
        sizes += f", and {len(used) - 5} more runs" if len(used) > 5 else ""
        notes.append(f"reference: each generator run's recorded reference set ({sizes})")
    if without:
        runs = ", ".join(str(g) for g in sorted(without)[:10])
        runs += f" and {len(without) - 10} more" if len(without) > 10 else ""
        notes.append(
            f"reference: {fallback} (generator run{'s' if len(without) > 1 else ''} {runs} "
            "recorded no reference set: made before wdb schema 0009 or outside wdb)"
        )
    return groups, notes


def declared_sources(db, ids: Iterable[int]) -> dict[int, set[int]]:
    """Checkpoint id → the checkpoints its run config declares it came from (``LINEAGE_KEYS``)."""
    ids = sorted({int(i) for i in ids})
    if not ids:
        return {}
    rows = db.sql(
        "SELECT c.id AS checkpoint_id, r.config FROM checkpoints c JOIN runs r ON r.id = c.run_id "
        "WHERE " + _in_list(db, "c.id") + " AND r.config LIKE '%_checkpoint%'",
        {"ids": ids},
    )
    out: dict[int, set[int]] = {}
    for r in rows:
        try:
            cfg = json.loads(r["config"] or "{}")
        except (TypeError, ValueError):
            continue
        found = {
            int(cfg[k])
            for k in LINEAGE_KEYS
            if isinstance(cfg, dict)
            and isinstance(cfg.get(k), int)
            and not isinstance(cfg[k], bool)
        }
        if found:
            out[int(r["checkpoint_id"])] = found
    return out


def _parents(db, ids: Iterable[int]) -> dict[int, int]:
    """Child → parent of recorded lineage edges (previous step or declared base; not the
    parents the store only *found* by similarity, which would make the flag circular)."""
    ids = sorted({int(i) for i in ids})
    if not ids:
        return {}
    rows = db.sql(
        "SELECT child_id, parent_id FROM lineage WHERE reason <> 'found' AND "
        + _in_list(db, "child_id"),
        {"ids": ids},
    )
    return {int(r["child_id"]): int(r["parent_id"]) for r in rows}


def own_lineage(db, nearest: Mapping[int, int | None]) -> dict[int, bool | None]:
    """Target id → whether its nearest reference is in its own lineage (None: no nearest).

    In its lineage means: the nearest reference is the target's prompt, source or parent (run
    config ``LINEAGE_KEYS``, or a ``lineage`` edge by previous step or declared base), a lineage
    parent of one of those, or a checkpoint *derived from* one of them or from the target itself
    (its own ``LINEAGE_KEYS`` name it: Hyper-Representations' reconstruction of the training
    checkpoint a sample copied).
    """
    pairs = {int(t): int(n) for t, n in nearest.items() if n is not None and n >= 0}
    out: dict[int, bool | None] = {int(t): None for t in nearest}
    if not pairs:
        return out
    with db.catalog.reading():  # one connection for both reads
        src = declared_sources(db, set(pairs) | set(pairs.values()))
        first = {t: src.get(t, set()) for t in pairs}
        parent = _parents(db, set(pairs) | set().union(*first.values()))
    for t, n in pairs.items():
        line = set(first[t])
        if t in parent:
            line.add(parent[t])
        line |= {parent[s] for s in first[t] if s in parent}
        out[t] = n in line or bool(src.get(n, set()) & (line | {t}))
    return out


def groups(db, tgt, reference: str | None, fallback: str) -> dict[tuple[int, str], list[int]]:
    """(space id, reference selection) → positions in ``tgt`` (a ``nearest.RefSet``).
    Without ``reference``, :func:`default_groups`, and a note on stderr says which was used."""
    import sys

    if reference:
        chosen, notes = {reference: list(range(len(tgt)))}, []
    else:
        chosen, notes = default_groups(db, tgt.ids, fallback)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    out: dict[tuple[int, str], list[int]] = {}
    for ref_sql, positions in chosen.items():
        for p in positions:
            out.setdefault((int(tgt.info[p]["space_id"]), ref_sql), []).append(p)
    return out


def mark_lineage(db, rows: list[dict]) -> None:
    """Set each novelty row's ``own_lineage`` from its ``nearest_id`` (:func:`own_lineage`)."""
    flags = own_lineage(db, {r["checkpoint_id"]: r["nearest_id"] for r in rows})
    for r in rows:
        r["own_lineage"] = flags.get(r["checkpoint_id"])
