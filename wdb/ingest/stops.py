"""When an ingest is stopped by its surroundings (a full disk, a denied permission, Ctrl-C):
one line that says why, that nothing stored was lost, and how to resume.

Nothing is lost because of the write protocol (``wdb.store.write``): bytes land before the
catalog rows that point to them and each batch commits in one transaction, so a stop leaves the
batches committed so far whole and the batch in flight invisible; a rerun of the same ingest
skips what is stored (same run, step and content) and writes the rest.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from wdb.errors import WdbError

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
#: what the database drivers say when the error reaches them as text (DuckDB's IOException,
#: PostgreSQL's SQLSTATE 53100 "disk_full" or 42501 on a file) rather than as an OSError
_TEXTS = (
    ("No space left on device", "disk full"),
    ("Disk quota exceeded", "disk full"),
    ("Permission denied", "permission denied"),
    ("Read-only file system", "permission denied"),
)


class IngestStopped(WdbError):
    """The ingest stopped on a full disk or a denied permission; the message says how to resume."""


class IngestInterrupted(KeyboardInterrupt):
    """Ctrl-C during an ingest (still a ``KeyboardInterrupt``); the message says how to resume."""

    exit_code = 130


def stop_cause(exc: BaseException) -> str | None:
    """'disk full (...)' or 'permission denied (...)' when ``exc`` (or what caused it) is one,
    else None (a bug or a bad input, reported as it is)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL | DENIED:
            kind = "disk full" if exc.errno in DISK_FULL else "permission denied"
            where = f": {exc.filename}" if exc.filename else ""
            return f"{kind} ({exc.strerror or exc}{where})"
        code = getattr(getattr(exc, "orig", exc), "sqlstate", None)
        if code == "53100":
            return "disk full (the catalog's server: disk_full)"
        text = str(exc)
        for needle, kind in _TEXTS:
            if needle in text:
                return f"{kind} ({text.strip().splitlines()[0][:200]})"
        exc = exc.__cause__ or exc.__context__
    return None


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is DuckDB's answer to a Ctrl-C that arrived during
    one of its calls: it stops the call and raises "Query interrupted" instead of letting the
    ``KeyboardInterrupt`` through."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if str(exc).strip().startswith("Query interrupted"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def resume_line(why: str, path: str, committed: int) -> str:
    """The one line printed when an ingest of ``path`` stopped after ``committed`` new rows."""
    return (
        f"ingest of {path} stopped: {why}; nothing stored was lost ({committed} new "
        f"checkpoint{'s' * (committed != 1)} committed before the stop); rerun the same "
        "`wdb ingest` to resume: it skips what is already stored"
    )


@contextmanager
def explained(path: str, committed: Callable[[], int]) -> Iterator[None]:
    """Turn a Ctrl-C, a full disk or a denied permission inside the block into one line
    (:func:`resume_line`); ``committed()`` counts the new rows committed so far."""
    try:
        yield
    except KeyboardInterrupt:
        why = "interrupted (Ctrl-C)"
        raise IngestInterrupted(resume_line(why, path, committed())) from None
    except WdbError:
        raise
    except Exception as exc:
        if interrupted(exc):  # Ctrl-C that reached DuckDB mid-call comes back as its error
            why = "interrupted (Ctrl-C)"
            raise IngestInterrupted(resume_line(why, path, committed())) from None
        why = stop_cause(exc)
        if why is None:
            raise
        raise IngestStopped(resume_line(why, path, committed())) from None
