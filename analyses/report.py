"""The report: one self-contained HTML file (figures as base64 data URIs, summary tables, the SQL
behind each) plus ``summary.md`` with a verdict per finding of the paper.

``build(db, out)`` collects every result record that ``analyses.engine.run`` and the experiments
wrote as ``<out>/*.json`` — so running analyses for several methods and then building once gives
one report — and writes ``<out>/index.html`` and ``<out>/summary.md``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import html
import json
from pathlib import Path
from typing import Any

from analyses import findings as fnd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.5em}figure{margin:1em 0;padding:.6em;border:1px solid #eee;border-radius:6px}
figure img{max-width:100%;display:block;margin:auto}figcaption{font-size:.9em;color:#444}
code,pre{font-family:ui-monospace,Menlo,monospace;font-size:.85em}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;border-radius:4px}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}th{background:#f0f0f0}
.v-reproduced{color:#1a7f37;font-weight:bold}.v-not{color:#cf222e;font-weight:bold}
.v-partially{color:#9a6700;font-weight:bold}.v-eval{color:#666;font-weight:bold}
.muted{color:#666;font-size:.9em}
figure.empty{background:#fffbe6;border-color:#e3c766}.missing{color:#9a6700}
nav.toc{background:#f6f8fa;padding:.4em 1em;border-radius:6px}nav.toc ul{margin:.2em 0}
"""

PAPER = 'Zeng et al. (2025), "Generative Modeling of Weights: Generalization or Memorization?"'


def _esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return _esc(v)


def _rows_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p class=muted>(no rows)</p>"
    cols = columns or list(rows[0].keys())
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def alt_text(f: dict) -> str:
    """An image's alt text: its title, then every panel's axis labels, colour bars and legend
    (what a reader without the picture, or a test, needs to know what is plotted against what)."""
    parts, seen = [f.get("title") or f.get("name", "")], set()
    for a in f.get("axes", []):
        if "colorbar" in a:
            text = f"colour bar: {a['colorbar'] or '(unlabelled)'}"
        else:
            text = f"x: {a.get('x') or '(unlabelled)'}; y: {a.get('y') or '(unlabelled)'}"
            if a.get("z"):
                text += f"; z: {a['z']}"
            if a.get("legend"):
                text += f"; legend: {', '.join(a['legend'])}"
        if text not in seen:
            seen.add(text)
            parts.append(text)
    return ". ".join(parts)


def anchor(*parts: Any) -> str:
    """An element id from its parts: lowercase letters, digits and dashes."""
    import re

    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts if p).lower()).strip("-")


def _vclass(verdict: str) -> str:
    if verdict.startswith("reproduced"):
        return "v-reproduced"
    if verdict.startswith("partially"):
        return "v-partially"
    if verdict.startswith("not reproduced"):
        return "v-not"
    return "v-eval"


def load_records(out: Path) -> tuple[list[dict], list[dict]]:
    """(analysis records, experiment records) found in ``out``."""
    analyses, experiments = [], []
    for p in sorted(Path(out).glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if "spec" in rec:
            analyses.append(rec)
        elif "experiment" in rec:
            experiments.append(rec)
    from wdb.plugin import method_info

    def order(method: str | None) -> int:
        return method_info(method).order if method else 0

    analyses.sort(key=lambda r: (r["spec"], order(r.get("method")), str(r.get("method"))))
    return analyses, experiments


def _section_tables(db, tables: list[dict], out: Path) -> str:
    parts = []
    for t in tables:
        rows = t.get("preview", [])
        if t.get("kind") == "table" and t.get("n_rows", 0) <= 30:
            with contextlib.suppress(Exception):  # a dropped table: show the stored preview
                rows = db.sql(f"SELECT * FROM {t['name']}")
        more = "" if t["n_rows"] <= len(rows) else f" (first {len(rows)} of {t['n_rows']} rows)"
        parts.append(
            f"<h4><code>{_esc(t['name'])}</code> <span class=muted>{_esc(t.get('kind'))}, "
            f"{t['n_rows']} rows{more}</span></h4><p>{_esc(t.get('description'))}</p>"
            + _rows_table(rows, t.get("columns") or None)
            + f"<details><summary>SQL</summary><pre>{_esc(t['sql'])}</pre></details>"
        )
    return "\n".join(parts)


def _figures(figs: list[dict], out: Path, key: str, skipped: list[dict] | None = None) -> str:
    parts = []
    for f in figs:
        p = out / f["path"]
        if not p.exists():
            continue
        missing = "".join(
            f"<br><span class=missing>not shown: {_esc(m['group'])}, {_esc(m['why'])}</span>"
            for m in f.get("missing", [])
        )
        parts.append(
            f"<figure id='{anchor(key, f['name'])}'>{_img(p, alt_text(f))}<figcaption>"
            f"<b>{_esc(f['title'])}</b> {_esc(f.get('caption'))}{missing}"
            f"<br>data: <code>SELECT * FROM {_esc(f['table'])}</code> · file "
            f"<code>{_esc(f['path'])}</code><details><summary>SQL behind it</summary>"
            f"<pre>{_esc(f.get('sql'))}</pre></details></figcaption></figure>"
        )
    for s in skipped or []:
        if s.get("figure") and not s.get("by_design"):
            parts.append(
                f"<figure class=empty id='{anchor(key, s['name'])}'><figcaption><b>"
                f"{_esc(s['name'])}: not drawn</b>, {_esc(s['why'])}</figcaption></figure>"
            )
    return "\n".join(parts)


def _contents(analyses: list[dict], experiments: list[dict]) -> str:
    """The contents list: findings, then each analysis and experiment with its figures."""
    items = ["<li><a href='#findings'>The paper's findings in this database</a></li>"]
    for rec in analyses:
        key = anchor(rec["spec"], rec.get("method"))
        figs = [(f["name"], f["title"]) for f in rec.get("figures", [])]
        figs += [
            (s["name"], f"{s['name']} (not drawn)")
            for s in rec.get("skipped", [])
            if s.get("figure") and not s.get("by_design")
        ]
        sub = "".join(f"<li><a href='#{anchor(key, n)}'>{_esc(t)}</a></li>" for n, t in figs)
        sub += f"<li><a href='#{key}-tables'>Tables</a></li>"
        items.append(f"<li><a href='#{key}'>{_esc(_heading(rec))}</a><ul>{sub}</ul></li>")
    for rec in experiments:
        key = anchor("experiment", rec["experiment"], rec.get("method"))
        items.append(
            f"<li><a href='#{key}'>Experiment: {_esc(rec['experiment'])} — "
            f"{_esc(rec.get('method'))}</a></li>"
        )
    return "<nav class=toc><b>Contents</b><ul>" + "".join(items) + "</ul></nav>"


def _heading(rec: dict) -> str:
    name = fnd.NAMES.get(rec.get("method"), rec.get("method"))
    if rec.get("context", {}).get("baseline"):
        name = f"{name} (a baseline, analysed as if it were a generator)"
    return f"{rec['title']} — {name}"


def build(db, out: str | Path, title: str = "wdb report: generalization or memorization?") -> dict:
    """Write ``index.html`` and ``summary.md`` into ``out``; returns their paths and verdicts."""
    from wdb.plugin import recall_sources

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recall_sources(db)  # generators run from files show under their own display names
    analyses, experiments = load_records(out)
    mem = [r for r in analyses if r["spec"] == "memorization" and r.get("method")]
    methods = [r["method"] for r in mem if not r.get("context", {}).get("baseline")]
    baselines = [r["method"] for r in mem if r.get("context", {}).get("baseline")]
    found = fnd.evaluate(db, methods, experiments)  # the findings are about generators only
    header = (
        f"Database: `{db.path}` · methods analysed: {', '.join(methods) or 'none'} · "
        + (
            f"baselines analysed on their own (not part of any finding): {', '.join(baselines)} · "
            if baselines
            else ""
        )
        + f"experiments: {', '.join(e['experiment'] + ':' + str(e.get('method')) for e in experiments) or 'none'}"
    )
    summary_md = fnd.markdown(found, header)
    (out / "summary.md").write_text(summary_md)

    body = [
        f"<h1>{_esc(title)}</h1>",
        f"<p class=muted>{_esc(header.replace('`', ''))} · built "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}</p>",
        f"<p>The questions and findings are those of {_esc(PAPER)}. Every figure below is "
        "drawn from one catalog table named under it; open the catalog (<code>wdb sql</code>, "
        "<code>wdb shell</code>) and query it. Expand <i>SQL</i> to see how each table was "
        "made.</p>",
        _contents(analyses, experiments),
        "<h2 id=findings>The paper's findings in this database</h2><table>"
        "<tr><th>#</th><th style='text-align:left'>paper</th><th>verdict</th>"
        "<th style='text-align:left'>numbers</th></tr>",
    ]
    for f in found:
        ev = "<br>".join(_esc(e) for e in f.evidence) or _esc(f.why)
        body.append(
            f"<tr><td>{f.number}</td><td style='text-align:left'>{_esc(f.statement)}</td>"
            f"<td class={_vclass(f.verdict)}>{_esc(f.verdict)}</td>"
            f"<td style='text-align:left'>{ev}</td></tr>"
        )
    body.append("</table>")
    if not analyses and not experiments:
        body.append("<p>No analyses have been run yet (<code>wdb analyze memorization</code>).</p>")
    for rec in analyses:
        ctx = rec.get("context", {})
        key = anchor(rec["spec"], rec.get("method"))
        body.append(f"<h2 id='{key}'>{_esc(_heading(rec))}</h2>")
        body.append(f"<p>{_esc(rec.get('description'))}</p>")
        if ctx.get("baseline"):
            body.append(
                f"<p class=missing>The samples analysed here are a baseline's "
                f"({_esc(rec.get('method'))}, generator run {_esc(ctx.get('generator_run'))}): "
                "the 'generated' group in every table and figure is that baseline's samples. "
                "For a generative model, run <code>wdb generate pdiff --train ...</code> (or "
                "hyperrep, gpt, ...), then <code>wdb evaluate</code>.</p>"
            )
        body.append(
            "<p class=muted>"
            + _esc(
                f"generator run {ctx.get('generator_run')} · task {ctx.get('task')} "
                f"({ctx.get('task_kind')}) · weight space {ctx.get('space_id')} · baselines "
                f"{ctx.get('baselines')} · noise σ {ctx.get('sigmas')} · engines "
                f"{rec.get('engines')} · {rec.get('wall_time_s')} s"
            )
            + "</p>"
        )
        notes = list(ctx.get("notes") or [])
        notes += [f"{k}: {v}" for k, v in (rec.get("empty_selections") or {}).items()]
        if notes:
            body.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
        counts = rec.get("selection_counts", {})
        body.append(_rows_table([{"selection": k, "checkpoints": v} for k, v in counts.items()]))
        body.append(
            "<h3>Figures</h3>" + _figures(rec.get("figures", []), out, key, rec.get("skipped"))
        )
        body.append(
            f"<h3 id='{key}-tables'>Tables</h3>" + _section_tables(db, rec.get("tables", []), out)
        )
        other = [s for s in rec.get("skipped", []) if not s.get("figure")]
        if other:
            body.append(
                "<p class=muted>not computed: "
                + _esc("; ".join(f"{s['name']} ({s['why']})" for s in other))
                + "</p>"
            )
    for rec in experiments:
        key = anchor("experiment", rec["experiment"], rec.get("method"))
        body.append(
            f"<h2 id='{key}'>Experiment: {_esc(rec['experiment'])} — {_esc(rec.get('method'))}</h2>"
        )
        body.append(f"<p>{_esc(rec.get('description'))}</p>")
        if rec.get("notes"):
            body.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in rec["notes"]) + "</ul>")
        body.append(_figures(rec.get("figures", []), out, key))
        body.append(_section_tables(db, rec.get("tables", []), out))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>"
    )
    (out / "index.html").write_text(page)
    return {
        "html": str(out / "index.html"),
        "summary": str(out / "summary.md"),
        "findings": [f.to_dict() for f in found],
    }
