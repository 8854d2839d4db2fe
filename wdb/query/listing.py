"""Listings of runs and checkpoints: the ``Database`` methods that read rows for people.

``Listings`` is a mixin of :class:`wdb.db.Database` (kept here so that ``db.py`` stays the thin
facade it is). Two kinds of answer:

- ``runs`` / ``run`` / ``checkpoints`` / ``checkpoint`` / ``checkpoint_table``: ``list[dict]``,
  what the CLI and the library's own code use;
- ``search_runs`` / ``search_checkpoints``: a :class:`Listing` (still a sequence of dicts) with
  ``.df()`` (pandas) and ``.pl()`` (polars), the run config flattened into ``params.<key>``
  columns and metrics into ``metrics.<name>`` columns, as ``mlflow.search_runs`` does, and tags
  into ``tags.<key>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from wdb.errors import NotFound, WdbError

#: the columns ``search_checkpoints`` keeps from ``checkpoint_info``
CHECKPOINT_COLUMNS = ("checkpoint_id", "run", "step", "kind", "zoo", "space", "split", "created_at")
#: the columns ``search_runs`` keeps from ``run_info``
RUN_COLUMNS = (
    "run_id",
    "run",
    "zoo",
    "kind",
    "generator_run_id",
    "checkpoints",
    "first_step",
    "last_step",
    "note",
    "source",
    "created_at",
)


class Listing(Sequence[dict]):
    """Rows as dicts (a sequence: ``len``, index, iterate) that also give data frames."""

    def __init__(self, rows: list[dict], columns: Sequence[str]) -> None:
        self.rows = rows
        self.columns = list(columns)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: Any) -> Any:
        return self.rows[i]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows)

    def __repr__(self) -> str:
        return f"<Listing of {len(self.rows)} rows: {', '.join(self.columns[:8])}, ...>"

    def df(self) -> Any:
        """A pandas DataFrame, one column per key (missing values NaN/None)."""
        import pandas as pd

        return pd.DataFrame.from_records(self.rows, columns=self.columns)

    def pl(self) -> Any:
        """A polars DataFrame (polars is optional: ``pip install polars``)."""
        try:
            import polars
        except ImportError:
            raise WdbError(
                "Listing.pl() needs polars, which is not installed: `pip install polars` "
                "(or use .df() for pandas)"
            ) from None
        data = {c: [r.get(c) for r in self.rows] for c in self.columns}
        return polars.DataFrame(data, strict=False)


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Nested dicts → dotted keys under ``prefix`` (``{"opt": {"lr": 1}}`` → ``params.opt.lr``);
    lists and scalars are kept as they are."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def _config(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {"params": text}
    return flatten(data, "params") if isinstance(data, Mapping) else {"params": data}


def _in(db: Any, column: str) -> str:
    if db.catalog.duckdb_file:
        return f"{column} IN (SELECT unnest(CAST(:ids AS BIGINT[])))"
    return f"{column} = ANY(:ids)"


def checkpoint_metrics(db: Any, ids: Sequence[int]) -> dict[int, dict[str, float]]:
    """Per checkpoint, ``metrics.<name>`` → value: a metric wdb computed beats one the source
    reported (eval set ``reported:*``), a newer eval set beats an older one (the rule of the
    ``checkpoint_metrics`` view, applied to every metric name)."""
    ids = sorted({int(i) for i in ids})
    out: dict[int, dict[str, float]] = {i: {} for i in ids}
    if not ids:
        return out
    rows = db.sql(
        "SELECT m.checkpoint_id, m.name, m.value, m.eval_set_id, e.split FROM metrics m "
        f"JOIN eval_sets e ON e.id = m.eval_set_id WHERE {_in(db, 'm.checkpoint_id')}",
        {"ids": ids},
    )
    rank: dict[tuple[int, str], tuple] = {}
    for r in rows:
        key = (int(r["checkpoint_id"]), r["name"])
        score = (r["split"] != "reported", int(r["eval_set_id"]))
        if key not in rank or score > rank[key]:
            rank[key] = score
            out[key[0]][f"metrics.{r['name']}"] = r["value"]
    return out


def _tags(db: Any, run_ids: Sequence[int]) -> dict[int, dict[str, str]]:
    run_ids = sorted({int(i) for i in run_ids})
    out: dict[int, dict[str, str]] = {i: {} for i in run_ids}
    if run_ids:
        for r in db.sql(
            f"SELECT run_id, key, value FROM run_tags WHERE {_in(db, 'run_id')}", {"ids": run_ids}
        ):
            out[int(r["run_id"])][f"tags.{r['key']}"] = r["value"]
    return out


def _columns(base: Sequence[str], rows: list[dict]) -> list[str]:
    extra = {k for r in rows for k in r if k not in base}
    order = ("tags.", "params.", "metrics.")
    return [*base, *sorted(extra, key=lambda k: (order.index(k[: k.index(".") + 1]), k))]


class Listings:
    """Listing methods of :class:`wdb.db.Database` (``self`` is the database)."""

    sql: Any
    selection: Any

    def runs(
        self, where: str | None = None, params: dict | None = None, what: str = "selection"
    ) -> list[dict]:
        """Runs with their checkpoint counts; ``where`` filters over ``runs`` columns (``what``
        names it in errors, e.g. ``--where``)."""
        where = self.selection(where, what)
        clause = f"WHERE ({where})" if where else ""
        return self.sql(
            "SELECT * FROM (SELECT r.id AS run_id, r.name AS run, r.zoo, r.kind, "
            "r.generator_run_id, count(c.id) AS checkpoints, min(c.step) AS first_step, "
            "max(c.step) AS last_step, r.config, r.source "
            "FROM runs r LEFT JOIN checkpoints c ON c.run_id = r.id "
            "GROUP BY r.id, r.name, r.zoo, r.kind, r.generator_run_id, r.config, r.source) "
            f"AS runs {clause} ORDER BY run_id",
            params,
            what=f"{what} {where.strip()!r}" if where else "SQL",
        )

    def run(self, name: str) -> dict:
        rows = self.runs("run = :name", {"name": name})
        if not rows:
            raise NotFound(f"run '{name}' not found (see `wdb ls runs`)")
        return rows[0]

    def checkpoints(
        self, where: str | None = None, params: dict | None = None, what: str = "selection"
    ) -> list[dict]:
        """Checkpoints as rows of the ``checkpoint_info`` view, filtered by a SQL ``where``
        (``what`` names it in errors, e.g. ``--train``)."""
        where = self.selection(where, what)
        clause = f"WHERE ({where})" if where else ""
        label = f"{what} {where.strip()!r}" if where else "SQL"
        return self.sql(
            f"SELECT * FROM checkpoint_info {clause} ORDER BY checkpoint_id", params, what=label
        )

    def checkpoint(self, run: str, step: int | None = None) -> dict:
        """One checkpoint of a run: the given step, or its last one."""
        rows = self.checkpoints("run = :run", {"run": run})
        if not rows:
            self.run(run)  # raises NotFound for an unknown run
            raise NotFound(f"run '{run}' has no checkpoints")
        if step is None:
            return max(rows, key=lambda r: r["step"])
        for r in rows:
            if r["step"] == step:
                return r
        steps = sorted({r["step"] for r in rows})
        raise NotFound(f"run '{run}' has no step {step} (steps: {steps[:10]}...)")

    def checkpoint_table(self, where: str | None = None, params: dict | None = None) -> list[dict]:
        """Checkpoints with one column per metric, for humans (``wdb show``).

        Metrics computed by ``wdb evaluate`` keep their name; metrics a source reported at ingest
        (eval set ``reported:*``) are named ``reported_<name>`` when a computed one of the same name
        exists in the result, else plain ``<name>``.
        """
        base = self.checkpoints(where, params)
        where = self.selection(where)
        if not base:
            return []
        ids = [r["checkpoint_id"] for r in base]
        mrows = self.sql(
            "SELECT m.checkpoint_id, m.name, m.value, e.name AS eval_set FROM metrics m "
            "JOIN eval_sets e ON e.id = m.eval_set_id WHERE m.checkpoint_id IN "
            "(SELECT checkpoint_id FROM checkpoint_info WHERE " + (where or "TRUE") + ")",
            params,
        )
        computed = {m["name"] for m in mrows if not m["eval_set"].startswith("reported:")}
        cols: dict[int, dict] = {i: {} for i in ids}
        for m in mrows:
            name = m["name"]
            if m["eval_set"].startswith("reported:") and name in computed:
                name = f"reported_{name}"
            cols[m["checkpoint_id"]][name] = m["value"]
        names = sorted({k for c in cols.values() for k in c})
        keep = ("checkpoint_id", "run", "step", "kind", "space", "split")
        return [
            {**{k: r[k] for k in keep}, **{n: cols[r["checkpoint_id"]].get(n) for n in names}}
            for r in base
        ]

    def search_runs(self, where: str | None = None, params: dict | None = None) -> Listing:
        """Runs as a :class:`Listing`, one row per run: ``run_info`` columns (``where`` filters
        over them: run, zoo, kind, tags, note, ...), then ``tags.<key>``, ``params.<key>`` (the
        run config, nested keys dotted) and ``metrics.<name>`` of the run's last checkpoint."""
        where = self.selection(where, "where")
        clause = f"WHERE ({where})" if where else ""
        rows = self.sql(
            f"SELECT *, (SELECT max(c.id) FROM checkpoints c WHERE c.run_id = r.run_id AND "
            f"c.step = r.last_step) AS last_checkpoint_id FROM run_info r {clause} ORDER BY run_id",
            params,
            what=f"where {where.strip()!r}" if where else "SQL",
        )
        tags = _tags(self, [r["run_id"] for r in rows])
        last = [r["last_checkpoint_id"] for r in rows if r["last_checkpoint_id"] is not None]
        mets = checkpoint_metrics(self, last)
        out = []
        for r in rows:
            row = {c: r[c] for c in RUN_COLUMNS}
            row.update(tags[int(r["run_id"])])
            row.update(_config(r["config"]))
            if r["last_checkpoint_id"] is not None:
                row.update(mets[int(r["last_checkpoint_id"])])
            out.append(row)
        return Listing(out, _columns(RUN_COLUMNS, out))

    def search_checkpoints(self, where: str | None = None, params: dict | None = None) -> Listing:
        """Checkpoints as a :class:`Listing`, one row per checkpoint: ``checkpoint_info``
        columns (``where`` filters over the whole view), then its run's ``tags.<key>`` and
        ``params.<key>``, and its own ``metrics.<name>``."""
        base = self.checkpoints(where, params, what="where")
        run_ids = sorted({int(r["run_id"]) for r in base})
        configs: dict[int, dict] = {}
        if run_ids:
            for r in self.sql(
                f"SELECT id, config FROM runs WHERE {_in(self, 'id')}", {"ids": run_ids}
            ):
                configs[int(r["id"])] = _config(r["config"])
        tags = _tags(self, run_ids)
        mets = checkpoint_metrics(self, [r["checkpoint_id"] for r in base])
        out = []
        for r in base:
            row = {c: r[c] for c in CHECKPOINT_COLUMNS}
            row.update(tags[int(r["run_id"])])
            row.update(configs[int(r["run_id"])])
            row.update(mets[int(r["checkpoint_id"])])
            out.append(row)
        return Listing(out, _columns(CHECKPOINT_COLUMNS, out))
