"""Issue 15, item 3: does CPU-scale G.pt memorise with more checkpoints per run and more runs?

Runs the demo's G.pt pipeline (zoo → fit → samples → noise baselines → memorization analysis) in
a fresh database with the ``mnist-mlp`` zoo resized, and prints finding 1's G.pt line (median
min-aligned-L2 to the final training checkpoints, generated vs training, and their ratio; the
paper: far below 1) with the wall time of each stage. The paper's G.pt trains on ~200 checkpoints
per run over tens of thousands of runs; the demo uses 1000 runs x 5 checkpoints (see
benchmarks/exp_budget.py for the generator's training budget).

    .venv/bin/python benchmarks/exp_gpt_scale.py --runs 250 --epochs 3 --ckpts 20 [--steps 1500]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ckpts", type=int, default=5, help="checkpoints kept per run")
    ap.add_argument("--steps", type=int, default=1500, help="G.pt training steps")
    ap.add_argument("--keep", help="keep the database in this folder")
    args = ap.parse_args()
    os.environ.setdefault("WDB_PROGRESS", "0")
    import wdb
    from analyses import demo, findings
    from generators import gpt
    from wdb.study.tasks import mnist_mlp

    # the experiment's zoo and generator sizes, in place of the demo plan's
    mnist_mlp.SIZES["small"] = dict(runs=args.runs, epochs=args.epochs, ckpts=args.ckpts)
    gpt.INFO.plans["demo"] = {
        **gpt.INFO.plans["demo"],
        "zoo_runs": args.runs,
        "gen": {**gpt.INFO.plans["demo"]["gen"], "train_steps": args.steps},
    }
    root = Path(args.keep or tempfile.mkdtemp(prefix="wdb-gpt-"))
    db = wdb.open(root / "db")
    t = time.perf_counter()
    demo.demo(db, methods=["gpt"], size="demo", out=root / "report", experiments=False)
    wall = time.perf_counter() - t
    f1 = findings.finding1(db, ["gpt"])
    n = db.sql("SELECT count(*) AS n FROM checkpoint_info WHERE kind = 'training'")[0]["n"]
    print(
        f"runs {args.runs} x epochs {args.epochs} x ckpts {args.ckpts} ({n} training "
        f"checkpoints), G.pt steps {args.steps}: wall {wall:.0f} s"
    )
    for line in f1.evidence:
        print("  " + line)


if __name__ == "__main__":
    main()
