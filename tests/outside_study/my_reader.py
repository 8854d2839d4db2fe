"""An outside ingest reader for the researcher's own checkpoint format::

    DIR/runs/<run>/epoch_<k>.npz     one state dict (named arrays) per epoch
    DIR/runs/<run>/metrics.json      {"epoch_<k>": {"accuracy": ...}} (optional)

A reader is ``detect(path)`` + ``scan(path, options)`` yielding one ``Found`` per checkpoint with
a lazy ``load``; wdb does the safe loading, validation, hashing and writing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from wdb.plugin import Found

PRIORITY = 5  # ask before the built-in readers: this layout is unambiguous


def _files(path: Path) -> list[Path]:
    return sorted(Path(path).glob("runs/*/epoch_*.npz"))


def detect(path: Path) -> bool:
    return bool(_files(path))


def scan(path: Path, options: dict) -> Iterator[Found]:
    for f in _files(path):
        step = int(f.stem.split("_")[1])
        metrics_file = f.parent / "metrics.json"
        reported = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}

        def load(f: Path = f) -> dict[str, np.ndarray]:
            with np.load(f, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}

        yield Found(
            source=str(f),
            run=f.parent.name,
            step=step,
            load=load,
            metrics=reported.get(f"epoch_{step}", {}),
        )
