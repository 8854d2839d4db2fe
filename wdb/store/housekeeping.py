"""Housekeeping of a database: removing runs and checkpoints, tags and notes on runs.

``Housekeeping`` is a mixin of :class:`wdb.db.Database`.

``rm`` removes a selection in one catalog transaction: the checkpoints, their metrics and
outputs rows, the reference-set, neighbour and similarity rows that mention them (a relation
left with no rows goes too; the others become stale, as ``relation_status`` says), the
generator's own network reference, and runs left without checkpoints with their tags. The bytes are then reclaimed by
:func:`wdb.store.reclaim.reclaim`, which decides from the catalog alone what is still needed: rm
never deletes bytes itself, so rows that other checkpoints share stay. Both steps hold the write
lock. Without ``yes`` nothing changes and the report says what would go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wdb.errors import BadInput, NotFound


@dataclass
class RemoveReport:
    """What ``rm`` removed (or, with ``dry_run``, would remove)."""

    dry_run: bool
    runs: list[dict] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    reclaimed: Any = None  # a ReclaimReport after a real removal


def _in(conn: Any, column: str, name: str) -> str:
    if conn.dialect.name == "duckdb":
        return f"{column} IN (SELECT unnest(CAST(:{name} AS BIGINT[])))"
    return f"{column} = ANY(:{name})"


def _plan(conn: Any, what: str, where: str) -> tuple[list[dict], list[dict]]:
    """The checkpoints selected, and the runs that go with them (all of a run's checkpoints)."""
    import sqlalchemy as sa

    q = conn.execute
    if what == "runs":
        run_ids = [int(r[0]) for r in q(sa.text(f"SELECT run_id FROM run_info WHERE ({where})"))]
        cks = q(
            sa.text(
                "SELECT checkpoint_id, run_id, run, step, kind, space, space_id FROM checkpoint_info "
                f"WHERE {_in(conn, 'run_id', 'r')} ORDER BY checkpoint_id"
            ),
            {"r": run_ids},
        )
    elif what == "checkpoints":
        cks = q(
            sa.text(
                "SELECT checkpoint_id, run_id, run, step, kind, space, space_id FROM checkpoint_info "
                f"WHERE ({where}) ORDER BY checkpoint_id"
            )
        )
        run_ids = []
    else:
        raise BadInput(f"rm removes runs or checkpoints, not '{what}'")
    ckpts = [dict(r._mapping) for r in cks]
    counts: dict[int, int] = {}
    for c in ckpts:
        counts[int(c["run_id"])] = counts.get(int(c["run_id"]), 0) + 1
    candidates = sorted(set(run_ids) | set(counts))
    runs = [
        dict(r._mapping)
        for r in q(
            sa.text(
                "SELECT run_id, run, kind, zoo, checkpoints FROM run_info "
                f"WHERE {_in(conn, 'run_id', 'r')} ORDER BY run_id"
            ),
            {"r": candidates},
        )
    ]
    # a run goes when it was selected, or when every one of its checkpoints was
    keep = set(run_ids)
    runs = [r for r in runs if r["run_id"] in keep or counts.get(r["run_id"]) == r["checkpoints"]]
    return runs, ckpts


#: (table, condition over the checkpoint ids ``:c``) of every row that mentions a checkpoint
DEPENDENTS = (
    ("metrics", ("checkpoint_id",)),
    ("predictions", ("checkpoint_id",)),
    ("neighbors", ("checkpoint_id", "neighbor_id")),
    ("similarity", ("checkpoint_id", "nearest_id", "max_iou_id")),
)


def _delete(conn: Any, runs: list[dict], ckpts: list[dict], count_only: bool) -> dict[str, int]:
    import sqlalchemy as sa

    ids = {"c": [int(c["checkpoint_id"]) for c in ckpts], "r": [int(r["run_id"]) for r in runs]}
    q = conn.execute
    rows: dict[str, int] = {}
    # relations every row of which mentions a removed checkpoint go with them
    emptied = []
    for table, cols in DEPENDENTS[2:]:
        cond = " OR ".join(_in(conn, c, "c") for c in cols)
        for rid, n in q(
            sa.text(f"SELECT relation_id, count(*) FROM {table} WHERE {cond} GROUP BY relation_id"),
            ids,
        ):
            emptied.append((int(rid), int(n)))
    gone: dict[int, int] = {}
    for rid, n in emptied:
        gone[rid] = gone.get(rid, 0) + n
    emptied = [
        rid
        for rid, n in sorted(gone.items())
        if n
        == q(
            sa.text(
                "SELECT (SELECT count(*) FROM neighbors WHERE relation_id = :i) + "
                "(SELECT count(*) FROM similarity WHERE relation_id = :i)"
            ),
            {"i": rid},
        ).scalar()
    ]
    for table, cols in DEPENDENTS:
        cond = " OR ".join(_in(conn, c, "c") for c in cols)
        rows[table] = int(q(sa.text(f"SELECT count(*) FROM {table} WHERE {cond}"), ids).scalar())
        if not count_only:
            q(sa.text(f"DELETE FROM {table} WHERE {cond}"), ids)
    rows["relations"] = len(emptied)
    rows["reference_sets"] = int(
        q(
            sa.text(f"SELECT count(*) FROM reference_sets WHERE {_in(conn, 'checkpoint_id', 'c')}"),
            ids,
        ).scalar()
    )
    rows["run_tags"] = int(
        q(sa.text(f"SELECT count(*) FROM run_tags WHERE {_in(conn, 'run_id', 'r')}"), ids).scalar()
    )
    if count_only:
        return rows
    if emptied:
        q(sa.text(f"DELETE FROM relations WHERE {_in(conn, 'id', 'e')}"), {"e": emptied})
    q(
        sa.text(
            "UPDATE generator_runs SET model_checkpoint_id = NULL WHERE "
            + _in(conn, "model_checkpoint_id", "c")
        ),
        ids,
    )
    q(sa.text(f"DELETE FROM reference_sets WHERE {_in(conn, 'checkpoint_id', 'c')}"), ids)
    q(sa.text(f"DELETE FROM checkpoints WHERE {_in(conn, 'id', 'c')}"), ids)
    _forget_family(conn, ids, {int(c["space_id"]) for c in ckpts})
    q(sa.text(f"DELETE FROM run_tags WHERE {_in(conn, 'run_id', 'r')}"), ids)
    q(sa.text(f"DELETE FROM runs WHERE {_in(conn, 'id', 'r')}"), ids)
    return rows


def _forget_family(conn: Any, ids: dict, spaces: set[int]) -> None:
    """Lineage of removed checkpoints, and ``family_rows`` of stored rows nothing uses any more
    (no checkpoint, not the parent of a live delta row): the reclaim then frees those rows, and
    a row position reused later never inherits a dead row's delta record."""
    import sqlalchemy as sa

    from wdb.store.family import live_rows

    conn.execute(sa.text(f"DELETE FROM lineage WHERE {_in(conn, 'child_id', 'c')}"), ids)
    for space in sorted(spaces):
        live = live_rows(conn, space)
        stored = conn.execute(
            sa.text("SELECT row FROM family_rows WHERE space_id = :s"), {"s": space}
        )
        dead = [int(r) for (r,) in stored if int(r) not in live]
        if dead:
            conn.execute(
                sa.text(f"DELETE FROM family_rows WHERE space_id = :s AND {_in(conn, 'row', 'd')}"),
                {"s": space, "d": dead},
            )


class Housekeeping:
    """``rm``, ``tag``, ``untag``, ``note`` and ``tags`` of :class:`wdb.db.Database`."""

    catalog: Any
    sql: Any
    selection: Any
    write_lock: Any

    def rm(self, where: str, what: str = "runs", yes: bool = False) -> RemoveReport:
        """Remove the runs (``what="runs"``, ``where`` over ``run_info``) or checkpoints
        (``what="checkpoints"``, ``where`` over ``checkpoint_info``) selected, with every row
        that mentions them, then reclaim their bytes; without ``yes`` only report what would
        go (see the module docstring)."""
        from wdb.store.reclaim import reclaim

        where = self.selection(where, "--where")
        if not where:
            raise BadInput("rm needs --where (to remove everything, say --where TRUE)")
        report = RemoveReport(dry_run=not yes)
        if not yes:
            with self.catalog.begin() as conn:
                report.runs, report.checkpoints = _plan(conn, what, where)
                report.rows = _delete(conn, report.runs, report.checkpoints, count_only=True)
            return report
        with self.write_lock():
            with self.catalog.begin() as conn:
                report.runs, report.checkpoints = _plan(conn, what, where)
                report.rows = _delete(conn, report.runs, report.checkpoints, count_only=False)
            report.reclaimed = reclaim(self, lock=False)
        return report

    def _run_id(self, run: str) -> int:
        rows = self.sql("SELECT id FROM runs WHERE name = :n", {"n": run})
        if not rows:
            raise NotFound(f"run '{run}' not found (see `wdb ls runs`)")
        return int(rows[0]["id"])

    def tag(self, run: str, tags: dict[str, Any] | None = None, **more: Any) -> dict[str, str]:
        """Set ``key=value`` tags on a run (a value replaces the key's old one); returns all its
        tags. Values are stored as text; filter with ``SELECT ... FROM run_tags``."""
        import sqlalchemy as sa

        from wdb.catalog.schema import run_tags

        new = {str(k): None if v is None else str(v) for k, v in {**(tags or {}), **more}.items()}
        if any(not k or "=" in k for k in new):
            raise BadInput(f"tag keys must be non-empty and without '=': {sorted(new)}")
        rid = self._run_id(run)
        with self.write_lock(), self.catalog.begin() as conn:
            have = {
                r[0]
                for r in conn.execute(sa.select(run_tags.c.key).where(run_tags.c.run_id == rid))
            }
            for k, v in new.items():
                if k in have:  # an UPDATE, not DELETE + INSERT of one key (a DuckDB trap)
                    conn.execute(
                        sa.update(run_tags)
                        .where(run_tags.c.run_id == rid, run_tags.c.key == k)
                        .values(value=v)
                    )
                else:
                    conn.execute(run_tags.insert().values(run_id=rid, key=k, value=v))
        return self.tags(run)

    def untag(self, run: str, *keys: str) -> dict[str, str]:
        """Remove tags from a run; returns the tags left."""
        import sqlalchemy as sa

        from wdb.catalog.schema import run_tags

        rid = self._run_id(run)
        with self.write_lock(), self.catalog.begin() as conn:
            conn.execute(
                sa.delete(run_tags).where(run_tags.c.run_id == rid, run_tags.c.key.in_(keys))
            )
        return self.tags(run)

    def tags(self, run: str) -> dict[str, str]:
        """A run's tags."""
        rid = self._run_id(run)
        rows = self.sql(
            "SELECT key, value FROM run_tags WHERE run_id = :r ORDER BY key", {"r": rid}
        )
        return {r["key"]: r["value"] for r in rows}

    def note(self, run: str, text: str | None) -> None:
        """Set (or with None clear) a run's note, shown by ``wdb ls runs`` and ``run_info``."""
        import sqlalchemy as sa

        from wdb.catalog.schema import runs

        rid = self._run_id(run)
        with self.write_lock(), self.catalog.begin() as conn:
            conn.execute(sa.update(runs).where(runs.c.id == rid).values(note=text))
