"""Entry points the CLI calls (one library function per command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analyses import engine, hints, report
from analyses.spec import builtin, load
from wdb.plugin import NotFound


def default_out(db) -> Path:
    """``<db>/../report``: beside the database directory (``demo-out/db`` → ``demo-out/report``)."""
    return Path(db.path).resolve().parent / "report"


def list_specs() -> list[dict[str, Any]]:
    """Built-in analysis specs with their title and outputs."""
    out = []
    for name, path in builtin().items():
        s = load(path)
        out.append(
            {
                "name": name,
                "title": s.title,
                "relations": len(s.relations),
                "tables": len(s.tables),
                "figures": ", ".join(f["name"] for f in s.figures),
                "path": str(path),
            }
        )
    return out


def analyze(
    db,
    spec: str | Path,
    methods: list[str] | None = None,
    out: str | Path | None = None,
    build_report: bool = True,
) -> dict[str, Any]:
    """Run ``spec`` for each method, then the report.

    Default methods: every generator with samples; where there is none, every baseline with
    samples (a noise run is analysed like a generator and marked as a baseline), with a note
    saying which generator to run. ``result["notes"]`` says what is missing and what to run.
    """
    out = Path(out) if out else default_out(db)
    notes: list[str] = []
    todo = list(methods or engine.methods_with_data(db))
    if not todo:
        todo = engine.methods_with_data(db, kind="baseline")
        if todo:
            notes.append(
                f"no generator has samples here, so the baselines ({', '.join(todo)}) are "
                f"analysed in their place and marked as baselines; {hints.make_samples(db)}"
            )
    if not todo:
        raise NotFound(
            "no generator or baseline run with samples in this database" + hints.nothing(db)
        )
    records = []
    for m in todo:
        records.append(engine.run(db, spec, method=m, out=out))
    for rec in records:
        m = rec["method"]
        notes += [f"{m}: {n}" for n in rec["context"].get("notes", [])]
        notes += [f"{m}: {k}: {v}" for k, v in rec.get("empty_selections", {}).items()]
        notes += [
            f"{m}: figure {s['name']} not drawn: {s['why']}"
            for s in rec.get("skipped", [])
            if s.get("figure") and not s.get("by_design")
        ]
        notes += [
            f"{m}: figure {f['name']} lacks {x['group']}: {x['why']}"
            for f in rec.get("figures", [])
            for x in f.get("missing", [])
        ]
    result: dict[str, Any] = {"out": str(out), "records": records, "notes": notes}
    if build_report:
        result["report"] = report.build(db, out)
    return result
