"""P-diff's folder of partial state dicts: each ``.pt``/``.pth`` holds only the trained subset of
the model's tensors (e.g. the last BatchNorm layers), saved at consecutive steps of one run.

They become one run (named after the zoo) in a space of exactly those tensors; the step is the
last integer in the file stem (``p_data_7.pth`` → 7), or natural order when stems lack integers.

Detection: the file names P-diff's collection stage writes, ``p_data_<n>.pt``/``.pth``, directly in
the folder; any other folder of partial state dicts needs ``--format pdiff`` (without it, such a
folder reads as the generic ``folder`` format: one run per file).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from wdb.plugin import Found, read_checkpoint, step_from_name

#: detection order among readers (lower first).
PRIORITY = 30

_PDATA = re.compile(r"^p_data_\d+\.(pt|pth)$")


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def files(path: Path) -> list[Path]:
    return sorted(
        (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".pt", ".pth")),
        key=_natural,
    )


def detect(path: Path) -> bool:
    return path.is_dir() and any(_PDATA.match(p.name) for p in path.iterdir())


def scan(path: Path, options: dict) -> Iterable[Found]:
    found = files(path) if path.is_dir() else [path]
    run = options.get("zoo") or path.name
    steps = [step_from_name(p.stem) for p in found]
    if None in steps or len(set(steps)) != len(steps):
        steps = list(range(len(found)))
    for p, step in zip(found, steps, strict=True):
        yield Found(str(p.resolve()), run, int(step), partial(read_checkpoint, p))
