"""``wdb ingest --dry-run``: what an ingest would do with each file, with nothing written.

The plan runs the ingest itself (the same readers, loading, validation, layout grouping and
step rules, so it cannot disagree with a real run) with the one writing step replaced by a
record; the catalog, when there is one, is only read (to name existing spaces and stored steps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wdb.files.formats import NOT_STORED, sniff
from wdb.ingest.pipeline import _Ingest
from wdb.ingest.start import begin


def _layout_summary(layout) -> str:
    dtypes = sorted({e.dtype for e in layout.entries})
    return f"{len(layout.entries)} tensors, {layout.n_params:,} values, {'/'.join(dtypes)}"


class _Plan(_Ingest):
    """An ingest that records instead of writing."""

    def __init__(self, *args):
        super().__init__(*args)
        self.rows: list[dict] = []
        self.by_source: dict[str, object] = {}

    def _record(self, source: str, action: str, why: str = "", **kw) -> None:
        f = self.by_source.get(source)
        row = {
            "file": source,
            "run": getattr(f, "run", "") or "",
            "step": getattr(f, "step", None),
            "action": action,
            "space": "",
            "layout": "",
            "reader": self._reader(source),
            "why": why,
        }
        row.update(kw)
        self.rows.append(row)

    def _reader(self, source: str) -> str:
        """The reader, and for a plain file the format its bytes say (``folder:torch-legacy``)."""
        try:
            kind = sniff(source) if Path(source).is_file() else None
        except (OSError, ValueError):
            kind = None
        return f"{self.report.format}:{kind}" if kind else self.report.format

    def skip(self, source: str, reason: str) -> None:
        if reason.startswith(NOT_STORED):
            self._record(source, "not stored", reason.removeprefix(NOT_STORED))
        else:
            self._record(source, "skip", reason)

    def _stored(self, h: str) -> tuple[str, dict]:
        """(existing space name or '', {(run, step): sha256} stored in it)."""
        if self.db is None:
            return "", {}
        got = self.db.sql("SELECT id, name FROM spaces WHERE hash = :h", {"h": h})
        if not got:
            return "", {}
        rows = self.db.sql(
            "SELECT run, step, sha256 FROM checkpoint_info WHERE space_id = :s",
            {"s": got[0]["id"]},
        )
        return got[0]["name"], {(r["run"], int(r["step"])): r["sha256"] for r in rows}

    def flush(self, h: str) -> None:
        items = self.ready.pop(h, [])
        self.ready_bytes.pop(h, None)
        if not items:
            return
        name, stored = self._stored(h)
        if not name:
            self.spaces.setdefault(h, None)
            first = len(self.spaces) == 1
            base = self.space_name or self.zoo
            name = f"{base} (new)" if first else f"{base}-{self.layouts[h].default_name()} (new)"
        for it in items:
            f = it.found
            have = stored.get((f.run, int(f.step)))
            action, why = "store", ""
            if have == it.sha256:
                action, why = "already stored", "same run, step and content"
            elif have is not None:
                action, why = (
                    "skip",
                    f"run '{f.run}' step {f.step} already stored with different content",
                )
            it.row = None
            self._record(
                f.source,
                action,
                why,
                run=f.run,
                step=int(f.step),
                space=name,
                layout=_layout_summary(it.layout),
                bytes=int(it.nbytes),
            )


def plan(
    db,
    path: Path,
    zoo: str | None = None,
    kind: str | None = None,
    format: str | None = None,  # noqa: A002
    space: str | None = None,
    allow_outside: bool = False,
) -> list[dict]:
    """One row per file found under ``path``: ``file, run, step, action, space, layout, reader,
    why``; ``action`` is ``store``, ``already stored``, ``skip`` (an error a real ingest would
    report), ``not stored`` (understood, not stored), ``same bytes`` or ``companion``."""
    job, found = begin(
        _Plan, db, Path(path), zoo, kind or "training", format, False, space, allow_outside
    )
    job.by_source = {f.source: f for f in found}
    for f in found:
        item = job.prepare(f)
        if item is not None:
            job.add(item)
    job.finish_pending()
    job.flush_all()
    for source in job.report.companions:
        job._record(source, "companion", "holds no weights (optimizer, scheduler, RNG, arguments)")
    for source, other in job.report.duplicates:
        job._record(source, "same bytes", f"same bytes as {other}; not stored again")
    order = {f.source: i for i, f in enumerate(found)}
    job.rows.sort(key=lambda r: order.get(r["file"], len(order)))
    for r in job.rows:
        r.setdefault("bytes", 0)
        r["step"] = None if r["step"] is None else int(np.int64(r["step"]))
    return job.rows
