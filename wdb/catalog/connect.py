"""The SQL catalog: connections, schema upgrades, and fast read queries.

Writes go through SQLAlchemy Core (portable: DuckDB by default, PostgreSQL by URL). Reads on a
DuckDB file use the native ``duckdb`` module in read-only mode: importing duckdb-engine costs ~0.5 s,
which a one-second ``wdb query nearest`` cannot afford, and read-only connections may be shared by
several processes. Both paths open late and close early (``NullPool``): DuckDB lets one process
hold a file for writing, and it must never be held across a long computation.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wdb.errors import CatalogLocked, SchemaError

#: The Alembic revision this code expects. A constant, so that opening a database imports neither
#: Alembic nor SQLAlchemy (startup time); ``tests/test_migrations.py`` checks it equals the head.
SCHEMA_HEAD = "0009_reference"

#: the PostgreSQL advisory-lock key that serialises schema migrations ("wdb" in ASCII)
MIGRATION_LOCK = 0x776462
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def migrations_dir() -> Path:
    import migrations

    return Path(migrations.__file__).parent


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text


def lock_wait_s() -> float:
    """How long a writer waits for another process's lock (``--wait`` / ``WDB_LOCK_WAIT``, 60 s)."""
    return float(os.environ.get("WDB_LOCK_WAIT", "60"))


_SAID: set[str] = set()


def waiting(what: str, holder: str | None, wait: float, advice: str = "") -> None:
    """Say on stderr that this process waits for a lock, and for whom: once per process and
    lock (two interleaving ingests take turns at every batch; one line says it all)."""
    import sys

    if what in _SAID:
        return
    _SAID.add(what)
    who = f" held by pid {holder}" if holder else ""
    print(
        f"waiting for the {what}{who} (up to {wait:g} s; --wait){advice}",
        file=sys.stderr,
        flush=True,
    )


def lock_holder(pid: str | None, path: str | None) -> tuple[str, str]:
    """Who holds a DuckDB file's lock, from DuckDB's message's pid: ``("123: duckdb -readonly
    x.duckdb", advice)``, the advice empty when the holder is wdb itself (its connections are
    short: waiting is the answer) or unknown. A DuckDB CLI or notebook keeps the file locked
    for as long as it stays open, even read-only, so it is named with what to do instead."""
    if not pid:
        return "?", ""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # not Linux, or it has just gone
        return pid, ""
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not argv:
        return pid, ""
    import shlex

    short = [" ".join(a.split()) for a in argv]  # duckdb-cli's wrapper passes a long -cmd
    line = shlex.join(a if len(a) <= 80 else a[:24] + "..." for a in short)
    names = [Path(a).name for a in argv[:2]] + argv[1:3]
    if "wdb" in names or any(a.startswith("wdb.cli") for a in argv[1:3]):
        return f"{pid}: {line}", ""
    program = Path(argv[0]).name
    target = path or "CATALOG"
    advice = (
        f"\n  pid {pid} is {program}, not wdb: a DuckDB session locks the catalog for as long "
        "as it stays open, even read-only. Explore with `wdb shell` (it holds no lock between "
        f"statements), or open `duckdb -readonly {target}` and close it after use; for many "
        "users at once put the catalog on PostgreSQL (WDB_CATALOG_URL, docs/duckdb.md)."
    )
    return f"{pid}: {line}", advice


class Catalog:
    """One SQL catalog, addressed by SQLAlchemy URL."""

    def __init__(self, url: str):
        self.url = url
        self.duckdb_file: str | None = None
        if url.startswith("duckdb:///"):
            self.duckdb_file = url.removeprefix("duckdb:///")
        self._engine = None
        self._reader = None  # a read-only duckdb connection held by ``reading()``

    @property
    def dialect(self) -> str:
        """SQLAlchemy dialect name of the URL: ``duckdb``, ``postgresql``, ..."""
        return self.url.split(":", 1)[0].split("+", 1)[0]

    # -- connections -------------------------------------------------------------------------
    @property
    def engine(self):
        if self._engine is None:
            import sqlalchemy as sa
            from sqlalchemy.pool import NullPool

            args = {}
            if self.dialect == "postgresql":  # names this process in pg_stat_activity (locks)
                args = {"application_name": f"wdb pid {os.getpid()}"}
            self._engine = sa.create_engine(self.url, poolclass=NullPool, connect_args=args)
        return self._engine

    def _retry(self, fn):
        """Run ``fn`` (a connect), waiting up to :func:`lock_wait_s` while another process holds
        the DuckDB file: DuckDB lets one process at a time open it for writing, and wdb's
        connections are short, so the wait is for the other's current transaction."""
        wait = lock_wait_s()
        deadline = time.monotonic() + wait
        said = False
        while True:
            try:
                return fn()
            except Exception as exc:  # duckdb.IOException, sqlalchemy.exc.OperationalError
                if not _is_lock_error(exc):
                    raise
                pid = re.search(r"PID (\d+)", str(exc))
                who, advice = lock_holder(pid[1] if pid else None, self.duckdb_file)
                if time.monotonic() > deadline:
                    raise CatalogLocked(
                        f"{self.duckdb_file or self.url}: the catalog is locked by another "
                        f"process (pid {who}) for more than {wait:g} s; try again when it "
                        f"finishes, or raise --wait{'' if said else advice}"
                    ) from None
                if not said and wait > 0:
                    waiting("catalog lock", who if pid else None, wait, advice)
                    said = True
                time.sleep(0.1)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Share one read-only connection among the reads of a short block (each DuckDB connect
        costs ~20-40 ms; ``wdb query nearest`` makes several reads within its 1 s budget).
        A write (``begin``) inside the block closes it first; later reads reconnect."""
        if self.duckdb_file is None or self._reader is not None:
            yield
            return
        import duckdb

        self._reader = self._retry(lambda: duckdb.connect(self.duckdb_file, read_only=True))
        try:
            yield
        finally:
            if self._reader is not None:
                self._reader.close()
            self._reader = None

    @contextlib.contextmanager
    def begin(self) -> Iterator[Any]:
        """A write transaction (SQLAlchemy Connection); commits on success, rolls back on error."""
        if self._reader is not None:  # same file, different configuration: release it first
            self._reader.close()
            self._reader = None
        conn = self._retry(self.engine.connect)
        try:
            with conn.begin():
                yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def advisory_lock(self, key: int, what: str) -> Iterator[None]:
        """Hold PostgreSQL advisory lock ``key`` for the block, on a connection of its own
        (the block's own transactions come and go): the writers' lock across machines. Waits up
        to :func:`lock_wait_s`, saying once which wdb process (pid) holds it, then fails in one
        line."""
        import sqlalchemy as sa

        wait = lock_wait_s()
        deadline = time.monotonic() + wait
        said = False
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                name = conn.execute(
                    sa.text(
                        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                        "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                        "AND l.objid = :lo LIMIT 1"
                    ),
                    {"lo": key & 0xFFFFFFFF},
                ).scalar()
                holder = name.split(" ")[-1] if name and name.startswith("wdb pid ") else None
                if time.monotonic() > deadline:
                    raise CatalogLocked(
                        f"{self.url.split('@')[-1]}: another writer (pid {holder or '?'}) held "
                        f"the {what} for more than {wait:g} s; try again when it finishes, or "
                        "raise --wait"
                    )
                if not said and wait > 0:
                    waiting(what, holder, wait)
                    said = True
                time.sleep(0.05)
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})

    def query(self, sql: str, params: dict | None = None) -> list[dict]:
        """Run a read-only query; rows as dicts. ``:name`` placeholders."""
        cols, rows = self.query_rows(sql, params)
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def query_rows(
        self, sql: str, params: dict | None = None, *, hardened: bool = False
    ) -> tuple[list[str], list[tuple]]:
        return self._query(sql, params, hardened, columns=False)

    def query_columns(
        self, sql: str, params: dict | None = None, *, hardened: bool = False
    ) -> dict[str, Any]:
        """:meth:`query_rows` as one numpy array per column (name -> array). Why: a selection
        of 200k checkpoints fetched as tuples and converted took ~0.2 s on DuckDB; its own
        ``fetchnumpy`` takes a few ms. PostgreSQL's rows are converted here. NULLs in DuckDB's
        arrays are masked; ask for columns that have none."""
        return self._query(sql, params, hardened, columns=True)

    def _query(self, sql: str, params: dict | None, hardened: bool, columns: bool) -> Any:
        """Run a read-only query; (column names, row tuples). The one read path: a read-only
        DuckDB connection (the block's shared reader, else our own), or a PostgreSQL
        transaction the server holds read-only and that is rolled back whatever the SQL
        tried. ``hardened`` is for SQL a user typed (:func:`wdb.catalog.guard.read`): DuckDB
        may then install and load no extension (an ``https://`` path must not fetch httpfs),
        and PostgreSQL runs it prepared (the extended protocol refuses a second statement)
        with standard strings."""
        if self.duckdb_file is not None:
            import duckdb

            held = self._reader
            # a cursor of the held connection (its own, as DuckDB asks of each thread: a scan
            # reads on its reader thread beside the caller's)
            con = (
                held.cursor()
                if held is not None
                else self._retry(lambda: duckdb.connect(self.duckdb_file, read_only=True))
            )
            try:
                if hardened:
                    con.execute(
                        "SET autoinstall_known_extensions = false; "
                        "SET autoload_known_extensions = false"
                    )
                cur = con.execute(_PARAM.sub(r"$\1", sql), params or None)
                cols = [d[0] for d in cur.description] if cur.description else []
                if columns:
                    return cur.fetchnumpy() if cols else {}
                return cols, cur.fetchall() if cols else []
            finally:
                con.close()
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            if self.dialect == "postgresql":  # the server refuses writes in this transaction
                conn = conn.execution_options(postgresql_readonly=True)
            with conn.begin() as tx:
                if hardened and self.dialect == "postgresql":
                    conn.exec_driver_sql("SET LOCAL standard_conforming_strings = on")
                    conn.connection.dbapi_connection.prepare_threshold = 0
                res = conn.execute(sa.text(sql), params or {})
                out = (
                    (list(res.keys()), [tuple(r) for r in res.fetchall()])
                    if res.returns_rows
                    else ([], [])
                )
                tx.rollback()  # a read leaves nothing behind, whatever the SQL tried
            if columns:
                import numpy as np

                return {c: np.array([r[j] for r in out[1]]) for j, c in enumerate(out[0])}
            return out

    def execute(self, sql: str, params: dict | None = None) -> tuple[list[str], list[tuple]]:
        """Run one statement in a write transaction (``wdb sql --write``)."""
        import sqlalchemy as sa

        with self.begin() as conn:
            res = conn.execute(sa.text(sql), params or {})
            if not res.returns_rows:
                return [], []
            return list(res.keys()), [tuple(r) for r in res.fetchall()]

    # -- schema ------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.duckdb_file is None or Path(self.duckdb_file).exists()

    def current_revision(self) -> str | None:
        """The Alembic revision stamped in the catalog, or None for an empty catalog."""
        if not self.exists():
            return None
        try:
            rows = self.query_rows("SELECT version_num FROM alembic_version")[1]
        except Exception as exc:
            if "alembic_version" in str(exc) or "does not exist" in str(exc):
                return None
            raise
        return rows[0][0] if rows else None

    def ensure_storage(self) -> None:
        """Create a missing DuckDB file in a format every current DuckDB reads, and rewrite one
        written in a newer format in place, once (``wdb.catalog.compat``).

        The rewrite needs the file to itself. It does not wait for it: when another process has
        the file open, or the file is not writable, the command goes on with the file as it is
        and says so once; the next open tries again."""
        if self.duckdb_file is None:
            return
        import sys

        from wdb.catalog import compat

        path = self.duckdb_file
        if not self.exists():
            self._retry(lambda: compat.create(path))
            return
        with self.reading():
            tag = compat.storage_tag(self._reader)
            if not compat.too_new(tag):
                return
            if self._reader is not None:  # the rewrite opens the file read-write
                self._reader.close()
                self._reader = None
            try:
                compat.rewrite(path)
            except Exception as exc:
                if not (_is_lock_error(exc) or "ermission denied" in str(exc)):
                    raise
                if "storage" not in _SAID:
                    _SAID.add("storage")
                    print(
                        f"note: {path} is in DuckDB's newest storage format ({tag}), which "
                        f"DuckDB before 2.0 cannot open; wdb rewrites it in format "
                        f"{compat.STORAGE_VERSION} when it next opens it with no other process "
                        f"using it ({str(exc).splitlines()[0][:120]})",
                        file=sys.stderr,
                    )

    def ensure_schema(self) -> None:
        """Create or upgrade the schema to this code's head; refuse a newer database. A DuckDB
        file is first brought to a storage format that older DuckDBs read (:meth:`ensure_storage`).
        """
        if self.duckdb_file is not None and not self.exists():
            self.ensure_storage()  # creates the file
        with self.reading():  # one read-only connection for both checks
            self.ensure_storage()
            current = self.current_revision()
        if current == SCHEMA_HEAD:
            return
        from alembic.script import ScriptDirectory

        script = ScriptDirectory(str(migrations_dir()))
        known = {rev.revision for rev in script.walk_revisions()}
        if current is not None and current not in known:
            raise SchemaError(
                f"{self.duckdb_file or self.url}: catalog schema revision '{current}' is newer "
                f"than this wdb understands (head '{SCHEMA_HEAD}'); upgrade wdb to open it"
            )
        self.upgrade("head")

    def upgrade(self, revision: str = "head") -> None:
        """Run Alembic migrations up to ``revision`` in one transaction."""
        self._alembic("upgrade", revision)

    def downgrade(self, revision: str) -> None:
        self._alembic("downgrade", revision)

    def _alembic(self, direction: str, revision: str) -> None:
        from alembic import command
        from alembic.config import Config

        if self.duckdb_file is not None:
            Path(self.duckdb_file).parent.mkdir(parents=True, exist_ok=True)
        cfg = Config()
        cfg.set_main_option("script_location", str(migrations_dir()))
        with self.begin() as conn:
            if self.dialect == "postgresql":
                # two processes creating one fresh catalog at once: the second waits here, then
                # finds the schema at head (Alembic reads the version inside this transaction)
                import sqlalchemy as sa

                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            getattr(command, direction)(cfg, revision)
