"""Progress bars for long work (ingest, training, evaluation, generation).

Bars go to stderr and show only on a terminal, so piped ``--json`` output stays clean and test logs
stay short; ``WDB_PROGRESS=1`` forces them on, ``WDB_PROGRESS=0`` off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any


def enabled() -> bool:
    flag = os.environ.get("WDB_PROGRESS")
    if flag is not None:
        return flag == "1"
    return sys.stderr.isatty()


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "") -> Any:
    """A tqdm bar (``.set_postfix(loss=...)`` works); a silent one when disabled."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable, total=total, desc=desc, disable=not enabled(), file=sys.stderr, leave=False
    )
