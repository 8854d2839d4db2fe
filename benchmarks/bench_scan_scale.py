"""Novelty on many small checkpoints: Dask scaling with pinned single-thread workers, and peak
memory of nearest / novelty (issue 25).

Makes N checkpoints of D float32 values (default 200k x 2k = 1.6 GB raw; a larger store than
the 1 GB budget, so queries take the byte-bounded scan) with numpy, straight into a database
through ``Database.add_checkpoints`` in batches, and T targets (kind 'generated'). Then, each
in a fresh process:

- ``inproc``: novelty of the T targets in process, pinned to one core, one BLAS thread;
- ``dask1`` / ``dask2``: the same on a local Dask cluster of 1 or 2 worker processes, each
  pinned to its own core with one thread (a pre-started cluster: start-up not timed; the
  driver on the last core); each mode runs 3 warm queries in each of ``--rounds`` rounds,
  modes interleaved, and the median is reported (the machine is noisy);
- ``nearest`` / ``novelty``: peak RSS of the CLI commands (``ru_maxrss`` of the process).

Prints dask2 vs dask1 (target >= 1.7x) and dask1 vs inproc (target <= 1.15x), and the peaks
(target <= 1.5 GB).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_scan_scale.py [--n 200000] [--d 2000]
        [--targets 6] [--memory 1GB] [--rounds 2] [--dir /tmp/wdb_bench_scan_scale]
        [--reuse] [--keep]
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

RUN = r"""
import json, os, sys, time
mode, path = sys.argv[1], sys.argv[2]
# in process: core 0; on Dask, worker i takes core i and this driver (client, scheduler) the
# last core, so that one worker has its core to itself as the in-process run has
os.sched_setaffinity(0, {0 if mode == "inproc" else os.cpu_count() - 1})
from threadpoolctl import threadpool_limits
threadpool_limits(1)
from wdb.db import Database
from wdb.query import engine, nearest as wq
db = Database(path)


from distributed.diagnostics.plugin import WorkerPlugin


class Pin(WorkerPlugin):
    # a Dask worker plugin: each worker on its own core, every thread of it (affinity is per
    # thread: pinning only the calling one left the task thread and the pools free to roam)
    def setup(self, worker):
        import os
        core = {int(worker.name) % os.cpu_count()}
        for tid in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(tid), core)


def go():
    t = time.perf_counter()
    rows = wq.novelty(db, "kind = 'generated'", k=1, save=False)
    return time.perf_counter() - t, [r["nearest_id"] for r in rows]


if mode == "inproc":
    go()  # warm, as the workers are
    runs = [go() for _ in range(3)]
else:
    with engine.scope(f"local:{int(mode[-1])}"):
        engine._scope["client"].register_plugin(Pin())
        go()  # warm: workers open the store, import numpy
        runs = [go() for _ in range(3)]
print(json.dumps({"s": [w for w, _ in runs], "nn": runs[0][1]}))
"""

MEASURE = r"""
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(rc, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def make(path: Path, n: int, d: int, targets: int, batch: int = 10_000) -> None:
    """N training rows in runs of 100 steps (a random walk per run) and T generated targets."""
    import numpy as np

    from wdb.db import Database
    from wdb.store.spaces import Layout

    rng = np.random.default_rng(0)
    db = Database(path)
    db.init()
    lay = Layout.from_arrays({"w": np.zeros((d // 4, 4), np.float32)})
    for a in range(0, n, batch):
        m = min(batch, n - a)
        rows = rng.standard_normal((m, d), dtype=np.float32)
        runs = [f"r{(a + i) // 100:05d}" for i in range(m)]
        db.add_checkpoints(
            lay, rows, run=runs, kind="training", steps=[(a + i) % 100 for i in range(m)]
        )
    q = rng.standard_normal((targets, d), dtype=np.float32)
    db.add_checkpoints(lay, q, kind="generated")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=2000)
    ap.add_argument("--targets", type=int, default=6)
    ap.add_argument("--dir", default="/tmp/wdb_bench_scan_scale")
    ap.add_argument(
        "--memory", default=None, help="WDB_MEMORY (default 1GB; the store must exceed it)"
    )
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the three modes (3 runs each)")
    ap.add_argument("--reuse", action="store_true", help="measure a kept folder again")
    ap.add_argument("--keep", action="store_true", help="keep the folder afterwards")
    args = ap.parse_args()
    root = Path(args.dir)
    reuse = args.reuse and (root / "db").exists()
    if root.exists() and not reuse:
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WDB_PROGRESS="0", OMP_NUM_THREADS="1")
    if args.memory:
        env["WDB_MEMORY"] = args.memory
    db = str(root / "db")
    try:
        if not reuse:
            t = time.perf_counter()
            make(root / "db", args.n, args.d, args.targets)
            print(f"made {args.n:,} x {args.d:,} + {args.targets}: {time.perf_counter() - t:.1f} s")
        got: dict = {}
        walls: dict = {}
        for _ in range(args.rounds):  # modes interleaved: each sees the machine's moods alike
            for mode in ("inproc", "dask1", "dask2"):
                out = subprocess.run(
                    [sys.executable, "-c", RUN, mode, db], env=env, capture_output=True, text=True
                )
                if out.returncode:
                    raise SystemExit(f"{mode} failed: {out.stderr.strip().splitlines()[-1]}")
                got[mode] = json.loads(out.stdout.strip().splitlines()[-1])
                walls.setdefault(mode, []).extend(got[mode]["s"])
        for mode, ws in walls.items():
            got[mode]["s"] = sorted(ws)[len(ws) // 2]  # the median
        same = got["inproc"]["nn"] == got["dask1"]["nn"] == got["dask2"]["nn"]
        wdb = [sys.executable, "-c", "from wdb.cli.main import cli; cli()", "--db", db]
        run = f"r{0:05d}"
        peaks = {}
        for name, cmd in {
            "nearest": [*wdb, "query", "nearest", "--run", run, "--k", "3", "--json"],
            "novelty": [*wdb, "query", "novelty", "--targets", "kind = 'generated'", "--no-save",
                        "--json"],
        }.items():  # fmt: skip
            out = subprocess.run(
                [sys.executable, "-c", MEASURE, *cmd], env=env, capture_output=True, text=True,
                check=True,
            ).stdout.split()  # fmt: skip
            if int(out[0]):
                raise SystemExit(f"{name} failed")
            peaks[name] = (float(out[1]), int(out[2]) / 1024)
        print(
            f"\n{args.n:,} x {args.d:,} float32, {args.targets} targets, budget {args.memory or '1GB (default)'}"
        )
        for mode, v in got.items():
            print(f"novelty {mode:<8}{v['s']:>9.2f} s")
        print(f"same neighbours on all three: {same}")
        print(f"dask2 vs dask1:  {got['dask1']['s'] / got['dask2']['s']:.2f}x (target >= 1.7)")
        print(f"dask1 / inproc:  {got['dask1']['s'] / got['inproc']['s']:.2f}x (target <= 1.15)")
        for name, (wall, mb) in peaks.items():
            print(f"{name:<10} CLI {wall:>7.2f} s  peak RSS {mb:.0f} MB (target <= 1536)")
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
