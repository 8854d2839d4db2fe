"""Progress bars for long work (ingest, training, evaluation, generation).

Three modes, chosen by ``WDB_PROGRESS``: ``1`` (a live bar), ``lines`` (a plain line with the
rate and ETA at most every ``WDB_PROGRESS_EVERY`` seconds, default 10 — for logs, where a bar
redrawn with ``\\r`` would be one unreadable line) and ``0`` (silent). Unset, a terminal on stderr
gets the bar and anything else (a log file, a CI job) gets lines, so long work is never silent for
minutes; progress goes to stderr, so piped ``--json`` output stays clean.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO


def mode() -> str:
    """``"bar"``, ``"lines"`` or ``"off"``, from ``WDB_PROGRESS`` and whether stderr is a TTY."""
    flag = os.environ.get("WDB_PROGRESS")
    if flag is None:
        return "bar" if sys.stderr.isatty() else "lines"
    if flag == "lines":
        return "lines"
    return "bar" if flag == "1" else "off"


def enabled() -> bool:
    return mode() != "off"


class _Lines:
    """A file for tqdm that turns each redraw into its own line (tqdm redraws with ``\\r``)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, text: str) -> None:
        text = text.replace("\r", "").replace("\x1b[A", "").strip()
        if text:
            self.out.write(text + "\n")

    def flush(self) -> None:
        self.out.flush()


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "") -> Any:
    """A tqdm bar (``.set_postfix(loss=...)`` works); a silent one when disabled."""
    from tqdm.auto import tqdm

    how = mode()
    if how == "lines":

        class _LineBar(tqdm):
            """A postfix update (e.g. the loss each step) waits for the next line, not forces one."""

            def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
                super().set_postfix(ordered_dict, refresh=False, **kwargs)

        every = float(os.environ.get("WDB_PROGRESS_EVERY", "10"))
        # miniters=1 and maxinterval=every: a line at most (and, while iterating, at least) every
        # ``every`` seconds, however uneven the steps; leave=True keeps the final count.
        return _LineBar(
            iterable,
            total=total,
            desc=desc,
            file=_Lines(sys.stderr),
            mininterval=every,
            maxinterval=every,
            miniters=1,
            ascii=True,
            ncols=100,
            leave=True,
            dynamic_ncols=False,
        )
    return tqdm(
        iterable, total=total, desc=desc, disable=how == "off", file=sys.stderr, leave=False
    )
