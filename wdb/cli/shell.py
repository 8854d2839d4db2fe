"""``wdb shell``: interactive SQL on the catalog that never keeps it locked.

A DuckDB session (the ``duckdb`` CLI, a notebook) locks the catalog file for as long as it stays
open, so an ingest, evaluation or generation started meanwhile waits for it. This shell opens the
catalog for each statement and closes it again (``Database.sql``, read-only like ``wdb sql``), so
writers run between statements. Line editing, history and completion come from prompt_toolkit;
statements are split at ``;`` by sqlglot's tokenizer (quotes, comments and ``$$`` strings kept).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from wdb.cli.common import emit, get_db, output_options

HELP = """\
Statements end with ';' and run read-only, one connection each (no lock is held in between).
  .tables            tables and views
  .schema NAME       the columns of a table or view
  .mode table|json|csv   output format (also --json / --csv)
  .refresh           reload the names used for completion
  .quit              leave (also Ctrl-D)"""

_FORMATS = ("table", "json", "csv")


class Splitter:
    """Collects text and hands back each complete statement (ending at a ``;`` outside quotes
    and comments); what follows the last ``;`` waits for more text."""

    def __init__(self, dialect: str = "duckdb") -> None:
        from sqlglot.dialects import Dialect

        name = dialect if dialect in ("duckdb", "postgresql", "postgres") else "duckdb"
        self._tokenizer = Dialect.get_or_raise(
            name.replace("postgresql", "postgres")
        ).tokenizer_class()
        self.buffer = ""

    def feed(self, text: str) -> list[str]:
        """Add ``text``; return the statements it completes (without their ``;``)."""
        from sqlglot.errors import TokenError
        from sqlglot.tokens import TokenType

        self.buffer += text
        if ";" not in text:
            return []
        try:
            tokens = self._tokenizer.tokenize(self.buffer)
        except TokenError:  # an open quote or comment: the statement goes on
            return []
        out, start = [], 0
        for tok in tokens:
            if tok.token_type == TokenType.SEMICOLON:
                out.append(self.buffer[start : tok.start].strip())
                start = tok.end + 1
        self.buffer = self.buffer[start:]
        return [s for s in out if s]

    def rest(self) -> str:
        """The unfinished text at the end of input (run as a last statement)."""
        text, self.buffer = self.buffer.strip(), ""
        return text


class Shell:
    """The statements of one session against one database."""

    def __init__(self, db: Any, fmt: str = "table") -> None:
        self.db = db
        self.fmt = fmt
        self.failed = 0

    def run(self, statement: str) -> None:
        """Run one statement read-only (a connection of its own, closed after) and print it."""
        try:
            rows = self.db.sql(statement, write=False)
        except Exception as exc:  # SQL errors from the engine: one line, then the next statement
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            click.echo(f"error: SQL failed: {first}", err=True)
            self.failed += 1
            return
        emit(rows, self.fmt)
        sys.stdout.flush()

    def dot(self, line: str) -> bool:
        """A ``.command``; False for ``.quit``."""
        word, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if word in (".quit", ".exit", ".q"):
            return False
        if word == ".help":
            click.echo(HELP)
        elif word == ".tables":
            emit(names(self.db), self.fmt)
        elif word == ".schema" and arg:
            emit([r for r in columns(self.db) if r["table"] == arg], self.fmt)
        elif word == ".mode" and arg in _FORMATS:
            self.fmt = arg
        else:
            click.echo(f"error: unknown command '{line.strip()}' (.help lists them)", err=True)
        sys.stdout.flush()
        return True

    def feed_lines(self, lines: Iterable[str], splitter: Splitter) -> None:
        """Run the statements of ``lines`` as each one completes (a pipe is read as it comes)."""
        for line in lines:
            if not splitter.buffer.strip() and line.lstrip().startswith("."):
                if not self.dot(line):
                    return
                continue
            for statement in splitter.feed(line):
                self.run(statement)
        last = splitter.rest()
        if last:
            self.run(last)


# -- names for completion -----------------------------------------------------------------
_TABLES = (
    "SELECT table_name AS name, CASE WHEN table_type = 'VIEW' THEN 'view' ELSE 'table' END AS kind "
    "FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY table_name"
)
_COLUMNS = (
    'SELECT table_name AS "table", column_name AS "column", data_type AS type '
    "FROM information_schema.columns WHERE table_schema = current_schema() "
    "ORDER BY table_name, ordinal_position"
)


def names(db: Any) -> list[dict]:
    """The catalog's tables and views (``.tables``)."""
    return db.sql(_TABLES)


def columns(db: Any) -> list[dict]:
    """Every column of every table and view (``.schema`` and completion)."""
    return db.sql(_COLUMNS)


_KEYWORDS = [
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "ORDER",
    "HAVING",
    "LIMIT",
    "OFFSET",
    "JOIN",
    "LEFT",
    "RIGHT",
    "INNER",
    "OUTER",
    "ON",
    "USING",
    "AS",
    "AND",
    "OR",
    "NOT",
    "IN",
    "IS",
    "NULL",
    "LIKE",
    "ILIKE",
    "BETWEEN",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "DISTINCT",
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "WITH",
    "UNION",
    "ALL",
    "DESC",
    "ASC",
    "DESCRIBE",
    "SUMMARIZE",
    "EXPLAIN",
]


def completer(db: Any):
    """Completion of tables, views, their columns and common keywords (prompt_toolkit)."""
    from prompt_toolkit.completion import WordCompleter

    meta: dict[str, str] = {}
    for r in names(db):
        meta[r["name"]] = r["kind"]
    owners: dict[str, list[str]] = {}
    for r in columns(db):
        owners.setdefault(r["column"], []).append(r["table"])
    for col, tables in owners.items():
        meta.setdefault(col, "column of " + ", ".join(tables[:3]) + (" ..." if tables[3:] else ""))
    words = [*meta, *_KEYWORDS]
    return WordCompleter(words, ignore_case=True, meta_dict=meta, match_middle=False)


def history_path(db: Any) -> Path:
    """``<db>/shell_history`` next to a local catalog; ``~/.wdb_history`` otherwise."""
    if db.catalog.duckdb_file is not None and db.path.is_dir():
        return db.path / "shell_history"
    return Path.home() / ".wdb_history"


def prompts(session: Any, splitter: Splitter) -> Iterator[str]:
    """Lines typed at the prompt (``wdb> ``, ``...> `` inside a statement), until Ctrl-D."""
    while True:
        try:
            yield session.prompt("...> " if splitter.buffer.strip() else "wdb> ") + "\n"
        except KeyboardInterrupt:  # Ctrl-C drops the statement being typed, as in psql
            splitter.buffer = ""
        except EOFError:
            return


def interactive(shell: Shell, session_factory: Callable[..., Any] | None = None) -> None:
    """The prompt_toolkit loop: history file, completion, one statement at a time."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    factory = session_factory or PromptSession
    session = factory(
        history=FileHistory(str(history_path(shell.db))),
        completer=completer(shell.db),
        complete_while_typing=False,
    )
    splitter = Splitter(shell.db.catalog.dialect)
    shell.feed_lines(prompts(session, splitter), splitter)


@click.command()
@output_options
@click.pass_context
def shell(ctx: click.Context, fmt: str) -> None:
    """Explore the catalog in SQL, interactively, without keeping it locked.

    Like `wdb sql` (read-only, the same --json/--csv output) but many statements, with history
    and completion of tables, views and columns. Each statement opens the catalog and closes it,
    so `wdb ingest`, `evaluate` or `generate` run while the shell is open. With standard input
    not a terminal, runs the statements read from it (each ending with ';') and exits non-zero
    if one failed. `.help` lists the dot commands.
    """
    db = get_db(ctx)
    sh = Shell(db, fmt)
    if sys.stdin.isatty():
        click.echo(f"wdb shell on {db.catalog.duckdb_file or db.catalog.url.split('@')[-1]}")
        click.echo("read-only; statements end with ';'; .help for commands, Ctrl-D to leave")
        interactive(sh)
    else:
        sh.feed_lines(iter(sys.stdin.readline, ""), Splitter(db.catalog.dialect))
    if sh.failed and not sys.stdin.isatty():
        sys.exit(1)


@click.command("export-tables")
@click.argument("out_dir", type=click.Path(file_okay=False))
@output_options
@click.pass_context
def export_tables(ctx: click.Context, out_dir: str, fmt: str) -> None:
    """Write every table and view of the catalog to OUT_DIR/<name>.parquet.

    Any DuckDB, pandas, polars or Spark reads them with no lock and no DuckDB version
    constraint: the way to hand a study's tables to others.
    """
    from wdb.catalog.parquet import export_tables as run

    emit(run(get_db(ctx), out_dir), fmt)
