"""Files of one ingest that hold the same bytes: stored once (until content addressing lands)."""

from __future__ import annotations

import hashlib
import os
from collections import Counter

from wdb.ingest.readers import Found


def _file(f: Found) -> int | None:
    """The size of the plain file a Found reads (None for problems, shard sets, rows)."""
    if f.problem or f.companion or f.layout is not None or f.source.endswith(".index.json"):
        return None
    try:
        st = os.stat(f.source)
    except (OSError, ValueError):
        return None
    return st.st_size if os.path.isfile(f.source) else None


def same_bytes(found: list[Found]) -> tuple[list[Found], list[tuple[str, str]]]:
    """``(found without repeats, [(repeat, the first file with its bytes)])``.

    Only files whose size another file shares are hashed (sha256, streamed), so a folder of
    distinct files costs one ``stat`` each. The first file in scan order is kept. A source
    that several records name (a reader taking many checkpoints from one file) is left alone.
    """
    sizes: dict[int, list[int]] = {}
    times = Counter(f.source for f in found)
    for i, f in enumerate(found):
        if times[f.source] > 1:  # one file a reader reads several checkpoints from
            continue
        size = _file(f)
        if size is not None:
            sizes.setdefault(size, []).append(i)
    drop: dict[int, str] = {}
    for group in sizes.values():
        if len(group) < 2:
            continue
        first: dict[str, str] = {}
        for i in group:
            try:
                with open(found[i].source, "rb") as fh:
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()
            except OSError:
                continue
            if digest in first:
                drop[i] = first[digest]
            else:
                first[digest] = found[i].source
    kept = [f for i, f in enumerate(found) if i not in drop]
    return kept, [(found[i].source, other) for i, other in sorted(drop.items())]
