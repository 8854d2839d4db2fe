"""Files of one ingest that hold the same bytes: stored once (until content addressing lands)."""

from __future__ import annotations

import hashlib
import os
from collections import Counter

import xxhash

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

    Only files whose size another file shares are looked at, so a folder of distinct files
    costs one ``stat`` each; of those, only files that also agree on a sample of their bytes
    (:func:`_sample`) are hashed whole (sha256, streamed): the epochs of one run all have one
    size, and hashing each whole had cost a tenth of a family's ingest. The first file in scan
    order is kept. A source that several records name (a reader taking many checkpoints from
    one file) is left alone.
    """
    sizes: dict[int, list[int]] = {}
    times = Counter(f.source for f in found)
    for i, f in enumerate(found):
        if times[f.source] > 1:  # one file a reader reads several checkpoints from
            continue
        size = _file(f)
        if size is not None:
            sizes.setdefault(size, []).append(i)
    groups: list[list[int]] = []
    for group in sizes.values():
        if len(group) < 2:
            continue
        by_sample: dict[bytes | None, list[int]] = {}
        for i in group:
            by_sample.setdefault(_sample(found[i].source), []).append(i)
        groups += [g for g in by_sample.values() if len(g) > 1]
    drop: dict[int, str] = {}
    for group in groups:
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


#: blocks of a file's bytes that :func:`_sample` reads, and their size
SAMPLE_BLOCKS, SAMPLE_BYTES = 64, 4096


def _sample(path: str) -> bytes | None:
    """A digest of ``SAMPLE_BLOCKS`` blocks spread evenly over the file (a few hundred KB read
    whatever its size): files that differ in it differ; files that agree are hashed whole.
    None when the file cannot be read (then it is hashed whole, or skipped, as before)."""
    h = xxhash.xxh3_128()
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            step = max(SAMPLE_BYTES, size // SAMPLE_BLOCKS)
            for at in range(0, size, step):
                fh.seek(at)
                h.update(fh.read(SAMPLE_BYTES))
    except OSError:
        return None
    return h.digest()
