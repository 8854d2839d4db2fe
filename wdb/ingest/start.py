"""The start of an ingest, shared by the real one (``wdb.ingest.pipeline``) and its dry run
(``wdb.ingest.plan``): checks, the reader's choice, a forced layout, the scan of the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wdb.errors import BadInput, WdbError
from wdb.ingest.readers import Found, detect_format, reader
from wdb.ingest.stops import stop_cause
from wdb.ingest.survey import same_bytes
from wdb.store.spaces import Layout


def scan(mod: Any, fmt: str, path: Path, options: dict) -> list[Found]:
    """The reader's records; a reader that fails on the folder itself (not on one file) is
    one line naming the folder and what went wrong, not a traceback."""
    try:
        return list(mod.scan(path, options))
    except WdbError:
        raise
    except Exception as exc:
        if stop_cause(exc) is not None:  # a denied folder: the one line of ``explained``
            raise
        msg = (str(exc).strip().splitlines() or [""])[0][:200]
        raise BadInput(f"{path}: the {fmt} reader failed ({type(exc).__name__}: {msg})") from None


def begin(cls, db, path: Path, zoo, kind, format, strict, space, allow_outside):  # noqa: A002
    """``(cls(...) job, found files)``: the checks, reader choice, forced layout and scan that
    an ingest and its dry run (``wdb.ingest.plan``) share; ``db`` may be None for a dry run."""
    from wdb.store.write import KINDS

    if not path.exists():
        raise BadInput(f"{path}: no such file or directory")
    if kind not in KINDS:
        raise BadInput(f"kind must be one of {', '.join(KINDS)}, not '{kind}'")
    fmt = format or detect_format(path)
    mod = reader(fmt)
    zoo = zoo or (path.resolve().name if path.is_dir() else path.resolve().parent.name)
    job = cls(db, path, zoo, kind, strict, space, fmt)
    if space and space.lower().endswith(".json") and Path(space).is_file():
        try:
            job.forced_layout = Layout.from_json(Path(space).read_text())
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInput(f"{space}: not a layout file ({exc})") from None
        job.space_name = None  # a layout file names no space: the zoo name is used
    elif space and db is not None:
        try:
            job.forced_layout = db.space(space).layout
        except WdbError:
            job.forced_layout = None  # a new space of that name
    if job.forced_layout is not None:
        job.layouts[job.forced_layout.hash] = job.forced_layout
    options = {
        "db": db,
        "zoo": zoo,
        "kind": kind,
        "space": space,
        "strict": strict,
        "layout": job.forced_layout,
        "allow_outside": allow_outside,
    }
    found, job.report.duplicates = same_bytes(scan(mod, fmt, path, options))
    return job, found
