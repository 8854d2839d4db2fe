"""Entry points the CLI calls (one library function per command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analyses import engine, report
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
    """Run ``spec`` for each method (default: every method with samples), then the report."""
    out = Path(out) if out else default_out(db)
    todo = list(methods or engine.methods_with_data(db))
    if not todo:
        raise NotFound(
            "no generator run with samples in this database (run `wdb generate METHOD ...` "
            "first, or `wdb demo`)"
        )
    records = []
    for m in todo:
        records.append(engine.run(db, spec, method=m, out=out))
    result: dict[str, Any] = {"out": str(out), "records": records}
    if build_report:
        result["report"] = report.build(db, out)
    return result
