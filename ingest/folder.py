"""A folder of weight files as researchers have them (plain files, Hugging Face, Trainer,
Lightning, collections of models, mixed architectures and formats).

Every file whose bytes (or, for formats without magic, name) say weights is taken
(``wdb.files.formats.sniff``: torch zip and legacy pickle, safetensors, ``.npz``, TorchScript,
ONNX, GGUF, Keras/HDF5, msgpack): each is a checkpoint, or one line naming it and why
(recognised but not stored, e.g. a format whose package is not installed). File names that are
not UTF-8 are kept with ``\\xNN`` escapes.

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
- files whose names carry a **step token** (``wdb.files.names.step_token``: ``step_12``,
  ``epoch=3``, ``iter-500``, ``checkpoint-2000``, ``ckpt_7``, a bare number ``7.pt``): steps of one
  run, the folder that holds them (the ingested folder's name at the top); a file without a token
  in a folder named by one (``run/epoch_3/model.pt``) is step 3 of ``run``;
- every other file is **its own model** (a collection: ``alex.pth``, ``vgg.pth``): run = its path
  under the folder without suffix (``lpips/v0.1/alex``), step 0 unless the file holds a
  ``global_step``/``step``;
- runs of different layouts (Trainer, Lightning, step files, collection) never merge: a name two
  layouts would share stays with the first in that order, the other gets ``<run>#<layout>``;
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
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from wdb.plugin import (
    SHARD_NAME,
    Found,
    read_checkpoint,
    read_index,
    read_weights,
    sniff,
    step_token,
    strip_suffix,
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


#: suffixes of files that are never weights (not even opened to look).
TEXT_SUFFIXES = {
    ".json", ".jsonl", ".txt", ".md", ".py", ".yaml", ".yml", ".csv", ".toml", ".cfg", ".log",
    ".png", ".jpg", ".jpeg", ".gif", ".html", ".ini", ".sh", ".model", ".tiktoken", ".vocab",
}  # fmt: skip


@lru_cache(maxsize=65536)
def _sniff_at(f: Path, mtime_ns: int, size: int) -> str | None:
    return sniff(f)


def _sniff(f: Path) -> str | None:
    """:func:`sniff` once per file version (detect, the walk and placement all ask)."""
    try:
        st = f.stat()
    except OSError:
        return None
    return _sniff_at(f, st.st_mtime_ns, st.st_size)


def is_weights(f: Path) -> bool:
    """An index of shards, or a file whose bytes (or, lacking magic, name) say weights."""
    if f.name.endswith(INDEX_SUFFIX):
        return True
    if f.name.startswith(".") or os.path.splitext(f.name)[1].lower() in TEXT_SUFFIXES:
        return False
    return _sniff(f) is not None


def checkpoint_files(root: Path) -> list[Path]:
    """Weight files under ``root`` (hidden files and folders skipped), in natural order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        base = Path(dirpath)
        out += [base / f for f in filenames if is_weights(base / f)]
    return sorted(out, key=lambda p: _natural(p.relative_to(root)))


def detect(path: Path) -> bool:
    if path.is_file():
        return is_weights(path)
    if not path.is_dir():
        return False
    if any((path / m).is_file() for m in MANIFESTS):
        return True
    return next((True for p in path.rglob("*") if p.is_file() and is_weights(p)), False)


def printable(path: Path | str) -> str:
    """A path as text the catalog and a terminal take: bytes that are not UTF-8 (a file name
    from another system) are written as ``\\xNN`` escapes; the file itself is read by its real
    name."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


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


#: folder layouts in the order they keep a run name they share (later ones get ``#<layout>``).
LAYOUTS = ("trainer", "lightning", "steps", "collection")


def _place(root: Path, f: Path) -> tuple[str, int, str, bool, dict[str, float], dict | None]:
    """(run, step, layout, step guessed, metrics, run config) of one weight file by the
    conventions in the module docstring."""
    d = f.parent
    trainer = TRAINER_DIR.match(d.name)
    if trainer and d != root:
        step = int(trainer.group(1))
        _, metrics = trainer_state(d, step)
        return _rel(root, d.parent), step, "trainer", False, metrics, _hf_config(d)
    if f.name in HF_WEIGHTS:
        glob, metrics = trainer_state(d, None)
        return _rel(root, d), glob or 0, "trainer", glob is None, metrics, _hf_config(d)
    if d.name == "checkpoints" and f.suffix.lower() == ".ckpt" and d != root:
        return _rel(root, d.parent), step_token(f.name) or 0, "lightning", True, {}, None
    name = f.name[: -len(INDEX_SUFFIX)] if f.name.endswith(INDEX_SUFFIX) else f.name
    step = step_token(name)
    if step is not None:
        return _rel(root, d), step, "steps", True, {}, None
    folder_step = step_token(d.name) if d != root else None
    if folder_step is not None:  # run/epoch_3/model.pt
        return _rel(root, d.parent), folder_step, "steps", True, {}, None
    rel = (d.relative_to(root) / strip_suffix(name)).as_posix()
    return rel, 0, "collection", True, {}, None


def _units(root: Path, files: list[Path]) -> Iterator[Found]:
    """Found records for files the manifest does not name: shard sets through their index,
    companions counted, the rest placed by :func:`_place`; a run name that two folder layouts
    would share stays with the first in :data:`LAYOUTS`, the other takes ``<run>#<layout>``."""
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
    placed: list[tuple] = []
    for f in files:
        if f in claimed:
            continue
        if COMPANIONS.match(f.name):
            yield Found(printable(f), "", 0, lambda: None, companion=True)
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
        yield Found(printable(folder / f"{base}-*{ext}"), "", 0, lambda: None, problem=problem)
    owner: dict[str, str] = {}
    for layout in LAYOUTS:
        for _, run, _, lay, *_ in placed:
            if lay == layout:
                owner.setdefault(run, layout)
    for f, run, step, layout, guessed, metrics, config in placed:
        kind = None if f.name.endswith(INDEX_SUFFIX) else _sniff(f)
        yield Found(
            printable(f),
            printable(run if owner[run] == layout else f"{run}#{layout}"),
            step,
            partial(read_weights, f, kind) if kind else partial(read_checkpoint, f),
            metrics=metrics,
            run_config=config,
            step_guessed=guessed,
        )


def _inside(root: Path, fpath: Path) -> bool:
    """True when ``fpath``, symlinks resolved, lies under ``root``."""
    try:
        return fpath.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def scan(path: Path, options: dict) -> Iterable[Found]:
    """Manifest rows first, then every other weight file; ``options['allow_outside']`` lets a
    manifest name files outside the folder (refused otherwise, symlinks resolved)."""
    if path.is_file():
        kind = sniff(path)
        yield Found(
            printable(path.resolve()),
            printable(strip_suffix(path.name)),
            step_token(path.name) or 0,
            partial(read_weights, path, kind) if kind else partial(read_checkpoint, path),
            step_guessed=True,
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
        if not options.get("allow_outside") and not _inside(root, fpath):
            yield Found(
                printable(fpath),
                "",
                0,
                lambda: None,
                problem=f"listed in {mname} but outside the folder (symlinks resolved: "
                f"{printable(fpath.resolve())}); --allow-outside allows it",
            )
            continue
        # a link keeps its own name as the source (two names of one file: same bytes, stored once)
        source = fpath.resolve() if ".." in Path(str(rec["file"])).parts else fpath
        if ".." in Path(str(rec["file"])).parts or fpath.is_symlink():
            fpath = fpath.resolve()
        listed.add(fpath)
        if not fpath.is_file():
            yield Found(
                printable(source), "", 0, lambda: None, problem=f"listed in {mname} but missing"
            )
            continue
        rel = fpath.relative_to(root) if fpath.is_relative_to(root) else None
        run = str(
            rec.get("run")
            or (rel.parent.as_posix() if rel and len(rel.parts) > 1 else None)
            or strip_suffix(fpath.name)
        )
        raw_step = rec.get("step", rec.get("epoch"))
        step = _number(raw_step)
        if raw_step is None:
            step = step_token(fpath.name) or 0
        if step is None or step != int(step):
            yield Found(printable(source), run, 0, lambda: None, problem=f"bad step {raw_step!r}")
            continue
        config, cproblem = _config(rec.get("config"))
        metrics = {
            k: v
            for k, v in ((k, _number(v)) for k, v in rec.items() if k not in RESERVED)
            if v is not None
        }
        kind = sniff(fpath)
        yield Found(
            printable(source),
            printable(run),
            int(step),
            partial(read_weights, fpath, kind) if kind else partial(read_checkpoint, fpath),
            metrics=metrics,
            kind=rec.get("kind"),
            split=rec.get("split"),
            run_config=config,
            problem=cproblem,
        )
    rest = [f for f in checkpoint_files(root) if f not in listed]
    yield from _units(root, rest)
