"""``wdb demo`` and ``wdb reproduce METHOD``: the whole study, end to end, on a laptop.

For each method (Hyper-Representations, G.pt, HyperDiffusion, P-diff): train its zoo
(``wdb zoo train``), ingest it, evaluate it, fit the generator on the zoo's training selection and
sample, draw the paper's baselines in the same weight space, evaluate the samples, and run the
``memorization`` analysis; then the experiments that fit the time budget and one report.

Every step first checks whether its output already exists (a zoo in the catalog, a finished
generator run with the same method + training selection + size, a baseline with the same σ, an
analysis record for the same generator run) and skips it, so a rerun after an interruption
continues where it stopped. A method whose task or generator module is missing, or that fails,
is reported and skipped; the rest continues.

The methods, their tasks, their noise baselines and their sizes come from the generator registry
(``wdb.study.generate.MethodInfo``, one ``INFO`` per generator module): nothing here names a method.
Sizes (``MethodInfo.plans``): ``demo`` is tuned to finish all four methods in ≲ 15 minutes on 2
cores — small zoos with more runs than ``--size small``, generators at their default architecture
with fewer steps; ``quick`` is the tiny version the tests run; ``default`` uses the CPU-scale
defaults of the generators' docstrings (about 5 minutes per zoo and per generator).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analyses.experiments import find_run
from wdb.plugin import NotFound, WdbError

SIZES = ("quick", "demo", "default")
#: per size, what a method without a plan for it gets (zoo size, samples, baseline samples)
DEFAULT_PLANS: dict[str, dict[str, Any]] = {
    "quick": dict(zoo_size="small", gen={"size": "small"}, n=8, n_baseline=10),
    "demo": dict(zoo_size="small", gen={"size": "small"}, n=50, n_baseline=50),
    "default": dict(zoo_size="default", gen={"size": "default"}, n=100, n_baseline=100),
}


@dataclass
class Plan:
    """Sizes for one method: zoo (size, runs) and generator (overrides, samples)."""

    zoo_size: str
    zoo_runs: int | None
    gen: dict[str, Any]
    n: int
    n_baseline: int
    options: dict[str, dict] = field(default_factory=dict)  # analysis options (engine.run)


QUICK = {"boundary": {"grid": 48}}


def demo_methods() -> list[str]:
    """The study's methods: registered generators that name a task (``MethodInfo.task``), in
    the paper's order. A user's generator joins ``wdb demo`` by declaring one."""
    from wdb.plugin import method_info, study_methods

    return [m for m in study_methods() if method_info(m).task]


def plan(method: str, size: str) -> Plan:
    """The method's plan for ``size`` (``MethodInfo.plans``), the size's defaults otherwise."""
    from wdb.plugin import method_info

    if size not in SIZES:
        raise NotFound(f"unknown demo size '{size}' (known: {', '.join(SIZES)})")
    p = {**DEFAULT_PLANS[size], **(method_info(method).plans.get(size) or {})}
    return Plan(
        str(p["zoo_size"]),
        p.get("zoo_runs"),
        dict(p["gen"]),
        int(p["n"]),
        int(p["n_baseline"]),
        dict(QUICK) if size == "quick" else {},
    )


#: the modeling-factor sweep per demo size: base config (size + overrides) and the variants.
#: At demo size the small HR architecture stays at chance (finding 5 could not be judged), so
#: the sweep uses the default architecture for 300 steps (reconstructions 0.76 accuracy, 46 s
#: per run on one core, measured) and the variants that cost no more than the base.
SWEEPS: dict[str, dict[str, Any]] = {
    "quick": {"size": "small", "overrides": {}, "variants": None},
    "demo": {
        "size": "default",
        "overrides": {"steps": 300},
        "variants": ["shorter 50%", "narrower", "dropout +20%", "input noise"],
    },
    "default": {"size": "default", "overrides": {}, "variants": None},
}


@dataclass
class Log:
    """Progress lines on stderr with the elapsed time; the outcome per method."""

    t0: float = field(default_factory=time.perf_counter)
    outcome: dict[str, str] = field(default_factory=dict)
    quiet: bool = False

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            s = int(time.perf_counter() - self.t0)
            print(f"[demo {s // 60:02d}:{s % 60:02d}] {msg}", file=sys.stderr, flush=True)


def _zoo_name(task: str, size: str, seed: int = 0) -> str:
    from wdb.plugin import zoo_name

    return zoo_name(task, size, seed)


def ensure_zoo(db, method: str, plan: Plan, work: Path, log: Log) -> str:
    """Train + ingest + evaluate the method's zoo unless the catalog already has it."""
    from wdb.plugin import get_task, method_info

    task_name = str(method_info(method).task)
    task = get_task(task_name)
    zoo = _zoo_name(task_name, plan.zoo_size)
    have = db.sql("SELECT count(*) AS n FROM checkpoint_info WHERE zoo = :z", {"z": zoo})[0]["n"]
    if not have:
        folder = work / "zoos" / zoo
        if not (folder / "zoo.json").exists():
            log(
                f"{method}: training zoo {task_name} ({plan.zoo_size}, runs={plan.zoo_runs or 'default'})"
            )
            task.train_zoo(folder, runs=plan.zoo_runs, size=plan.zoo_size, seed=0)
        log(f"{method}: ingesting {folder}")
        db.ingest(folder, zoo=zoo)
    else:
        log(f"{method}: zoo {zoo} already in the database ({have} checkpoints)")
    _evaluate(db, f"zoo = '{zoo}' AND kind = 'training'", log, f"{method}: zoo")
    return zoo


def _evaluate(db, where: str, log: Log, what: str) -> None:
    t = time.perf_counter()
    res = db.evaluate(where=where)
    n = getattr(res, "evaluated", None) or (res.get("evaluated") if isinstance(res, dict) else None)
    log(f"{what}: evaluated{f' {n}' if n is not None else ''} ({time.perf_counter() - t:.0f} s)")


def ensure_generated(db, method: str, plan: Plan, selection: str, log: Log) -> int:
    found = find_run(db, method, selection, {**plan.gen, "n": plan.n})
    if found is not None:
        log(f"{method}: reusing generator run {found}")
        return found
    log(f"{method}: fitting the generator ({plan.gen}) and drawing {plan.n} samples")
    rep = db.generate(method, train=selection, n=plan.n, seed=0, overrides=dict(plan.gen))
    log(f"{method}: generator run {rep.generator_run_id} done in {rep.wall_time_s:.0f} s")
    return int(rep.generator_run_id)


def ensure_baselines(db, method: str, plan: Plan, selection: str, gid: int, log: Log) -> list[int]:
    """The paper's baselines for this method (``MethodInfo``), in the same weight space."""
    from wdb.plugin import method_info

    info = method_info(method)
    src = (
        f"generator_run_id = {gid} AND kind = 'reconstructed'"
        if info.reference == "reconstructed"
        else selection
    )
    jobs: list[tuple[str, dict]] = []
    for s in info.noise_sigmas:
        over = {"size": "small", "sigma": s, "select": info.noise_select}
        if info.noise_ref_std:
            over["ref_std"] = info.noise_ref_std
        jobs.append(("noise", over))
    for b in info.extra_baselines:
        over = {"size": "small"}
        if b == "average":  # P-diff's averaged models: the mean of 16 (or all) training models
            n_train = db.sql(f"SELECT count(*) AS n FROM checkpoint_info WHERE {selection}")
            over["k"] = int(min(16, n_train[0]["n"]))
        jobs.append((b, over))
    out = []
    for b, over in jobs:
        found = find_run(
            db, b, src, {**{k: v for k, v in over.items() if k != "size"}, "n": plan.n_baseline}
        )
        if found is None:
            rep = db.generate(b, train=src, n=plan.n_baseline, seed=0, overrides=over)
            found = int(rep.generator_run_id)
            log(f"{method}: baseline {b} {over} → generator run {found}")
        out.append(found)
    return out


def run_method(db, method: str, size: str, out: Path, work: Path, log: Log) -> dict:
    """Zoo → generator → baselines → evaluation → memorization analysis, for one method."""
    from analyses import engine
    from wdb.plugin import method_info

    p = plan(method, size)
    zoo = ensure_zoo(db, method, p, work, log)
    selection = f"zoo = '{zoo}' AND kind = 'training'"
    split = method_info(method).train_split
    if split:
        selection += f" AND split = '{split}'"
    gid = ensure_generated(db, method, p, selection, log)
    ensure_baselines(db, method, p, selection, gid, log)
    _evaluate(
        db,
        f"zoo = '{zoo}' AND kind IN ('generated', 'baseline', 'reconstructed')",
        log,
        f"{method}: samples",
    )
    rec_path = out / f"memorization_{method}.json"
    ctx = engine.resolve_context(db, method)
    if rec_path.exists():
        old = json.loads(rec_path.read_text()).get("context", {})
        if old.get("generator_run") == ctx.gen and old.get("baselines") == ctx.baselines:
            log(f"{method}: analysis already up to date ({rec_path.name})")
            return json.loads(rec_path.read_text())
    log(f"{method}: running the memorization analysis")
    rec = engine.run(db, "memorization", method=method, out=out, options=p.options)
    log(
        f"{method}: {len(rec['figures'])} figures, {len(rec['tables'])} tables "
        f"({rec['wall_time_s']:.0f} s)"
    )
    return rec


def _available(method: str) -> str | None:
    """Why a method cannot run here (not registered, module or task missing), or None."""
    from wdb.plugin import get_method, get_task, method_info

    try:
        get_method(method)
    except (WdbError, ImportError) as exc:
        return f"generator '{method}' unavailable: {exc}"
    task = method_info(method).task
    if not task:
        return f"generator '{method}' names no task (MethodInfo.task), so the demo has no zoo"
    try:
        get_task(task)
    except (WdbError, ImportError) as exc:
        return f"task {task} unavailable: {exc}"
    return None


def demo(
    db,
    methods: list[str] | None = None,
    size: str = "demo",
    out: str | Path | None = None,
    experiments: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run every available method end to end, the experiments, and the report.

    Into a log (stderr not a terminal) the fits and samplers report a line with rate and ETA at
    least every 10 s (``WDB_PROGRESS=lines``) unless ``WDB_PROGRESS`` says otherwise: a demo that
    is silent for minutes looks hung.
    """
    lines = not quiet and "WDB_PROGRESS" not in os.environ and not sys.stderr.isatty()
    if lines:
        os.environ["WDB_PROGRESS"] = "lines"
    try:
        return _demo(db, methods, size, out, experiments, quiet)
    finally:
        if lines:
            os.environ.pop("WDB_PROGRESS", None)


def _demo(
    db,
    methods: list[str] | None,
    size: str,
    out: str | Path | None,
    experiments: bool,
    quiet: bool,
) -> dict[str, Any]:
    from analyses import experiments as exps
    from analyses.api import default_out
    from analyses.report import build

    if size not in SIZES:
        raise NotFound(f"unknown demo size '{size}' (known: {', '.join(SIZES)})")
    out = Path(out) if out else default_out(db)
    work = out.parent
    (out / "figures").mkdir(parents=True, exist_ok=True)
    log = Log(quiet=quiet)
    todo = list(methods or demo_methods())
    log(f"database {db.path}, report {out}, size '{size}', methods {', '.join(todo)}")
    for m in todo:
        why = _available(m)
        if why:
            log(f"{m}: SKIPPED — {why}")
            log.outcome[m] = f"skipped: {why}"
            continue
        try:
            run_method(db, m, size, out, work, log)
            log.outcome[m] = "done"
        except Exception as exc:  # noqa: BLE001 - one method failing must not stop the others
            log(f"{m}: FAILED — {type(exc).__name__}: {exc}")
            if not quiet:
                traceback.print_exc(limit=3, file=sys.stderr)
            log.outcome[m] = f"failed: {type(exc).__name__}: {exc}"
    if experiments:
        exp_size = "small"
        for name, method, needs in (
            ("symmetry", "hyperrep", "hyperrep"),
            ("modeling-factors", "hyperrep", "hyperrep"),
            ("hd-augmentation", "hyperdiffusion", "hyperdiffusion"),
        ):
            key = f"experiment {name}"
            if log.outcome.get(needs) != "done":
                log.outcome[key] = f"skipped: {needs} did not run"
                continue
            rec_path = out / f"experiment_{name}_{method}.json"
            if rec_path.exists():
                log(f"{key}: already done ({rec_path.name})")
                log.outcome[key] = "done"
                continue
            try:
                log(f"{key}: running")
                n = plan(method, "quick").n
                if name == "symmetry":
                    exps.symmetry(db, out)
                elif name == "modeling-factors":
                    sweep = SWEEPS[size]
                    exps.modeling_factors(
                        db,
                        method,
                        out,
                        size=sweep["size"],
                        n=n,
                        variants=sweep["variants"],
                        overrides=sweep["overrides"],
                    )
                else:
                    exps.hd_augmentation(db, out, size=exp_size, n=n)
                log.outcome[key] = "done"
            except Exception as exc:  # noqa: BLE001
                log(f"{key}: FAILED — {type(exc).__name__}: {exc}")
                log.outcome[key] = f"failed: {type(exc).__name__}: {exc}"
    log("building the report")
    rep = build(db, out)
    log(f"report: {rep['html']}")
    log(f"summary: {rep['summary']}")
    return {
        "outcome": log.outcome,
        "report": rep,
        "wall_time_s": round(time.perf_counter() - log.t0, 1),
    }


def reproduce(db, method: str, size: str = "demo", out: str | Path | None = None) -> dict[str, Any]:
    """One method end to end (zoo, generator, baselines, evaluation, analysis) and the report."""
    if method not in demo_methods():
        raise NotFound(f"unknown method '{method}' (known: {', '.join(demo_methods())})")
    why = _available(method)
    if why:
        raise NotFound(f"{method}: {why}")
    return demo(db, [method], size=size, out=out, experiments=False)
