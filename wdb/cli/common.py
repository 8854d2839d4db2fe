"""Shared CLI pieces: opening the database from the global ``--db``, and table/JSON/CSV output."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click


def get_db(ctx: click.Context | None = None, create: bool = False):
    """The database named by the global ``--db``, upgraded if older.

    Only commands that write new data (``init``, ``ingest``, ``demo``, ...) pass ``create``; any
    other command on a directory holding no database fails with one line instead of silently
    creating an empty one and answering from it.
    """
    from wdb.db import Database
    from wdb.errors import NotFound

    ctx = ctx or click.get_current_context()
    db = Database(ctx.find_root().obj["db_path"])
    if create:
        return db.init()
    duckdb_file = db.catalog.duckdb_file
    if duckdb_file is not None and not Path(duckdb_file).exists():
        raise NotFound(
            f"{db.path}: no wdb database here (pass --db DIR or set WDB_DB; "
            "`wdb init` or `wdb ingest` creates one)"
        )
    if duckdb_file is None and db.catalog.current_revision() is None:
        raise NotFound(
            f"{db.catalog.url.split('@')[-1]}: this catalog holds no wdb schema "
            "(`wdb init` or `wdb ingest` creates it)"
        )
    db.catalog.ensure_schema()  # an older schema is upgraded; the folder is never created here
    return db


class PluginChoice(click.ParamType):
    """A registered plugin name (choices listed in ``--help``, from the registry) or a ``.py``
    file defining one, checked when the command runs."""

    name = "plugin"

    def __init__(self, group: str) -> None:
        self.group = group

    def _names(self) -> list[str]:
        from wdb import plugins

        names = plugins.names(self.group)
        if self.group == "wdb.readers":
            from wdb.ingest.readers import format_names

            names = format_names()  # in detection order
        return names

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join([*self._names(), "FILE.py"]) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from wdb import plugins

        value = str(value)
        if plugins.is_path(value) or value in self._names():
            return value
        self.fail(f"'{value}' is not one of {', '.join(self._names())} (or a .py file)", param, ctx)


def output_options(fn: Callable) -> Callable:
    """Add ``--json`` / ``--csv`` to a command; the chosen format arrives as ``fmt``."""
    fn = click.option("--csv", "fmt", flag_value="csv", help="Print CSV with a header row.")(fn)
    fn = click.option("--json", "fmt", flag_value="json", help="Print one JSON array of objects.")(
        fn
    )
    return click.option("--table", "fmt", flag_value="table", default=True, hidden=True)(fn)


def workers_option(what: str) -> Callable:
    """``--workers N``: run ``what`` on a local Dask cluster of N processes (``wdb.query.engine``)."""
    return click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        help=f"{what} on a local Dask cluster of N worker processes (same results to the last "
        "bit; default: in process, or WDB_ENGINE).",
    )


def memory_option(fn: Callable) -> Callable:
    """``--memory SIZE``: the memory budget of the command's scans (``wdb.memory``)."""
    return click.option(
        "--memory",
        metavar="SIZE",
        default=None,
        help="Memory budget for reading rows (bytes or e.g. 512MB, 1GB; default WDB_MEMORY or "
        "1GB). Too small for one column tile of the rows: an error says the smallest that works.",
    )(fn)


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def emit(
    rows: Sequence[dict],
    fmt: str = "table",
    columns: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """Print rows as a rich table, a JSON array of objects, or CSV."""
    rows = list(rows)
    columns = list(columns or (rows[0].keys() if rows else []))
    if fmt == "json":
        data = [{c: _plain(r.get(c)) for c in columns} for r in rows]
        click.echo(json.dumps(data, indent=1, default=str))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")  # not CRLF: `while read` loops
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_cell(r.get(c)) for c in columns])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False, header_style="bold")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in columns])
    Console(width=max(160, Console().width)).print(table)
    if not rows:
        click.echo("(no rows)", err=True)
