"""Train every default zoo once; print wall time and the quality reached per zoo.

    .venv/bin/python benchmarks/bench_zoos.py [--size default|small] [--out DIR] [--tasks a,b]

Quality: mean test accuracy of the final checkpoints (classifiers, from the manifest the trainer
wrote) or mean Chamfer distance of each fitted field to its ground-truth shape (shapes,
evaluated here on the held-out runs, which is the analyses' test set). Baseline for the ratio
column: the issue's budget of 5 minutes per default zoo on 2 cores. CPU time (all threads) is
printed too: on a shared machine wall time measures the neighbours as much as the zoo.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

BUDGET_S = 300.0


def quality(task, folder: Path) -> str:
    lines = [json.loads(s) for s in (folder / "manifest.jsonl").open()]
    if task.kind == "classifier":
        last: dict[str, dict] = {}
        for r in lines:
            if r.get("kind") == "model":
                continue
            if r["run"] not in last or r["step"] > last[r["run"]]["step"]:
                last[r["run"]] = r
        acc = np.array([r["accuracy"] for r in last.values()])
        return f"final test accuracy mean {acc.mean():.4f} (min {acc.min():.4f}, {len(acc)} runs)"
    import torch

    from wdb.store.tensors import state_to_numpy
    from wdb.study.tasks.base import EvalContext

    held = [r for r in lines if r.get("split") == "test"]
    rows = np.stack(
        [
            task.layout().flatten(
                state_to_numpy(torch.load(folder / r["file"], weights_only=True))[0]
            )
            for r in held
        ]
    )
    res = task.evaluate_rows(rows, EvalContext(configs=[r["config"] for r in held]))
    ch = res["chamfer"][np.isfinite(res["chamfer"])]
    return (
        f"Chamfer to own shape mean {ch.mean():.4f} (max {ch.max():.4f}, {len(held)} held-out), "
        f"empty meshes {int(res['mesh_empty'].sum())}"
    )


def main() -> None:
    from wdb.study import tasks

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="default")
    ap.add_argument("--out", default=None)
    ap.add_argument("--tasks", default=",".join(tasks.names()))
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="wdb-zoos-"))
    print(f"zoos under {out} (size {args.size})")
    for name in args.tasks.split(","):
        task = tasks.get(name)
        t0, c0 = time.perf_counter(), time.process_time()
        folder = task.train_zoo(out / name, size=args.size, seed=0)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        meta = json.loads((folder / "zoo.json").read_text())
        print(
            f"{name:18s} {wall:7.1f} s wall, {cpu:7.1f} s CPU  "
            f"({wall / BUDGET_S:.2f}x the 5-min budget)  "
            f"{meta['checkpoints']} checkpoints  {quality(task, folder)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
