"""A folder of state dicts: ``.pt/.pth/.bin/.ckpt`` (torch), ``.safetensors``, ``.npz``, as
researchers have them (plain files, Hugging Face, Trainer, Lightning, mixed architectures).

Layouts understood (first match wins, per checkpoint):

- a **sharded checkpoint**: ``model.safetensors.index.json`` (or ``pytorch_model.bin.index.json``)
  with the shards it names is *one* checkpoint (``wdb.files.checkpoint.read_sharded``); shards found
  without their index are one line per set ("without its index"), never one run per shard;
- a **Trainer folder** ``checkpoint-<step>/``: step = the folder's number, run = the folder that
  holds the ``checkpoint-*`` folders (the ingested folder's name at the top); ``trainer_state.json``'s
  ``log_history`` entries at that step (``loss``, ``eval_loss``, ``eval_accuracy``, ...) become
  reported metrics; ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state*.pth`` and
  ``training_args.bin`` are **companions**: counted ("companion files not stored"), not stored,
  not errors (anywhere in the tree);
- a **Hugging Face model folder** (``model.safetensors`` or ``pytorch_model.bin``, e.g. from
  ``save_pretrained``): run = that folder (its ``config.json`` is the run's config), step 0
  unless a ``trainer_state.json`` beside it gives ``global_step``;
- **Lightning** ``.ckpt`` files in a ``checkpoints/`` folder: run = the folder above it
  (``lightning_logs/version_0``); the step comes from the file's ``global_step`` (the bundle's
  other numbers, e.g. ``epoch``, become metrics);
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

from wdb.plugin import (
    SHARD_NAME,
    STATE_SUFFIXES,
    Found,
    read_checkpoint,
    read_index,
    step_from_name,
)

#: detection order among readers (lower first); the generic folder reader goes last.
PRIORITY = 90

MANIFESTS = ("manifest.jsonl", "manifest.csv")
INDEX_SUFFIX = ".index.json"
#: Hugging Face's names for a model folder's weights (single file or a shard index).
HF_WEIGHTS = {
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
}
#: files that travel with a checkpoint but hold no weights (Trainer, Accelerate, plain loops).
COMPANIONS = re.compile(
    r"^(?:(?:optimizer|scheduler|lr_scheduler|scaler)\.(?:pt|pth|bin)|training_args\.bin"
    r"|rng_state(?:_\d+)?\.pth)$"
)
TRAINER_DIR = re.compile(r"^checkpoint-(\d+)$")
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
            if not f.startswith(".")
            and (os.path.splitext(f)[1].lower() in STATE_SUFFIXES or f.endswith(INDEX_SUFFIX))
        ]
    return sorted(out, key=lambda p: _natural(p.relative_to(root)))


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in STATE_SUFFIXES or path.name.endswith(INDEX_SUFFIX)
    if not path.is_dir():
        return False
    if any((path / m).is_file() for m in MANIFESTS):
        return True
    return next(
        (
            True
            for p in path.rglob("*")
            if p.is_file() and (p.suffix.lower() in STATE_SUFFIXES or p.name.endswith(INDEX_SUFFIX))
        ),
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


def _rel(root: Path, folder: Path) -> str:
    """A run name for ``folder``: its path under ``root``, or the root's own name at the top."""
    rel = folder.relative_to(root).as_posix()
    return root.name if rel == "." else rel


def trainer_state(folder: Path, step: int | None) -> tuple[int | None, dict[str, float]]:
    """``trainer_state.json`` in ``folder`` → (its ``global_step``, numeric log entries at the
    step: ``loss``, ``eval_loss``, ``eval_accuracy``, ...). Absent or unreadable: (None, {})."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None, {}
    if not isinstance(state, dict):
        return None, {}
    glob = state.get("global_step")
    glob = int(glob) if isinstance(glob, int) and not isinstance(glob, bool) else None
    at = step if step is not None else glob
    metrics: dict[str, float] = {}
    for entry in state.get("log_history") or []:
        if isinstance(entry, dict) and entry.get("step") == at:
            for k, v in entry.items():
                num = _number(v) if k != "step" and not isinstance(v, str) else None
                if num is not None:
                    metrics[k] = num
    return glob, metrics


def _hf_config(folder: Path) -> dict | None:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _place(root: Path, f: Path) -> tuple[str, int | None, bool, dict[str, float], dict | None]:
    """(run, step or None for "number it by position", guessed, metrics, run config) of one
    checkpoint file by the conventions in the module docstring."""
    d = f.parent
    trainer = TRAINER_DIR.match(d.name)
    if trainer and d != root:
        step = int(trainer.group(1))
        _, metrics = trainer_state(d, step)
        return _rel(root, d.parent), step, False, metrics, _hf_config(d)
    if f.name in HF_WEIGHTS:
        glob, metrics = trainer_state(d, None)
        return _rel(root, d), glob or 0, glob is None, metrics, _hf_config(d)
    if d.name == "checkpoints" and f.suffix.lower() == ".ckpt" and d != root:
        return _rel(root, d.parent), step_from_name(f.stem), True, {}, None
    stem = (
        f.name[: -len(INDEX_SUFFIX)].rsplit(".", 1)[0] if f.name.endswith(INDEX_SUFFIX) else f.stem
    )
    if d == root:
        return stem, 0, True, {}, None
    return _rel(root, d), step_from_name(stem), True, {}, None


def _units(root: Path, files: list[Path]) -> Iterator[Found]:
    """Found records for files the manifest does not name: shard sets through their index,
    companions counted, the rest placed by :func:`_place` (steps numbered by position within a
    run when some name has no number or two share one)."""
    claimed: set[Path] = set()
    for f in files:
        if f.name.endswith(INDEX_SUFFIX):
            try:
                claimed |= {shard for shard, _ in read_index(f)}
            except Exception:  # noqa: BLE001 - the index's own Found reports the problem
                base = f.name[: -len(INDEX_SUFFIX)]
                stem, ext = os.path.splitext(base)
                claimed |= {
                    g
                    for g in files
                    if g.parent == f.parent
                    and (m := SHARD_NAME.match(g.name))
                    and (m["base"], m["ext"]) == (stem, ext)
                }
    orphans: dict[tuple[Path, str, str], list[Path]] = {}
    placed: list[tuple[Path, str, int | None, bool, dict, dict | None]] = []
    for f in files:
        if f in claimed:
            continue
        if COMPANIONS.match(f.name):
            yield Found(str(f), "", 0, lambda: None, companion=True)
            continue
        shard = SHARD_NAME.match(f.name)
        if shard:
            orphans.setdefault((f.parent, shard["base"], shard["ext"]), []).append(f)
            continue
        placed.append((f, *_place(root, f)))
    for (folder, base, ext), group in orphans.items():
        problem = (
            f"{len(group)} shard file(s) of a sharded checkpoint without its index "
            f"({base}{ext}{INDEX_SUFFIX}): the index says which shards make one checkpoint"
        )
        yield Found(str(folder / f"{base}-*{ext}"), "", 0, lambda: None, problem=problem)
    by_run: dict[str, list[int]] = {}
    for i, (_, run, _, guessed, _, _) in enumerate(placed):
        if guessed:
            by_run.setdefault(run, []).append(i)
    steps = {i: s for i, (_, _, s, _, _, _) in enumerate(placed)}
    for idx in by_run.values():
        got = [steps[i] for i in idx]
        if len(idx) > 1 and (None in got or len(set(got)) != len(got)):
            for pos, i in enumerate(idx):
                steps[i] = pos
    for i, (f, run, _, guessed, metrics, config) in enumerate(placed):
        yield Found(
            str(f),
            run,
            int(steps[i] or 0),
            partial(read_checkpoint, f),
            metrics=metrics,
            run_config=config,
            step_guessed=guessed,
        )


def scan(path: Path, options: dict) -> Iterable[Found]:
    if path.is_file():
        yield Found(
            str(path.resolve()), path.stem, 0, partial(read_checkpoint, path), step_guessed=True
        )
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
            partial(read_checkpoint, fpath),
            metrics=metrics,
            kind=rec.get("kind"),
            split=rec.get("split"),
            run_config=config,
            problem=cproblem,
        )
    rest = [f for f in checkpoint_files(root) if f not in listed]
    yield from _units(root, rest)
