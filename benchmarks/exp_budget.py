"""Issue 28, item 3: how G.pt and Hyper-Representations scale with their training budget.

For each method, runs the demo's pipeline (its zoo → generator fit + samples → the paper's noise
baselines → evaluation → the ``memorization`` analysis) with the generator's training steps at
1x, 2x, 4x, 8x the demo plan's (``MethodInfo.plans["demo"]``), and records per budget:

- generated accuracy: mean test accuracy of the samples (the analysis's ``summary`` table), next
  to the training reference's;
- the novelty ratio of finding 1 (``analyses/findings.py``): median min-L2 (permutation-aligned for
  G.pt) from each generated model to its nearest training-reference model, divided by the same
  median over the training models (self excluded). The paper: far below 1 (memorisation);
- the wall time of the fit + sampling (``generator_runs.wall_time_s``), and the wall and CPU
  time of the whole budget (zoo on first use, fit, baselines, evaluation, analysis); on a shared
  machine the CPU time is the steadier of the two.

Every finished budget is appended to ``--results`` (JSON) at once, so an interrupted run keeps
what it measured and a rerun skips it; the zoo of each method is built once in ``--keep``. The
table (``budget.md``) and the figure (``budget.png``) are rewritten from all results after each
budget. Not part of the demo: at 8x it takes hours on 2 cores.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/exp_budget.py \\
        --methods gpt hyperrep --budgets 1 2 4 8 --keep /tmp/wdb-budget --out docs
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

#: the config key that holds each method's number of training steps
STEP_KEYS = {"gpt": "train_steps", "hyperrep": "steps"}


def base_steps(method: str, gen: dict) -> int:
    """The demo plan's training steps for ``method`` (its default size's when the plan omits it)."""
    from wdb.plugin import get_method

    key = STEP_KEYS[method]
    if key in gen:
        return int(gen[key])
    return int(get_method(method).default_config(str(gen.get("size", "default")))[key])


def run_budget(root: Path, method: str, budget: float, log) -> dict[str, Any]:
    """One method at one budget in the method's database under ``root``; returns the record."""
    import wdb
    from analyses import demo, engine
    from analyses.experiments import find_run
    from wdb.plugin import method_info

    t0, c0 = time.perf_counter(), time.process_time()
    db = wdb.open(root / method / "db")
    plan = demo.plan(method, "demo")
    steps0 = base_steps(method, plan.gen)
    steps = int(round(steps0 * budget))
    plan.gen = {**plan.gen, STEP_KEYS[method]: steps}
    zoo = demo.ensure_zoo(db, method, plan, root / method, log)
    selection = f"zoo = '{zoo}' AND kind = 'training'"
    if method_info(method).train_split:
        selection += f" AND split = '{method_info(method).train_split}'"
    gid = demo.ensure_generated(db, method, plan, selection, log)
    demo.ensure_baselines(db, method, plan, selection, gid, log)
    demo._evaluate(
        db,
        f"zoo = '{zoo}' AND kind IN ('generated', 'baseline', 'reconstructed')",
        log,
        f"{method}: samples",
    )
    if find_run(db, method, selection, {**plan.gen, "n": plan.n}) != gid:
        raise RuntimeError(f"{method}: generator run {gid} is not the one for {steps} steps")
    # the analysis reads the method's newest finished run: make sure that is this budget's
    newest = db.sql(
        "SELECT max(id) AS g FROM generator_runs WHERE method = :m AND status = 'done'",
        {"m": method},
    )[0]["g"]
    if int(newest) != gid:
        raise RuntimeError(
            f"{method}: run {gid} is not the newest (run {newest}): use a fresh --keep"
        )
    out = root / method / f"report-{steps}"
    rec = engine.run(db, "memorization", method=method, out=out)
    rows = db.sql(f"SELECT * FROM {engine.table_name('memorization', method, 'summary')}")
    s = {r["selection"]: r for r in rows}
    g, t = s.get("generated", {}), s.get("training", {})
    wall = db.sql("SELECT wall_time_s FROM generator_runs WHERE id = :g", {"g": gid})[0]
    ratio = None
    if g.get("median_min_l2") is not None and t.get("median_min_l2"):
        ratio = float(g["median_min_l2"]) / float(t["median_min_l2"])
    return {
        "method": method,
        "budget": budget,
        "steps": steps,
        "generator_run": gid,
        "n_generated": int(g.get("n") or 0),
        "accuracy_generated": _num(g.get("mean_accuracy")),
        "accuracy_training": _num(t.get("mean_accuracy")),
        "median_min_l2_generated": _num(g.get("median_min_l2")),
        "median_min_l2_training": _num(t.get("median_min_l2")),
        "novelty_ratio": ratio,
        "aligned": bool(method_info(method).aligned),
        "fit_sample_s": _num(wall["wall_time_s"]),
        "analysis_s": _num(rec.get("wall_time_s")),
        "budget_wall_s": round(time.perf_counter() - t0, 1),
        "budget_cpu_s": round(time.process_time() - c0, 1),
    }


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


def _fmt(x: Any, nd: int = 3) -> str:
    return "n/a" if x is None else f"{float(x):.{nd}f}"


def write_report(results: list[dict], out: Path, command: str, note: str = "") -> tuple[Path, Path]:
    """``budget.md`` (one table row per method and budget) and ``budget.png`` (accuracy and
    novelty ratio against budget, one line per method) under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wdb.plugin import method_info

    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(results, key=lambda r: (r["method"], r["budget"]))
    lines = [
        "# How G.pt and Hyper-Representations scale with their training budget",
        "",
        "Made by `benchmarks/exp_budget.py` (issue 28, item 3): each method's demo pipeline (zoo, "
        "generator, noise baselines, evaluation, `memorization` analysis) with the generator's "
        "training steps at multiples of the demo plan's. *Accuracy*: mean test accuracy of the "
        "generated models (training reference in brackets). *Novelty ratio*: finding 1's "
        "median min-L2 from a generated model to its nearest training-reference model over the "
        "same median among training models (self excluded; permutation-aligned for G.pt); the "
        "paper reports far below 1 (memorisation). *Fit + sampling*: the generator run's wall "
        "time; *budget*: the whole row (the zoo when first built, fit, baselines, evaluation, "
        "analysis), wall and CPU seconds of this process.",
        "",
        f"Command: `{command}`",
        "",
    ]
    if note:
        lines += [note, ""]
    lines += [
        "| method | budget | steps | accuracy (training) | median min-L2 gen / train | "
        "novelty ratio | fit + sampling s | budget wall s | budget CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {method_info(r['method']).display} | {r['budget']:g}x | {r['steps']} | "
            f"{_fmt(r['accuracy_generated'])} ({_fmt(r['accuracy_training'])}) | "
            f"{_fmt(r['median_min_l2_generated'], 2)} / {_fmt(r['median_min_l2_training'], 2)} | "
            f"{_fmt(r['novelty_ratio'], 2)} | {_fmt(r['fit_sample_s'], 0)} | "
            f"{_fmt(r['budget_wall_s'], 0)} | {_fmt(r.get('budget_cpu_s'), 0)} |"
        )
    md = out / "budget.md"
    png = out / "budget.png"
    lines += ["", f"![accuracy and novelty ratio against budget]({png.name})", ""]
    md.write_text("\n".join(lines))

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for m in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == m]
        x = [r["budget"] for r in mine]
        name = method_info(m).display
        (ln,) = axes[0].plot(
            x, [r["accuracy_generated"] or float("nan") for r in mine], "o-", label=name
        )
        axes[0].plot(
            x,
            [r["accuracy_training"] or float("nan") for r in mine],
            ":",
            color=ln.get_color(),
            label=f"{name} training",
        )
        axes[1].plot(x, [r["novelty_ratio"] or float("nan") for r in mine], "o-", label=name)
    axes[1].axhline(1.0, color="grey", lw=0.8)
    for ax, title in zip(
        axes, ("generated accuracy", "novelty ratio (gen / train min-L2)"), strict=True
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training budget (x demo steps)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return md, png


def load_results(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["gpt", "hyperrep"], choices=sorted(STEP_KEYS))
    ap.add_argument("--budgets", nargs="+", type=float, default=[1, 2, 4, 8])
    ap.add_argument("--keep", default="/tmp/wdb-budget", help="databases and zoos (reused)")
    ap.add_argument("--out", default="docs", help="folder for budget.md and budget.png")
    ap.add_argument("--results", help="results JSON (default: KEEP/budget.json)")
    ap.add_argument("--note", default="", help="a paragraph for budget.md (machine, load)")
    args = ap.parse_args(argv)
    os.environ.setdefault("WDB_PROGRESS", "0")
    from analyses.demo import Log

    root = Path(args.keep)
    root.mkdir(parents=True, exist_ok=True)
    res_path = Path(args.results) if args.results else root / "budget.json"
    results = load_results(res_path)
    command = "python benchmarks/exp_budget.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    log = Log()
    for m in args.methods:
        for b in args.budgets:
            if any(r["method"] == m and r["budget"] == b for r in results):
                log(f"{m} x{b:g}: already measured")
                continue
            rec = run_budget(root, m, b, log)
            log(f"{m} x{b:g}: {json.dumps(rec)}")
            results.append(rec)
            res_path.write_text(json.dumps(results, indent=1))
            write_report(results, Path(args.out), command, args.note)
    write_report(results, Path(args.out), command, args.note)


if __name__ == "__main__":
    main()
