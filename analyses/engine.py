"""The analysis engine: spec → selections → relations → tables → figures (+ a result record).

``run(db, "memorization", method="pdiff", out="report/")`` resolves the method's context (its
latest finished generator run, the training ids it recorded, the baselines in the same weight
space), materialises every selection, relation and table of the spec as ``a_<spec>_<method>_*``
catalog tables, draws every figure from its table, and writes ``<out>/<spec>_<method>.json``
(tables with their SQL and a preview, figures with their data table) for the report.

Relations that are neighbour / similarity / shape-distance computations go through
``analyses.relations`` (wdb's query engines). The others here only fetch bytes the catalog cannot
hold in SQL (weights at given indices, decision regions, stored point clouds, a t-SNE embedding).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analyses import hints
from analyses import relations as rel
from analyses.spec import Spec, fill, load, why_not
from wdb.plugin import NotFound, WdbError, json_ids


# -- catalog helpers --------------------------------------------------------------------------
def table_name(spec: str, method: str | None, name: str) -> str:
    """``a_<spec>_<method>_<name>``, restricted to ``[a-z0-9_]``."""
    raw = f"a_{spec}_{method or 'all'}_{name}"
    return re.sub(r"[^a-z0-9_]", "_", raw.lower())


def create_table_as(db, name: str, sql: str) -> None:
    """Replace table ``name`` with the rows of ``sql``, in one transaction on any catalog."""
    import sqlalchemy as sa

    from wdb.plugin import replace_table_sql

    with db.catalog.begin() as conn:
        for stmt in replace_table_sql(db, name, sql):
            conn.execute(sa.text(stmt))


def write_table(db, name: str, columns: dict[str, Any]) -> None:
    """Replace table ``name`` with the given columns (equal-length arrays/lists).

    DuckDB gets the whole frame at once through a registered pandas DataFrame (500k rows in well
    under a second); other catalogs get a plain ``executemany`` insert.
    """
    import pandas as pd

    df = pd.DataFrame({k: np.asarray(v) for k, v in columns.items()})
    if db.catalog.duckdb_file is not None:
        with db.catalog.begin() as conn:
            raw = conn.connection.driver_connection
            raw.register("_wdb_frame", df)
            try:
                raw.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _wdb_frame")
            finally:
                raw.unregister("_wdb_frame")
        return
    import sqlalchemy as sa

    cols = [sa.Column(c, sa.Double if df[c].dtype.kind == "f" else sa.BigInteger) for c in df]
    for c in cols:
        if df[c.name].dtype.kind == "O":
            c.type = sa.Text()
    table = sa.Table(name, sa.MetaData(), *cols)
    with db.catalog.begin() as conn:
        table.drop(conn, checkfirst=True)
        table.create(conn)
        if len(df):
            conn.execute(table.insert(), df.to_dict("records"))


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, str | bytes):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if not isinstance(v, int | float | str | type(None)):
        return str(v)
    return v


# -- context ----------------------------------------------------------------------------------
@dataclass
class Context:
    """What ``--method M`` means in this database: placeholders for the spec's SQL."""

    method: str | None
    gen: int = -1
    space_id: int = -1
    zoo: str = ""
    task: Any = None
    task_kind: str | None = None
    #: the kind of the run's samples: ``generated``, or ``baseline`` (noise, average, ...)
    sample_kind: str = "generated"
    #: the SQL selection the run trained on (for the commands a hint suggests)
    train_selection: str = ""
    baselines: dict[str, int] = field(default_factory=dict)
    sigmas: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: the catalog's SQL dialect (``wdb.catalog.dialect.name``): the placeholders' SQL is written for it
    dialect: str = "duckdb"
    #: the run's recorded reference set as a selection ("" when it recorded none), its size and
    #: description (``generator_runs.config['reference']``)
    reference: str = ""
    reference_size: int = 0
    reference_rule: str = ""

    def values(self) -> dict[str, Any]:
        v: dict[str, Any] = {
            "method": self.method or "",
            "gen": self.gen,
            "gen_kind": self.sample_kind,
            "space_id": self.space_id,
            "zoo": self.zoo.replace("'", "''"),
            "train_ids": json_ids(
                self.dialect, "g.train_ids", f"generator_runs g WHERE g.id = {self.gen}"
            ),
        }
        for k in ("noise_1", "noise_2", "average", "gaussian"):
            v[k] = self.baselines.get(k, -1)
        return v

    def record(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "generator_run": self.gen,
            "sample_kind": self.sample_kind,
            "baseline": self.sample_kind == "baseline",
            "train_selection": self.train_selection,
            "space_id": self.space_id,
            "zoo": self.zoo,
            "task": getattr(self.task, "name", None),
            "task_kind": self.task_kind,
            "baselines": self.baselines,
            "sigmas": self.sigmas,
            "reference": self.reference,
            "reference_size": self.reference_size,
            "reference_rule": self.reference_rule,
            "notes": self.notes,
        }


def methods_with_data(db, kind: str = "generated") -> list[str]:
    """Methods with a finished run that wrote samples of ``kind`` (``generated``: generators;
    ``baseline``: noise, average, ...), in the paper's order."""
    rows = db.sql(
        "SELECT DISTINCT g.method FROM generator_runs g WHERE g.status = 'done' AND EXISTS "
        "(SELECT 1 FROM runs r WHERE r.generator_run_id = g.id AND r.kind = :k)",
        {"k": kind},
    )
    from wdb.plugin import baseline_methods, method_info

    found = {r["method"] for r in rows}
    if kind == "generated":
        found -= set(baseline_methods())

    def order(m: str) -> tuple[int, str]:
        try:
            return (method_info(m).order, m)
        except WdbError:  # a generator run from a file no longer at hand: still analysable
            return (10**6, m)

    return sorted(found, key=order)


def _sigma(config: dict) -> float:
    for key in ("sigma_used", "sigma_effective", "sigma"):
        if isinstance(config.get(key), int | float):
            return float(config[key])
    return float("nan")


def resolve_context(db, method: str | None, task: Any = None) -> Context:
    """The generator run, space, zoo, baselines and task of ``method``."""
    from wdb.plugin import dialect_name

    ctx = Context(method, dialect=dialect_name(db))
    if method is None:
        return ctx
    runs = db.sql(
        "SELECT g.id, g.train_ids, g.train_selection, (SELECT min(r.kind) FROM runs r WHERE "
        "r.generator_run_id = g.id AND r.kind IN ('generated', 'baseline')) AS sample_kind "
        "FROM generator_runs g WHERE g.method = :m AND g.status = 'done' AND EXISTS (SELECT 1 "
        "FROM runs r WHERE r.generator_run_id = g.id AND r.kind IN ('generated', 'baseline')) "
        "ORDER BY g.id DESC LIMIT 1",
        {"m": method},
    )
    if not runs:
        from analyses import hints

        raise NotFound(
            f"no finished generator run of method '{method}' with samples" + hints.nothing(db)
        )
    ctx.gen = int(runs[0]["id"])
    _recorded_reference(db, ctx)
    # 'baseline' sorts before 'generated': a run with both kinds (none today) counts as generated
    ctx.sample_kind = "generated" if runs[0]["sample_kind"] == "generated" else "baseline"
    ctx.train_selection = runs[0]["train_selection"] or ""
    one = db.sql(
        "SELECT space_id FROM checkpoint_info WHERE generator_run_id = :g AND kind = :k LIMIT 1",
        {"g": ctx.gen, "k": ctx.sample_kind},
    )
    ctx.space_id = int(one[0]["space_id"])
    train_ids = json.loads(runs[0]["train_ids"] or "[]")
    if train_ids:
        z = db.sql(
            "SELECT zoo, count(*) AS n FROM checkpoint_info WHERE checkpoint_id IN "
            f"({','.join(str(int(i)) for i in train_ids[:2000])}) GROUP BY zoo ORDER BY n DESC"
        )
        ctx.zoo = (z[0]["zoo"] or "") if z else ""
    from wdb.plugin import baseline_methods

    base = db.sql(
        "SELECT g.id, g.method, g.config FROM generator_runs g WHERE g.status = 'done' "
        "AND g.method IN (SELECT unnest(CAST(:b AS VARCHAR[]))) AND EXISTS (SELECT 1 FROM "
        "checkpoint_info c WHERE c.generator_run_id = g.id AND c.space_id = :s) ORDER BY g.id DESC",
        {"s": ctx.space_id, "b": baseline_methods()},
    )
    noise: dict[float, tuple[int, float]] = {}  # σ actually used -> (run id, σ as configured)
    for b in base:
        if int(b["id"]) == ctx.gen:  # a baseline analysed as the method: not its own comparison
            if b["method"] == "noise":
                ctx.sigmas["generated"] = float(json.loads(b["config"] or "{}").get("sigma", "nan"))
            continue
        cfg = json.loads(b["config"] or "{}")
        if b["method"] == "noise":
            nominal = float(cfg.get("sigma", float("nan")))
            noise.setdefault(_sigma(cfg), (int(b["id"]), nominal))
        else:
            ctx.baselines.setdefault(b["method"], int(b["id"]))
    for i, s in enumerate(sorted(noise)[:2]):
        ctx.baselines[f"noise_{i + 1}"] = noise[s][0]
        ctx.sigmas[f"noise_{i + 1}"] = noise[s][1]
        if noise[s][1] != s:
            ctx.notes.append(
                f"noise_{i + 1}: σ={noise[s][1]:g} rescaled to {s:.4g} in weight units"
            )
    if task is None:
        try:
            from wdb.plugin import task_for_space

            task = task_for_space(db.space(ctx.space_id), db)
        except (ImportError, WdbError) as exc:  # tasks not available: figures needing one skip
            ctx.notes.append(f"no task for space {ctx.space_id}: {exc}")
        if task is None:
            ctx.notes.append(
                f"no task knows space {ctx.space_id}: figures that need one are skipped "
                "(evaluate the checkpoints with `wdb evaluate --task NAME|FILE.py` first)"
            )
    ctx.task = task
    ctx.task_kind = getattr(task, "kind", None) if task is not None else None
    return ctx


def _recorded_reference(db, ctx: Context) -> None:
    """The reference set the generator run recorded (wdb schema 0009), if any."""
    from wdb.plugin import recorded_references, reference_selection

    n = recorded_references(db, [ctx.gen]).get(ctx.gen, 0)
    if not n:
        return
    ctx.reference, ctx.reference_size = reference_selection(ctx.gen), n
    cfg = db.sql("SELECT config FROM generator_runs WHERE id = :g", {"g": ctx.gen})
    try:
        ctx.reference_rule = str(json.loads(cfg[0]["config"] or "{}").get("reference") or "")
    except (TypeError, ValueError, IndexError):
        ctx.reference_rule = ""


def _use_reference(db, spec: Spec, sel_sql: dict[str, str], ctx: Context) -> None:
    """Let the run's recorded reference set stand for ``spec.reference``; a note says which
    reference the analysis used."""
    name = spec.reference
    if not name or name not in sel_sql or ctx.method is None:
        return
    if ctx.reference:
        sel_sql[name] = db.selection(ctx.reference, f"the reference of generator run {ctx.gen}")
        rule = f": {ctx.reference_rule}" if ctx.reference_rule else f" ({ctx.reference_size})"
        ctx.notes.append(
            f"reference ('{name}'): the reference set generator run {ctx.gen} recorded{rule}"
        )
    else:
        ctx.notes.append(
            f"reference ('{name}'): {sel_sql[name]} (generator run {ctx.gen} recorded no "
            "reference set: made before wdb schema 0009)"
        )


# -- relations computed here (figure data from the stores) ------------------------------------
def _rows_sql(db, sql: str) -> list[dict]:
    return db.sql(sql)


def _values(db, item: dict, rows: list[dict], seed: int) -> dict[str, Any]:
    ids = sorted({int(r["checkpoint_id"]) for r in rows})
    W = db.weights(ids)
    rng = np.random.default_rng(seed)
    n = min(int(item.get("n_params", 64)), W.shape[1])
    idx = np.sort(rng.choice(W.shape[1], size=n, replace=False))
    pos = {c: i for i, c in enumerate(ids)}
    cols: dict[str, list] = {k: [] for k in rows[0]} if rows else {}
    cols["param_index"], cols["value"] = [], []
    for r in rows:
        vals = W[pos[int(r["checkpoint_id"])], idx]
        for k in rows[0]:
            cols[k] += [r[k]] * n
        cols["param_index"] += idx.tolist()
        cols["value"] += vals.astype(np.float64).tolist()
    return cols


def _tsne(db, item: dict, rows: list[dict], seed: int) -> dict[str, Any]:
    from sklearn.manifold import TSNE

    ids = [int(r["checkpoint_id"]) for r in rows]
    W = db.weights(ids).astype(np.float64)
    perplexity = float(min(item.get("perplexity", 30), max(2, (len(ids) - 1) // 3)))
    # one thread (OpenMP oversubscription on a busy 2-core machine cost 25 s for 48 points) and
    # 300 iterations: 400 models in ~2.5 s
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        tsne = TSNE(2, perplexity=perplexity, random_state=seed, init="pca", max_iter=300)
        Z = tsne.fit_transform(W)
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    cols["x"], cols["y"] = Z[:, 0].tolist(), Z[:, 1].tolist()
    return cols


def _decision(db, item: dict, rows: list[dict], ctx: Context) -> dict[str, Any]:
    """Decision regions on the PCA plane of the standardised test images (as in Zeng et al. 2025)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    task = ctx.task
    X, _ = task.data(getattr(task, "eval_split", "test"))
    shape = X.shape[1:]
    flat = X.reshape(len(X), -1).astype(np.float64)
    scaler = StandardScaler().fit(flat)
    pca = PCA(2, random_state=0).fit(scaler.transform(flat))
    Z = pca.transform(scaler.transform(flat))
    g = int(item.get("grid", 300))
    pad = float(item.get("pad", 1.0))
    xs = np.linspace(Z[:, 0].min() - pad, Z[:, 0].max() + pad, g)
    ys = np.linspace(Z[:, 1].min() - pad, Z[:, 1].max() + pad, g)
    GX, GY = np.meshgrid(xs, ys)
    grid = np.stack([GX.ravel(), GY.ravel()], 1)
    images = scaler.inverse_transform(pca.inverse_transform(grid)).astype(np.float32)
    images = images.reshape(len(grid), *shape)
    ids = [int(r["checkpoint_id"]) for r in rows]
    W = db.weights(ids)
    context = None
    if hasattr(task, "prepare"):  # e.g. mnist-bn finds each row's base model through it
        info = {
            c["checkpoint_id"]: c
            for c in db.checkpoints(f"checkpoint_id IN ({','.join(map(str, set(ids)))})")
        }
        context = task.prepare(db, [info[i] for i in ids])
    preds = []
    chunk = int(item.get("chunk", 10000))
    for s in range(0, len(images), chunk):
        p = (
            task.predict(W, images[s : s + chunk], context)
            if context
            else task.predict(W, images[s : s + chunk])
        )
        preds.append(np.asarray(p))
    P = np.concatenate(preds, axis=1)  # [n_models, g*g]
    cols: dict[str, list] = {k: [] for k in rows[0]}
    for r in rows:
        for k in rows[0]:
            cols[k] += [r[k]] * len(grid)
    n = len(rows)
    cols["gx"] = np.tile(grid[:, 0], n)
    cols["gy"] = np.tile(grid[:, 1], n)
    cols["pred"] = P.reshape(-1).astype(np.int64)
    return cols


def _points(db, item: dict, rows: list[dict]) -> dict[str, Any]:
    ids = [int(r["checkpoint_id"]) for r in rows]
    keep, P = rel.stored_points(db, ids)
    pos = {c: i for i, c in enumerate(keep)}
    m = int(item.get("n_points", 1024))
    cols: dict[str, list] = {k: [] for k in rows[0]}
    for k in ("i", "x", "y", "z"):
        cols[k] = []
    for r in rows:
        c = int(r["checkpoint_id"])
        if c not in pos:
            continue
        p = P[pos[c]][:m]
        p = p[np.isfinite(p).all(1)]
        for k in rows[0]:
            cols[k] += [r[k]] * len(p)
        cols["i"] += list(range(len(p)))
        cols["x"] += p[:, 0].astype(float).tolist()
        cols["y"] += p[:, 1].astype(float).tolist()
        cols["z"] += p[:, 2].astype(float).tolist()
    return cols


# -- the run ----------------------------------------------------------------------------------
def _target_filter(sql: str, limit: int | None) -> str:
    if not limit:
        return sql
    return (
        f"({sql}) AND checkpoint_id IN (SELECT checkpoint_id FROM checkpoint_info "
        f"WHERE ({sql}) ORDER BY checkpoint_id LIMIT {int(limit)})"
    )


def _as_list(v: Any) -> list[str]:
    return [v] if isinstance(v, str) else list(v or [])


def _spec_table(db, spec: Spec, item: str, name: str, sql: str) -> None:
    """Materialise a spec's SQL as table ``name``; a database error becomes one line naming the
    spec, the item and the database's message (not a 60-line traceback)."""
    from wdb.plugin import BadInput

    try:
        create_table_as(db, name, sql)
    except WdbError:
        raise
    except Exception as exc:  # noqa: BLE001 - the database's own error, whatever its type
        text = str(getattr(exc, "orig", None) or exc).strip()
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
        raise BadInput(f"{spec.path or spec.name}: table '{item}': {first}") from None


def run(
    db,
    spec: str | Path | Spec,
    method: str | None = None,
    out: str | Path = "report",
    task: Any = None,
    seed: int = 0,
    figures: bool = True,
    options: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """Run one spec for one method; returns (and writes) the result record.

    ``options`` overrides fields of named relations/tables/figures for this run, e.g.
    ``{"boundary": {"grid": 60}}`` for a coarser decision grid in tests.
    """
    from analyses import figures as figs

    t0 = time.perf_counter()
    spec = load(spec, method) if not isinstance(spec, Spec) else spec.for_method(method)
    for item in [*spec.relations, *spec.tables, *spec.figures]:
        item.update((options or {}).get(item.get("name"), {}))
    from wdb.plugin import recall_sources

    recall_sources(db)
    ctx = resolve_context(db, method, task)
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    values = ctx.values()
    tn = {}  # short name -> catalog table name

    def name_of(short: str) -> str:
        tn[short] = table_name(spec.name, method, short)
        return tn[short]

    record: dict[str, Any] = {
        "spec": spec.name,
        "title": spec.title,
        "description": spec.description,
        "method": method,
        "context": ctx.record(),
        "tables": [],
        "figures": [],
        "skipped": [],
    }

    def add_table(short: str, sql: str, description: str = "", kind: str = "table") -> None:
        full = tn[short]
        n = db.sql(f"SELECT count(*) AS n FROM {full}")[0]["n"]
        prev = db.sql(f"SELECT * FROM {full} LIMIT 8")
        record["tables"].append(
            {
                "name": full,
                "short": short,
                "kind": kind,
                "sql": sql.strip(),
                "description": description,
                "n_rows": int(n),
                "columns": list(prev[0].keys()) if prev else [],
                "preview": [{k: _plain(v) for k, v in r.items()} for r in prev],
            }
        )

    # 1. selections
    sel_sql = {
        k: db.selection(fill(v, values), f"{spec.path or spec.name}: selection '{k}'")
        for k, v in spec.selections.items()
    }
    _use_reference(db, spec, sel_sql, ctx)
    parts = [
        f"SELECT '{k}' AS selection, checkpoint_id FROM checkpoint_info WHERE ({v})"
        for k, v in sel_sql.items()
    ]
    sel_table = name_of("selections")
    values["selections"] = sel_table
    select_all = " UNION ALL ".join(parts) if parts else "SELECT NULL AS selection, NULL AS ch"
    _spec_table(db, spec, "selections", sel_table, select_all)
    add_table(
        "selections",
        "\n".join(f"-- {k}: {v}" for k, v in sel_sql.items()) + "\n" + select_all,
        "one row per selected checkpoint",
        "selection",
    )
    counts = {
        r["selection"]: r["n"]
        for r in db.sql(f"SELECT selection, count(*) AS n FROM {sel_table} GROUP BY 1")
    }
    record["selection_counts"] = sel_counts = {k: int(counts.get(k, 0)) for k in sel_sql}
    used = _used_selections(spec, method, ctx.task_kind, set(sel_counts))
    record["empty_selections"] = {
        k: hints.empty_selection(k, ctx) for k, n in sel_counts.items() if not n and k in used
    }
    not_evaluated: dict[str, str] = {}

    # 2. relations
    for item in spec.relations:
        short, kind = item["name"], item["kind"]
        why = why_not(item, method, ctx.task_kind)
        if why:
            record["skipped"].append({"name": short, "why": why})
            continue
        full = name_of(short)
        values[short] = full
        try:
            sql = _relation(db, item, kind, full, sel_sql, values, ctx, seed)
        except (WdbError, ValueError, KeyError, IndexError) as exc:
            record["skipped"].append({"name": short, "why": f"{type(exc).__name__}: {exc}"})
            tn.pop(short, None)
            values.pop(short, None)
            continue
        if sql is None:
            record["skipped"].append({"name": short, "why": "no rows to compute from"})
            tn.pop(short, None)
            values.pop(short, None)
            continue
        add_table(short, sql, item.get("description", ""), f"relation:{kind}")
        if kind == "novelty":
            not_evaluated.update(hints.unevaluated(db, full, sel_counts))
            ctx.notes.extend(
                f"{short}: {why}" for g, why in not_evaluated.items() if g in sel_counts
            )

    # 3. tables
    for item in spec.tables:
        short = item["name"]
        why = why_not(item, method, ctx.task_kind)
        if why:
            if not item.get("methods"):  # other methods' tables are no news; a task gap is
                record["skipped"].append({"name": short, "why": why})
            continue
        missing = [
            m for m in _placeholders(item["sql"]) if m in _all_names(spec) and m not in values
        ]
        if missing:
            record["skipped"].append({"name": short, "why": f"needs {', '.join(missing)}"})
            continue
        full = name_of(short)
        sql = fill(item["sql"], values)
        _spec_table(db, spec, short, full, sql)
        values[short] = full
        add_table(short, sql, item.get("description", ""))

    # 4. figures
    if figures:
        for fig in spec.figures:
            why = why_not(fig, method, ctx.task_kind)
            if why:
                if not fig.get("methods"):
                    record["skipped"].append(
                        {
                            "name": fig["name"],
                            "figure": True,
                            "why": why,
                            "by_design": why.startswith("only for"),
                        }
                    )
                continue
            if fig["table"] not in tn:
                because = next(
                    (s["why"] for s in record["skipped"] if s["name"] == fig["table"]), ""
                )
                record["skipped"].append(
                    {
                        "name": fig["name"],
                        "figure": True,
                        "why": f"its table '{fig['table']}' was not computed"
                        + (f": {because}" if because else ""),
                    }
                )
                continue
            full = tn[fig["table"]]
            data = db.sql(f"SELECT * FROM {full}")
            table_sql = next((t["sql"] for t in record["tables"] if t["name"] == full), "")
            missing = []
            if not data or "selection" in data[0]:
                missing = hints.missing_groups(
                    hints.groups_of(table_sql, sel_counts),
                    {r["selection"] for r in data},
                    sel_counts,
                    not_evaluated,
                    ctx,
                )
            if not data:
                why = "; ".join(f"{m['group']}: {m['why']}" for m in missing)
                record["skipped"].append(
                    {
                        "name": fig["name"],
                        "figure": True,
                        "why": f"{full} is empty ({why})" if why else f"{full} is empty",
                    }
                )
                continue
            path = out / "figures" / f"{spec.name}_{method or 'all'}_{fig['name']}.png"
            shown = f"{method} (baseline)" if ctx.sample_kind == "baseline" else method or ""
            title = fill(fig.get("title", fig["name"]), {**values, "method": shown})
            opts = {k: v for k, v in fig.items() if k not in ("name", "kind", "table", "title")}
            opts.pop("when", None)
            opts.pop("methods", None)
            if missing and fig["kind"] in ("scatter", "histogram", "kde", "tsne"):
                opts["note"] = "not shown: " + "; ".join(
                    f"{figs.label(m['group'], ctx.record())}: {m['why']}" for m in missing
                )
            drawn = getattr(figs, fig["kind"])(
                data, path, title=title, context=ctx.record(), **opts
            )
            record["figures"].append(
                {
                    "name": fig["name"],
                    "kind": fig["kind"],
                    "title": title,
                    "caption": fig.get("caption", ""),
                    "path": str(path.relative_to(out)),
                    "table": full,
                    "sql": table_sql,
                    "axes": figs.LABELS.pop(str(drawn), []),
                    "missing": missing,
                }
            )
    record["engines"] = dict(rel.ENGINE)
    record["wall_time_s"] = round(time.perf_counter() - t0, 2)
    (out / f"{spec.name}_{method or 'all'}.json").write_text(
        json.dumps(record, indent=1, default=str)
    )
    return record


def _used_selections(spec: Spec, method: str | None, task_kind: str | None, names: set) -> set:
    """The selections some relation or table that applies to this method reads."""
    used: set[str] = set()
    for item in [*spec.relations, *spec.tables]:
        if why_not(item, method, task_kind):
            continue
        for key in ("targets", "reference"):
            used.update(_as_list(item.get(key)))
        used.update((item.get("references") or {}).values())
        used.update(hints.groups_of(item.get("rows", "") + item.get("sql", ""), {}))
    return used & names


def _placeholders(sql: str) -> list[str]:
    return re.findall(r"\{([a-z_][a-z0-9_]*)\}", sql)


def _all_names(spec: Spec) -> set[str]:
    return {r["name"] for r in spec.relations} | {t["name"] for t in spec.tables}


def _relation(
    db, item: dict, kind: str, full: str, sel_sql: dict, values: dict, ctx: Context, seed: int
) -> str | None:
    """Compute one relation into table ``full``; returns the SQL/description shown in the report."""
    if kind in ("novelty", "nearest", "chamfer"):
        targets = [t for t in _as_list(item.get("targets")) if t in sel_sql]
        counts = {
            t: db.sql(f"SELECT count(*) AS n FROM checkpoint_info WHERE {sel_sql[t]}")[0]["n"]
            for t in targets
        }
        targets = [t for t in targets if counts[t]]
        if not targets:
            return None
    if kind in ("novelty", "nearest"):
        ref = sel_sql[item.get("reference", "training")]
        metric = item.get("metric", "l2")
        ids = {}
        for t in targets:
            tsql = _target_filter(sel_sql[t], item.get("limit"))
            if kind == "novelty":
                ids[t] = rel.novelty(db, tsql, ref, metric=metric)
            else:
                ids[t] = rel.nearest(db, tsql, ref, k=int(item.get("k", 3)), metric=metric)
        src = "similarity" if kind == "novelty" else "neighbors"
        sql = " UNION ALL ".join(
            f"SELECT '{t}' AS selection, x.* FROM {src} x WHERE x.relation_id = {rid}"
            for t, rid in ids.items()
        )
        create_table_as(db, full, sql)
        return f"-- db.{kind}(targets=<selection>, reference={item.get('reference', 'training')!r}, metric={metric!r})\n{sql}"
    if kind == "chamfer":
        refs = {k: sel_sql[v] for k, v in item.get("references", {"train": "training"}).items()}
        cols: dict[str, list] = {"selection": [], "checkpoint_id": []}
        for r in refs:
            cols[f"min_chamfer_{r}"] = []
            cols[f"nearest_{r}_id"] = []
        for t in targets:
            tsql = _target_filter(sel_sql[t], item.get("limit"))
            res = {r: rel.shape_distances(db, tsql, rsql) for r, rsql in refs.items()}
            keys = sorted(set().union(*[set(v) for v in res.values()]))
            for c in keys:
                cols["selection"].append(t)
                cols["checkpoint_id"].append(c)
                for r in refs:
                    d, n = res[r].get(c, (float("nan"), -1))
                    cols[f"min_chamfer_{r}"].append(d)
                    cols[f"nearest_{r}_id"].append(n)
        if not cols["checkpoint_id"]:
            return None
        write_table(db, full, cols)
        return (
            "-- min Chamfer distance of each target's stored surface points to the reference "
            f"shapes ({', '.join(f'{k}: {v}' for k, v in refs.items())})"
        )
    rows_sql = fill(item["rows"], values)
    rows = _rows_sql(db, rows_sql)
    if not rows:
        return None
    if kind == "values":
        cols = _values(db, item, rows, seed + int(item.get("seed", 0)))
        note = f"-- weights at {item.get('n_params', 64)} random parameter indices of:\n"
    elif kind == "tsne":
        cols = _tsne(db, item, rows, seed)
        note = "-- 2-D t-SNE (sklearn) of the weights of:\n"
    elif kind == "decision":
        if ctx.task is None:
            raise WdbError("no task to run the models")
        cols = _decision(db, item, rows, ctx)
        note = (
            f"-- predicted class on a {item.get('grid', 300)}² PCA grid of the test images for:\n"
        )
    elif kind == "points":
        cols = _points(db, item, rows)
        if not cols["i"]:
            return None
        note = "-- stored surface points of:\n"
    else:  # pragma: no cover - validated by the spec loader
        raise WdbError(f"unknown relation kind {kind}")
    write_table(db, full, cols)
    return note + rows_sql
