"""Read-only SQL, checked before it reaches the database.

``wdb sql`` (without ``--write``), ``Database.sql(write=False)`` and the interactive shell run
user SQL; selections (``--where``, ``--train``, ``--targets``, ``--among``, ``--reference``, a
spec's selections) are spliced into wdb's own queries. A read-only transaction is not enough:
on PostgreSQL a superuser's ``COPY ... TO PROGRAM`` and ``pg_read_file`` run inside one, and
``ROLLBACK; DELETE ...`` ends it; a read-only DuckDB connection still writes files with
``COPY ... TO`` and ``EXPORT DATABASE``. So every statement is parsed (sqlglot, in the catalog's
dialect) and only reads pass. What is allowed, exactly (``READ_ONLY_HELP`` says it to users):

- one statement: ``SELECT`` (also ``WITH ... SELECT``, ``UNION``/``INTERSECT``/``EXCEPT``,
  DuckDB's ``FROM t``, PostgreSQL's ``TABLE t``), ``VALUES``, ``EXPLAIN [ANALYZE]`` of such a
  statement, ``SHOW``, ``DESCRIBE``/``SUMMARIZE`` (DuckDB) and the DuckDB ``PRAGMA`` s that read
  (:data:`DUCKDB_PRAGMAS`);
- nowhere inside it: a write (``INSERT``/``UPDATE``/``DELETE``/``MERGE``, ``COPY``, DDL,
  ``SELECT ... INTO``, a data-modifying ``WITH``), transaction control, ``SET``, ``ATTACH``/
  ``DETACH``, ``INSTALL``/``LOAD``, ``CALL``, or a function of :data:`PG_DENY` /
  :data:`PG_DENY_PREFIXES` / :data:`DUCKDB_DENY` (server files, programs, settings, other
  sessions, large objects, dblink, SQL held in a string);
- DuckDB's table functions that read files the user names (``read_csv``, ``read_parquet``,
  ``read_json``, ``glob``, ...) stay allowed: they read what the user can read anyway, on the
  user's own machine. (Extensions are not auto-installed or auto-loaded for them.)

The parse is the first fence, not the only one: PostgreSQL still runs the statement in a
read-only transaction that is rolled back, through the extended query protocol (the server
itself refuses two statements there), and DuckDB on a read-only connection whose own parser
must also count one statement. Text that sqlglot cannot parse is refused.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

from wdb.errors import BadInput

#: PostgreSQL functions refused anywhere in a read (names compared lower-case, schema dropped).
PG_DENY = frozenset(
    {
        "pg_read_file",
        "pg_read_binary_file",
        "pg_stat_file",
        "pg_ls_dir",
        "lo_import",
        "lo_export",
        "set_config",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_notify",
        "nextval",
        "setval",
        "txid_current",
        "pg_current_xact_id",
        "pg_sleep",
        "pg_sleep_for",
        "pg_sleep_until",
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
    }
)
#: PostgreSQL function-name prefixes refused: the families above (``pg_ls_waldir``,
#: ``lo_unlink``, ``dblink_exec``, ``query_to_xml`` which runs SQL held in a string, ...).
PG_DENY_PREFIXES = (
    "pg_ls_",
    "pg_read_",
    "pg_file_",
    "lo_",
    "dblink",
    "query_to_",
    "cursor_to_",
    "pg_advisory",
    "pg_try_advisory",
    "pg_create_",
    "pg_drop_",
    "pg_replication_",
    "pg_logical_",
    "pg_switch_",
    "pg_backup_",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_log_",
    "pg_import_",
    "pg_stat_reset",
    "pg_wal_replay_",
)
#: PostgreSQL tables and views refused: password hashes, server files and user mappings.
PG_DENY_TABLES = frozenset(
    {
        "pg_authid",
        "pg_shadow",
        "pg_user_mapping",
        "pg_user_mappings",
        "pg_hba_file_rules",
        "pg_ident_file_mappings",
        "pg_file_settings",
        "pg_largeobject",
    }
)
#: DuckDB functions refused: SQL held in a string, checkpoints, logging to files, secrets.
DUCKDB_DENY = frozenset(
    {
        "query",
        "query_table",
        "checkpoint",
        "force_checkpoint",
        "enable_logging",
        "disable_logging",
        "truncate_duckdb_logs",
        "nextval",
        "setval",
        "getenv",
        "duckdb_secrets",
        "which_secret",
    }
)
#: DuckDB ``PRAGMA`` s that only read.
DUCKDB_PRAGMAS = frozenset(
    {
        "table_info",
        "show",
        "show_tables",
        "show_tables_expanded",
        "show_databases",
        "database_list",
        "database_size",
        "storage_info",
        "version",
        "platform",
        "functions",
        "collations",
        "metadata_info",
        "user_agent",
    }
)

#: One paragraph for ``wdb sql --help`` and the README.
READ_ONLY_HELP = (
    "Without --write, exactly one statement that reads: SELECT (WITH ... SELECT, UNION, "
    "DuckDB's FROM t), VALUES, EXPLAIN [ANALYZE] of those, SHOW, DESCRIBE/SUMMARIZE and the "
    "DuckDB PRAGMAs that read (table_info, show_tables, database_size, version, ...). Refused "
    "before it reaches the database: a second statement, writes (INSERT/UPDATE/DELETE, COPY, "
    "CREATE/DROP/ALTER, SELECT INTO), BEGIN/COMMIT/ROLLBACK, SET, ATTACH/DETACH, INSTALL/LOAD, "
    "CALL, EXPORT/IMPORT DATABASE, and functions that reach the server's files, programs, "
    "settings or other sessions (pg_read_file, pg_ls_dir, lo_import/lo_export, dblink, "
    "set_config, pg_terminate_backend, query_to_xml, ...). Allowed on DuckDB: table functions "
    "that read files you name (read_csv, read_parquet, read_json, glob); no extension is "
    "installed or loaded for them."
)

#: sqlglot node classes that are not reads, refused anywhere in a statement or selection
_WRITE_NODES = (
    *("DML", "DDL", "Drop", "Alter", "Command", "Set", "Pragma", "Attach", "Detach"),
    *("Install", "Transaction", "Commit", "Rollback", "Into", "Use", "TruncateTable"),
    *("LoadData", "Kill", "Grant", "Revoke", "Export", "Lock", "Analyze", "Refresh"),
    *("Cache", "Uncache", "Comment", "Declare", "Execute"),
)
_WRITES: tuple[type, ...] = ()
_EXPLAIN_OPTS = re.compile(r"^\s*(\([^()]*\)|ANALY[SZ]E\b|VERBOSE\b)\s*", re.IGNORECASE)


def sqlglot_dialect(dialect: str) -> str:
    """sqlglot's name for a SQLAlchemy dialect name (``postgresql`` -> ``postgres``)."""
    d = dialect.lower().split("+", 1)[0]
    return "postgres" if d in ("postgresql", "postgres") else d


def _writes() -> tuple[type, ...]:
    global _WRITES
    if not _WRITES:
        from sqlglot import exp

        _WRITES = tuple(getattr(exp, n) for n in _WRITE_NODES if hasattr(exp, n))
    return _WRITES


def _parse(sql: str, dialect: str, what: str) -> list:
    import sqlglot
    from sqlglot.errors import SqlglotError

    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # "falling back to Command" chatter
    try:
        return [s for s in sqlglot.parse(sql, read=sqlglot_dialect(dialect)) if s is not None]
    except SqlglotError as exc:
        errs = getattr(exc, "errors", None) or []
        if errs:
            e = errs[0]
            desc = re.sub(
                r"<Token token_type: [^,]+, text: ([^,]*),[^>]*>",
                r"'\1'",
                str(e.get("description") or "syntax error"),
            )
            where = f" at line {e.get('line')}, column {e.get('col')}"
        else:
            desc, where = (str(exc).strip().splitlines() or [type(exc).__name__])[0], ""
        raise BadInput(f"{what}: cannot parse it{where} ({desc}), so it is refused") from None


def _func_names(node) -> list[str]:
    from sqlglot import exp

    if isinstance(node, exp.Anonymous):
        return [str(node.this).lower()]
    names = [node.key.lower()]
    with contextlib.suppress(Exception):  # some functions have no single name
        names.append(node.sql_name().lower())
    return names


def _denied(name: str, dialect: str) -> bool:
    name = name.rsplit(".", 1)[-1].strip('"').lower()
    if sqlglot_dialect(dialect) == "postgres":
        return name in PG_DENY or name.startswith(PG_DENY_PREFIXES)
    return name in DUCKDB_DENY


def _check_tree(tree, dialect: str, what: str) -> None:
    """Refuse a write, a statement or a denied function anywhere inside ``tree``."""
    from sqlglot import exp

    pg = sqlglot_dialect(dialect) == "postgres"
    for node in tree.walk():
        if isinstance(node, _writes()):
            kind = node.key.upper() if not isinstance(node, exp.Command) else str(node.this)
            raise BadInput(f"{what}: {kind} is not a read (read-only without --write)")
        if isinstance(node, exp.Func):
            for name in _func_names(node):
                if _denied(name, dialect):
                    raise BadInput(
                        f"{what}: function {name}() reaches beyond the catalog (server files, "
                        "programs, settings or sessions) and is refused"
                    )
        if pg and isinstance(node, exp.Table) and node.name.lower() in PG_DENY_TABLES:
            raise BadInput(f"{what}: {node.name} holds server secrets and is refused")


def _pragma_name(node) -> str:
    from sqlglot import exp

    inner = node.this
    if isinstance(inner, exp.Anonymous):
        return str(inner.this).lower()
    if isinstance(inner, exp.Func):
        return _func_names(inner)[-1]
    if isinstance(inner, exp.EQ | exp.PropertyEQ):
        return str(inner.this.name).lower()
    return str(getattr(inner, "name", inner)).lower()


def check_read_only(sql: str, dialect: str, what: str = "SQL") -> str:
    """The one statement of ``sql`` (stripped of its final ``;``) if it only reads; else
    :class:`BadInput` in one line. ``dialect``: ``duckdb`` or ``postgresql``/``postgres``.

    This is what ``wdb sql`` without ``--write``, ``Database.sql(write=False)`` and the shell
    call before running user SQL (see the module docstring for exactly what passes)."""
    from sqlglot import exp

    if not sql or not sql.strip():
        raise BadInput(f"{what}: empty statement")
    stmts = _parse(sql, dialect, what)
    if len(stmts) != 1:
        raise BadInput(
            f"{what}: {len(stmts)} statements; read-only without --write runs exactly one"
        )
    (stmt,) = stmts
    if isinstance(stmt, exp.Command):
        keyword = str(stmt.this).upper()
        arg = stmt.args.get("expression")
        rest = str(arg.this if hasattr(arg, "this") else arg or "")
        if keyword == "EXPLAIN":
            while (m := _EXPLAIN_OPTS.match(rest)) and m.group(0):
                rest = rest[m.end() :]
            check_read_only(rest, dialect, what)
        elif keyword == "SHOW" and sqlglot_dialect(dialect) == "postgres":
            if not re.fullmatch(r"\s*[\w.]+\s*;?\s*", rest):
                raise BadInput(f"{what}: SHOW takes one setting name")
        else:
            raise BadInput(
                f"{what}: {keyword} is not a read (read-only without --write)"
                + (" (use SELECT * FROM fn(...) for a table function)" if keyword == "CALL" else "")
            )
        return _strip(sql)
    if isinstance(stmt, exp.Pragma):
        name = _pragma_name(stmt)
        if sqlglot_dialect(dialect) != "duckdb" or name not in DUCKDB_PRAGMAS:
            raise BadInput(f"{what}: PRAGMA {name} is not one that only reads")
        _check_tree(stmt.this, dialect, what)
        return _strip(sql)
    if not isinstance(stmt, exp.Query | exp.Values | exp.Describe | exp.Show | exp.Summarize):
        first = sql.split(None, 1)[0].upper()
        raise BadInput(f"{what}: {first} is not a read (read-only without --write)")
    _check_tree(stmt, dialect, what)
    return _strip(sql)


def check_selection(where: str | None, dialect: str, what: str = "selection") -> str | None:
    """``where`` if it is one SQL expression (a filter) that only reads, else :class:`BadInput`
    in one line. Selections are spliced into wdb's own queries as ``WHERE (<where>)``: a
    statement (``1=1; DROP ...``), a write in a subquery, or a denied function never passes."""
    from sqlglot import exp

    if where is None or not where.strip():
        return where
    label = f"{what} {where!r}"
    stmts = _parse(where, dialect, label)
    if len(stmts) != 1:
        raise BadInput(f"{label}: a selection is one SQL filter expression, not statements")
    (node,) = stmts
    if isinstance(node, exp.Query) and not isinstance(node, exp.Subquery):
        raise BadInput(f"{label}: a selection is a filter expression, not a query")
    if not isinstance(node, exp.Condition | exp.Subquery) or isinstance(node, _writes()):
        raise BadInput(f"{label}: a selection is a filter expression, not a statement")
    _check_tree(node, dialect, label)
    # spliced as "WHERE (<where>)": a trailing "-- comment" must not swallow the ")"
    return f"{where}\n" if "--" in where else where


def db_error_line(exc: BaseException) -> str:
    """The database's message for ``exc`` in one line, keeping its hint ("Did you mean ...",
    "Candidate bindings ...", PostgreSQL's HINT) and dropping the echoed SQL and caret lines."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    keep: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("LINE ", "[SQL:", "(Background on", "^")):
            continue
        if set(line) <= {"^", " "}:
            continue
        line = re.sub(r"^\((?:psycopg|sqlalchemy|duckdb)[\w.]*\)\s*", "", line)
        keep.append(line)
    return " ".join(keep) if keep else type(exc).__name__


def _strip(sql: str) -> str:
    return sql.strip().rstrip(";").strip()


_DUCKDB_READS = ("SELECT", "EXPLAIN", "PRAGMA")


def _is_db_error(exc: BaseException) -> bool:
    mod = type(exc).__module__
    return mod.startswith(("duckdb", "sqlalchemy", "psycopg", "_duckdb"))


def read(
    catalog, sql: str, params: dict | None = None, what: str = "SQL"
) -> tuple[list[str], list[tuple]]:
    """Check ``sql`` with :func:`check_read_only`, then run it read-only on ``catalog``
    (a :class:`wdb.catalog.connect.Catalog`): (column names, row tuples). ``:name``
    placeholders. A database error is :class:`BadInput` in one line with its hint.

    Behind the parse: DuckDB's own parser must also see one statement that reads, on a
    read-only connection that installs and loads no extension; PostgreSQL runs it as a
    prepared statement (one statement, the server checks) in a read-only transaction with
    standard strings, rolled back."""
    return _checked(catalog, sql, what, lambda s: catalog.query_rows(s, params, hardened=True))


def read_columns(
    catalog, sql: str, params: dict | None = None, what: str = "SQL"
) -> dict[str, Any]:
    """:func:`read`, one numpy array per column (``Catalog.query_columns``): a selection's
    keys for 200k checkpoints without a tuple each."""
    return _checked(catalog, sql, what, lambda s: catalog.query_columns(s, params, hardened=True))


def _checked(catalog, sql: str, what: str, run: Callable[[str], Any]) -> Any:
    stmt = check_read_only(sql, catalog.dialect, what)
    try:
        if catalog.duckdb_file is not None:
            _duckdb_reads_one(stmt, what)
        return run(stmt)
    except BadInput:
        raise
    except Exception as exc:
        if not _is_db_error(exc):
            raise
        raise BadInput(f"{what} failed: {db_error_line(exc)}") from None


def _duckdb_reads_one(stmt: str, what: str) -> None:
    """DuckDB's own parser must also see one statement that reads."""
    import duckdb

    from wdb.catalog.connect import _PARAM

    found = duckdb.extract_statements(_PARAM.sub(r"$\1", stmt))
    if len(found) != 1 or found[0].type.name not in _DUCKDB_READS:
        kinds = ", ".join(s.type.name for s in found)
        raise BadInput(
            f"{what}: DuckDB reads it as {kinds}; read-only without --write runs one read"
        )
