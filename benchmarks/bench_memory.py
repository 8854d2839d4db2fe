"""Peak memory and time of queries and export on big checkpoints (issue 25).

Makes N checkpoints of P float32 parameters (one training run, torch.save, two tensors) and 6
targets (fine-tunes of the first six steps, kind 'generated'), ingests them, then runs each
command in a fresh process and reads that process's peak resident set
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a wrapper that runs only it):

- ``wdb query nearest`` of one target among the N references,
- ``wdb query novelty`` of the 6 targets (not saved),
- ``wdb export`` of one reference to safetensors,
- ``wdb evaluate`` of the N references with an outside task file (``PROBE_TASK``),
- a plain numpy pass in a fresh process over the same rows saved as ``.npy`` (query minus each
  row, squared differences summed), page cache warm.

Each command runs once to warm the page cache, then ``--repeat`` times measured (the median
wall time and the largest peak are reported: these machines are noisy). Prints peak RSS per command
(target <= 1.5 GB), nearest / numpy time (target <= 3x) and novelty(6) / nearest time (target
<= 1.5x).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_memory.py [--n 20] [--params 25000000]
        [--memory 1GB] [--dir /tmp/wdb_bench_memory] [--keep] [--reuse] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

NUMPY_PASS = r"""
import sys, numpy as np
q = np.load(sys.argv[1])
best = np.inf
for f in sys.argv[2:]:
    d = np.load(f) - q
    best = min(best, float(np.dot(d, d)))
print(best ** 0.5)
"""

# ``wdb evaluate --task`` on the 25M-parameter rows: an outside task (the plugin contract) whose
# model has the checkpoints' two tensors; its logits use a slice of them (a linear map of 64
# fixed inputs to 10 classes), so what is measured is reading and loading the rows, batch by batch
PROBE_TASK = r"""
import numpy as np
import torch
import torch.nn as nn

from wdb.plugin import ClassifierTask

SPLIT, PARAMS = {split}, {params}


class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(SPLIT))
        self.b = nn.Parameter(torch.zeros(PARAMS - SPLIT))

    def forward(self, x):
        return x @ self.a[:640].reshape(64, 10) + self.b[:10]


class ProbeTask(ClassifierTask):
    name = "bench-probe"

    def build_model(self):
        return Probe()

    def data(self, split="test"):
        rng = np.random.default_rng(0)
        return rng.standard_normal((200, 64), dtype=np.float32), rng.integers(0, 10, 200)


TASK = ProbeTask
"""

MEASURE = r"""
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
wall = time.perf_counter() - t
print(rc, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def make(root: Path, n: int, params: int) -> None:
    """N steps of one run (noise 1e-3 of scale per step) and 6 fine-tunes; .npy copies."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    split = params * 3 // 4
    w = (rng.standard_normal(params, dtype=np.float32) * 0.02).astype(np.float32)
    (root / "train" / "run_0").mkdir(parents=True)
    (root / "npy").mkdir()
    for s in range(n):
        w += rng.standard_normal(params, dtype=np.float32) * np.float32(2e-5)
        state = {"a": torch.from_numpy(w[:split].copy()), "b": torch.from_numpy(w[split:].copy())}
        torch.save(state, root / "train" / "run_0" / f"epoch_{s:03d}.pt")
        np.save(root / "npy" / f"ref_{s:03d}.npy", w)
        if s < 6:
            t = w + rng.standard_normal(params, dtype=np.float32) * np.float32(6e-5)
            d = root / "gen" / f"gen_{s}"
            d.mkdir(parents=True)
            ts = {"a": torch.from_numpy(t[:split].copy()), "b": torch.from_numpy(t[split:].copy())}
            torch.save(ts, d / "epoch_000.pt")
            np.save(root / "npy" / f"q_{s}.npy", t)


def measure(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of ``cmd`` in a fresh process; fails loudly on error."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    rc, wall, kb = int(out[0]), float(out[1]), int(out[2])
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}")
    return wall, kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--params", type=int, default=25_000_000)
    ap.add_argument("--memory", default=None, help="WDB_MEMORY for the commands (default 1GB)")
    ap.add_argument("--dir", default="/tmp/wdb_bench_memory")
    ap.add_argument("--repeat", type=int, default=3, help="measured runs per command (median)")
    ap.add_argument("--keep", action="store_true", help="keep the folder afterwards")
    ap.add_argument("--reuse", action="store_true", help="measure a kept folder again")
    args = ap.parse_args()
    root = Path(args.dir)
    reuse = args.reuse and (root / "db").exists()
    if root.exists() and not reuse:
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WDB_PROGRESS="0")
    if args.memory:
        env["WDB_MEMORY"] = args.memory
    wdb = [sys.executable, "-c", "from wdb.cli.main import cli; cli()", "--db", str(root / "db")]
    try:
        if not reuse:
            t = time.perf_counter()
            make(root, args.n, args.params)
            print(f"made {args.n}+6 checkpoints of {args.params:,} params: "
                  f"{time.perf_counter() - t:.1f} s")  # fmt: skip
            t = time.perf_counter()
            for zoo, kind in (("train", "training"), ("gen", "generated")):
                subprocess.run(
                    [*wdb, "ingest", str(root / zoo), "--kind", kind], env=env, check=True,
                    stdout=subprocess.DEVNULL,
                )  # fmt: skip
            print(f"ingested: {time.perf_counter() - t:.1f} s")
        probe = PROBE_TASK.format(split=args.params * 3 // 4, params=args.params)
        (root / "probe_task.py").write_text(probe)
        refs = sorted(str(p) for p in (root / "npy").glob("ref_*.npy"))
        cmds = {
            "nearest": [*wdb, "query", "nearest", "--run", "gen_0", "--k", "3", "--json"],
            "novelty (6)": [
                *wdb, "query", "novelty", "--targets", "kind = 'generated'", "--no-save", "--json",
            ],
            "export": [*wdb, "export", "run_0", "--step", "0", "--out", str(root / "x.safetensors")],
            "evaluate": [
                *wdb, "evaluate", "--task", str(root / "probe_task.py"), "--where",
                "kind = 'training'", "--force", "--json",
            ],
            "numpy pass": [sys.executable, "-c", NUMPY_PASS, str(root / "npy" / "q_0.npy"), *refs],
        }  # fmt: skip
        got = {}
        for name, cmd in cmds.items():
            measure(cmd, env)  # warm the page cache
            runs = sorted(measure(cmd, env) for _ in range(args.repeat))
            got[name] = (runs[len(runs) // 2][0], max(mb for _, mb in runs))
        print(f"\n{args.n} references x {args.params:,} float32 params, budget "
              f"{args.memory or env.get('WDB_MEMORY') or '1GB (default)'}")  # fmt: skip
        print(f"{'command':<14}{'wall s':>9}{'peak RSS MB':>13}")
        for name, (wall, mb) in got.items():
            print(f"{name:<14}{wall:>9.2f}{mb:>13.0f}")
        near, nov, npy = got["nearest"][0], got["novelty (6)"][0], got["numpy pass"][0]
        peak = max(v[1] for k, v in got.items() if k != "numpy pass")
        print(f"\npeak RSS of wdb commands: {peak:.0f} MB (target <= 1536)")
        print(f"nearest / numpy:      {near / npy:.2f}x (target <= 3)")
        print(f"novelty(6) / nearest: {nov / near:.2f}x (target <= 1.5)")
        print(json.dumps({k: {"s": round(v[0], 3), "mb": round(v[1])} for k, v in got.items()}))
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
