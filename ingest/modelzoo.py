"""The Model Zoo layout of Schürholt et al. (Hyper-Representations).

One folder per run::

    <run>/params.json            the run's hyper-parameters → the run's config
    <run>/result.json            JSON lines, one per epoch (test_acc, test_loss, ...)
    <run>/checkpoint_<epoch>/checkpoints      torch state dict (also checkpoint_<epoch:06d>)

Each line of ``result.json`` is matched to a checkpoint by its ``epoch`` field, else Ray Tune's
``training_iteration``, else its 0-based line number. Its numeric fields become metrics (Ray's
bookkeeping such as timestamps, pids and iteration timers is dropped); ``test_acc`` is also stored
as ``accuracy`` and ``test_loss`` as ``loss`` (the shared metric names); an accuracy above 1 is
taken as a percentage and divided by 100. The path may also be a single run folder.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from wdb.plugin import Found, read_checkpoint

#: detection order among readers (lower first).
PRIORITY = 10

_CKPT = re.compile(r"^checkpoint_(\d+)$")
_DROP = {
    "epoch",
    "training_iteration",
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "time_since_restore",
    "timesteps_since_restore",
    "iterations_since_restore",
    "timesteps_total",
    "episodes_total",
    "pid",
    "done",
    "warmup_time",
}


def _is_run(p: Path) -> bool:
    return (
        p.is_dir()
        and (p / "params.json").is_file()
        and any(_CKPT.match(c.name) and c.is_dir() for c in p.iterdir())
    )


def run_dirs(path: Path) -> list[Path]:
    if _is_run(path):
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if _is_run(p))


def detect(path: Path) -> bool:
    return bool(run_dirs(path))


def _metrics(line: dict) -> dict[str, float]:
    out = {}
    for k, v in line.items():
        if k in _DROP or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    if "test_acc" in out:
        acc = out["test_acc"]
        out["accuracy"] = acc / 100.0 if acc > 1 else acc
    if "test_loss" in out:
        out["loss"] = out["test_loss"]
    return out


def read_results(run: Path) -> tuple[dict[int, dict[str, float]], str | None]:
    path = run / "result.json"
    if not path.is_file():
        return {}, None
    out: dict[int, dict[str, float]] = {}
    for i, text in enumerate(path.read_text().splitlines()):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            return out, f"result.json line {i + 1} is not valid JSON"
        if not isinstance(line, dict):
            continue
        epoch = line.get("epoch", line.get("training_iteration", i))
        if isinstance(epoch, int | float) and not isinstance(epoch, bool):
            out[int(epoch)] = _metrics(line)
    return out, None


def scan(path: Path, options: dict) -> Iterable[Found]:
    for run in run_dirs(path):
        problem = None
        try:
            config = json.loads((run / "params.json").read_text())
            if not isinstance(config, dict):
                config, problem = None, "params.json is not a JSON object"
        except json.JSONDecodeError:
            config, problem = None, "params.json is not valid JSON"
        results, rproblem = read_results(run)
        ckpts = sorted(
            (int(m.group(1)), c) for c in run.iterdir() if (m := _CKPT.match(c.name)) and c.is_dir()
        )
        for epoch, cdir in ckpts:
            f = cdir / "checkpoints"
            source = str(f.resolve())
            if not f.is_file():
                yield Found(source, run.name, epoch, lambda: None, problem="no 'checkpoints' file")
                continue
            yield Found(
                source,
                run.name,
                epoch,
                partial(read_checkpoint, f),
                metrics=results.get(epoch, {}),
                run_config=config,
                problem=problem,
            )
        if rproblem:
            yield Found(
                str((run / "result.json").resolve()), run.name, 0, lambda: None, problem=rproblem
            )
