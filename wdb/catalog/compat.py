"""A DuckDB catalog file that every current DuckDB can open.

The Python ``duckdb`` 2.x writes new files in its own storage format (version 69) unless told
otherwise, and every DuckDB before 2.0 (the ``duckdb`` CLI 1.5, IDEs, notebooks pinning another
duckdb) refuses such a file. So wdb creates its catalog with the oldest storage compatibility
version that holds what the schema uses, and rewrites a catalog written the newer way once, in
place, when it is opened.

Measured (docs/duckdb.md): with ``v1.1.0`` the catalog, its rows and its views open in DuckDB 1.1.0
through 2.0.1. Older settings buy nothing: the ``nextval`` column defaults of the schema (its
``Sequence`` primary keys) are serialised in a way DuckDB 1.0 and older cannot read whatever the
setting. DuckDB keeps an existing file's format when a newer DuckDB writes to it, so this is set
only when a file is created or rewritten.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

#: the storage compatibility version of new catalogs (DuckDB's ``STORAGE_VERSION``)
STORAGE_VERSION = "v1.1.0"
#: the oldest DuckDB measured to open such a catalog, rows and views included
OLDEST_READER = "1.1.0"

_TAG = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


def _version(text: str) -> tuple[int, int, int] | None:
    m = _TAG.search(text or "")
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def storage_tag(con: Any) -> str | None:
    """The storage version DuckDB reports for the file ``con`` has open (``'v2.0.0+'``); None
    where this DuckDB does not say (older than 1.2, which writes only readable formats)."""
    try:
        row = con.execute(
            "SELECT tags FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchone()
    except Exception:  # a DuckDB without tags
        return None
    tags = row[0] if row else None
    return (tags or {}).get("storage_version") if isinstance(tags, dict) else None


def too_new(tag: str | None) -> bool:
    """Whether a file of storage version ``tag`` is newer than :data:`STORAGE_VERSION`, so that
    older DuckDBs refuse it. A file written at ``v1.1.0`` reports ``v1.0.0+`` (same format)."""
    have, want = _version(tag or ""), _version(STORAGE_VERSION)
    return have is not None and want is not None and have > want


def create(path: str | os.PathLike) -> None:
    """Create an empty catalog file at ``path`` in :data:`STORAGE_VERSION`'s format (a file
    already there is left as it is: DuckDB only applies the setting to new files)."""
    import duckdb

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    duckdb.connect(str(path), config={"storage_compatibility_version": STORAGE_VERSION}).close()


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rewrite(path: str | os.PathLike, connect: Any = None) -> bool:
    """Rewrite the catalog at ``path`` in :data:`STORAGE_VERSION`'s format, in place, if it is
    newer; True when it did.

    The file stays open read-write (DuckDB's exclusive lock: no other process reads or writes it)
    from the check to the swap. Its log is checkpointed into it first, then every table, view,
    sequence and row is copied into ``<path>.compat-tmp`` (``COPY FROM DATABASE``), which is
    synced and moved over the original with one ``os.replace``. Killed before the swap, the
    original is untouched and the next open starts again; after it, the copy is complete.
    ``connect`` opens the file read-write (the caller's lock-waiting connect; default duckdb's).
    """
    import duckdb

    path = Path(path)
    tmp = path.with_name(path.name + ".compat-tmp")
    con = (connect or (lambda: duckdb.connect(str(path))))()
    try:
        if not too_new(storage_tag(con)):
            return False  # another process rewrote it while this one waited for the lock
        con.execute("CHECKPOINT")  # the log's commits into the file: the copy sees them all
        (name,) = con.execute("SELECT current_database()").fetchone()
        for stale in (tmp, tmp.with_name(tmp.name + ".wal")):
            stale.unlink(missing_ok=True)  # left by a rewrite that was killed
        con.execute(f"ATTACH '{_quote(tmp)}' AS wdb_compat (STORAGE_VERSION '{STORAGE_VERSION}')")
        try:
            con.execute(f'COPY FROM DATABASE "{name}" TO wdb_compat')
        finally:
            con.execute("DETACH wdb_compat")
        _fsync(tmp)
        os.replace(tmp, path)  # still holding the old file's lock: no writer lands in between
        _fsync(path.parent, directory=True)
        return True
    finally:
        con.close()  # the old file, now unlinked; nothing was written to it since CHECKPOINT
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")
