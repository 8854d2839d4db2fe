"""A folder of state dicts: ``.pt/.pth/.bin`` (torch), ``.safetensors``, ``.npz``.

Layouts understood:

- files directly in the folder: one checkpoint each, its own run named after the file stem
  (step 0);
- one sub-folder per run holding its steps/epochs: run = the sub-folder's path relative to the
  folder, step = the last integer in the file stem (``epoch_012.pt`` → 12), or the file's position
  in natural order when some stem has no integer or two share one;
- an optional ``manifest.jsonl`` (one JSON object per line) or ``manifest.csv`` with ``file``
  (relative path), ``run``, ``step`` or ``epoch``, optional ``kind``, ``split`` and ``config`` (a JSON
  object: the run's config); every other numeric field becomes a metric. Listed files take their
  names from the manifest; files the manifest does not list are still ingested with the names
  above (nothing in the folder is silently ignored). Non-numeric extra fields are ignored.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from wdb.importer import STATE_SUFFIXES, Found, load_file, step_from_name

#: detection order among readers (lower first); the generic folder reader goes last.
PRIORITY = 90

MANIFESTS = ("manifest.jsonl", "manifest.csv")
RESERVED = {"file", "run", "step", "epoch", "kind", "split", "config", "zoo"}


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.as_posix())]


def checkpoint_files(root: Path) -> list[Path]:
    """Checkpoint files under ``root`` (hidden files and folders skipped), in natural order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        base = Path(dirpath)
        out += [
            base / f
            for f in filenames
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in STATE_SUFFIXES
        ]
    return sorted(out, key=lambda p: _natural(p.relative_to(root)))


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in STATE_SUFFIXES
    if not path.is_dir():
        return False
    if any((path / m).is_file() for m in MANIFESTS):
        return True
    return next(
        (True for p in path.rglob("*") if p.is_file() and p.suffix.lower() in STATE_SUFFIXES),
        False,
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            v = float(value)
        except ValueError:
            return None
        return v if math.isfinite(v) else None
    return None


def read_manifest(root: Path) -> tuple[str, list[tuple[int, dict | None, str | None]]]:
    """(manifest name, [(line number, record or None, problem or None)])."""
    for name in MANIFESTS:
        mpath = root / name
        if not mpath.is_file():
            continue
        out: list[tuple[int, dict | None, str | None]] = []
        if name.endswith(".jsonl"):
            for i, line in enumerate(mpath.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    out.append((i, None, f"invalid JSON ({exc.msg})"))
                    continue
                if not isinstance(rec, dict):
                    out.append((i, None, "line is not a JSON object"))
                    continue
                out.append((i, rec, None))
        else:
            with mpath.open(newline="") as fh:
                for i, rec in enumerate(csv.DictReader(fh), 2):
                    out.append((i, {k: v for k, v in rec.items() if v not in ("", None)}, None))
        return name, out
    return "", []


def _config(value: Any) -> tuple[dict | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None, "'config' is not valid JSON"
    if not isinstance(value, dict):
        return None, "'config' is not a JSON object"
    return value, None


def _derived(root: Path, files: list[Path]) -> Iterator[tuple[Path, str, int]]:
    """Run and step for files the manifest does not name (see the module docstring)."""
    by_run: dict[str, list[Path]] = {}
    for f in files:
        rel = f.relative_to(root)
        if len(rel.parts) == 1:
            yield f, f.stem, 0
        else:
            by_run.setdefault(rel.parent.as_posix(), []).append(f)
    for run, group in by_run.items():
        steps = [step_from_name(f.stem) for f in group]
        if None in steps or len(set(steps)) != len(steps):
            steps = list(range(len(group)))
        for f, s in zip(group, steps, strict=True):
            yield f, run, int(s)


def scan(path: Path, options: dict) -> Iterable[Found]:
    if path.is_file():
        yield Found(str(path.resolve()), path.stem, 0, partial(load_file, path))
        return
    root = path.resolve()
    mname, records = read_manifest(root)
    listed: set[Path] = set()
    for line, rec, problem in records:
        where = f"{root / mname}:{line}"
        if rec is None:
            yield Found(where, "", 0, lambda: None, problem=problem)
            continue
        if "file" not in rec:
            yield Found(where, "", 0, lambda: None, problem="no 'file' field")
            continue
        fpath = root / str(rec["file"])
        listed.add(fpath)
        if ".." in Path(str(rec["file"])).parts or fpath.is_symlink():
            fpath = fpath.resolve()
        listed.add(fpath)
        if not fpath.is_file():
            yield Found(str(fpath), "", 0, lambda: None, problem=f"listed in {mname} but missing")
            continue
        rel = fpath.relative_to(root) if fpath.is_relative_to(root) else None
        run = str(
            rec.get("run")
            or (rel.parent.as_posix() if rel and len(rel.parts) > 1 else None)
            or fpath.stem
        )
        raw_step = rec.get("step", rec.get("epoch"))
        step = _number(raw_step)
        if raw_step is None:
            step = step_from_name(fpath.stem) or 0
        if step is None or step != int(step):
            yield Found(str(fpath), run, 0, lambda: None, problem=f"bad step {raw_step!r}")
            continue
        config, cproblem = _config(rec.get("config"))
        metrics = {
            k: v
            for k, v in ((k, _number(v)) for k, v in rec.items() if k not in RESERVED)
            if v is not None
        }
        yield Found(
            str(fpath),
            run,
            int(step),
            partial(load_file, fpath),
            metrics=metrics,
            kind=rec.get("kind"),
            split=rec.get("split"),
            run_config=config,
            problem=cproblem,
        )
    rest = [f for f in checkpoint_files(root) if f not in listed]
    for f, run, step in _derived(root, rest):
        yield Found(str(f), run, step, partial(load_file, f))
