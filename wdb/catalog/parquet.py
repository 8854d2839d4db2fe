"""Every table and view of the catalog as Parquet files: the catalog's content for any DuckDB,
pandas, polars or Spark, with no lock and no storage-version constraint (``wdb export-tables``).

Each file is written under a temporary name and moved into place, so a file named
``<table>.parquet`` is always complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_NAMES = (
    "SELECT table_name AS name, CASE WHEN table_type = 'VIEW' THEN 'view' ELSE 'table' END "
    "AS kind FROM information_schema.tables WHERE table_schema = current_schema() "
    "ORDER BY table_name"
)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def export_tables(db: Any, out_dir: str | os.PathLike) -> list[dict]:
    """Write each table and view of ``db``'s catalog to ``out_dir/<name>.parquet``; one row per
    file (name, kind, rows, path). One read-only connection for all of them (a consistent view
    of the catalog on DuckDB, a read-only transaction on PostgreSQL)."""
    import duckdb

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    catalog = db.catalog
    report: list[dict] = []
    if catalog.duckdb_file is not None:
        with catalog.reading():
            con = catalog._reader
            for name, kind in con.execute(_NAMES).fetchall():
                target = out / f"{name}.parquet"
                tmp = out / f".{name}.parquet.tmp"
                con.execute(
                    f"COPY (SELECT * FROM {_quote(name)}) TO '{_lit(tmp)}' (FORMAT parquet)"
                )
                os.replace(tmp, target)
                (n,) = con.execute(f"SELECT count(*) FROM {_quote(name)}").fetchone()
                report.append({"name": name, "kind": kind, "rows": n, "path": str(target)})
        return report
    import pandas as pd
    import sqlalchemy as sa

    mem = duckdb.connect()
    with catalog.engine.connect() as conn:
        conn = conn.execution_options(postgresql_readonly=True)
        with conn.begin() as tx:
            for name, kind in conn.execute(sa.text(_NAMES)).fetchall():
                frame = pd.read_sql(sa.text(f"SELECT * FROM {_quote(name)}"), conn)
                target = out / f"{name}.parquet"
                tmp = out / f".{name}.parquet.tmp"
                mem.register("frame", frame)
                mem.execute(f"COPY frame TO '{_lit(tmp)}' (FORMAT parquet)")
                mem.unregister("frame")
                os.replace(tmp, target)
                report.append({"name": name, "kind": kind, "rows": len(frame), "path": str(target)})
            tx.rollback()
    mem.close()
    return report


def _lit(path: Path) -> str:
    return str(path).replace("'", "''")
