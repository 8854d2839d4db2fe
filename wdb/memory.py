"""The one memory budget: how many bytes a scan (query, export) may hold at once.

Resolution order: an explicit value (``--memory``, a ``memory=`` argument) beats ``WDB_MEMORY``,
which beats :data:`DEFAULT` (1 GiB). Sizes are bytes or a number with a unit: ``512MB``,
``1GB``, ``1.5GiB``, ``64KB`` (units are binary: KB = KiB = 1024 bytes). The budget covers the
arrays a scan holds (rows read, float64 tiles, partial sums); the interpreter and its libraries
(a few hundred MB) come on top, so a 1 GB budget peaks at about 1.3 GB resident.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import TypeVar

from wdb.errors import BadInput

T = TypeVar("T")
DEFAULT = 1 << 30
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)


def parse_bytes(text: int | str, what: str = "memory budget") -> int:
    """``"512MB"`` → 536870912; an int is taken as bytes. Bad text is a one-line BadInput."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise BadInput(f"{what} '{text}' is not a size (bytes, or e.g. 512MB, 1GB)")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise BadInput(f"{what} must be positive, not '{text}'")
    return value


def budget(memory: int | str | None = None) -> int:
    """The budget in bytes: ``memory`` if given, else ``WDB_MEMORY``, else 1 GiB."""
    if memory is not None:
        return parse_bytes(memory, "--memory")
    env = os.environ.get("WDB_MEMORY")
    if env:
        return parse_bytes(env, "WDB_MEMORY")
    return DEFAULT


def human(n: int) -> str:
    """Bytes for messages: ``1.5GB``, ``64KB``."""
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n}B"


def one_ahead(items: Iterable[T], name: str = "wdb-ahead") -> Iterator[T]:
    """``items`` with the next one made on a thread of its own while the caller uses this one
    (reading, decoding and widening release the GIL): at most two alive at once. An error
    making one is raised in its place; a caller that stops early waits for the one in making."""
    from concurrent.futures import ThreadPoolExecutor

    it, end = iter(items), object()
    with ThreadPoolExecutor(1, thread_name_prefix=name) as ex:
        nxt = ex.submit(next, it, end)
        while (x := nxt.result()) is not end:
            nxt = ex.submit(next, it, end)
            yield x
            del x
