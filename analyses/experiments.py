"""The paper's further experiments (Zeng et al. 2025, "Generative Modeling of Weights:
Generalization or Memorization?"): modeling factors and weight-space symmetries.

``wdb experiment NAME`` runs one and writes its table ``x_<name>_<method>`` into the catalog,
a figure, and a result record ``<out>/experiment_<name>_<method>.json`` that the report picks up.

- ``modeling-factors``: retrain a method with each variant of its config (shorter training 33% /
  50%, wider, narrower, deeper, shallower, dropout +0.1 / +0.2, input noise) on the same training
  selection as its latest run, evaluate the samples, and tabulate accuracy (MMD for shapes) against
  mean min-L2 novelty. A variant whose knob the method's config does not have is reported as
  skipped — a method's config keys are its own, so the mapping below names them explicitly.
- ``symmetry``: function-preserving permutation and positive scaling (``wdb.query.symmetry``) of
  training weights, passed with the originals through the trained Hyper-Representations
  autoencoder; mean accuracy difference and 1 − prediction agreement of the two reconstructions,
  against pairs of reconstructions of different models.
- ``hd-augmentation``: HyperDiffusion retrained with 1, 3, 7 random permutations per MLP; the
  fraction of non-empty meshes and the Chamfer distance of its samples.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from analyses import relations as rel
from analyses.engine import create_table_as, write_table
from wdb.plugin import BadInput, NotFound, WdbError, json_ids, json_text

EXPERIMENTS = ("modeling-factors", "symmetry", "hd-augmentation")


def _latest(db, method: str) -> dict:
    variant = json_text(db, "config", "variant")
    rows = db.sql(
        "SELECT * FROM generator_runs WHERE method = :m AND status = 'done' "
        f"AND {variant} IS NULL ORDER BY id DESC LIMIT 1",
        {"m": method},
    )
    if not rows:
        raise NotFound(f"no finished '{method}' generator run (generate one first, or `wdb demo`)")
    return rows[0]


def _evaluate(db, where: str, evaluate: Callable | None = None) -> None:
    """Evaluate what ``where`` selects (skips what is already evaluated)."""
    if evaluate is not None:  # a task wdb does not know (tests' toy task)
        evaluate(db, where)
        return
    try:
        db.evaluate(where=where)
    except (ImportError, ModuleNotFoundError) as exc:
        raise WdbError(f"evaluation is not available: {exc}") from None


# -- modeling factors --------------------------------------------------------------------------
def _scale_keys(keys: tuple[str, ...], factor: float, minimum: int = 1) -> Callable[[dict], dict]:
    def f(cfg: dict) -> dict:
        return {
            k: max(minimum, int(round(cfg[k] * factor)))
            for k in keys
            if isinstance(cfg.get(k), int) and not isinstance(cfg.get(k), bool)
        }

    return f


def _add_keys(keys: tuple[str, ...], delta: float, minimum: float = 0) -> Callable[[dict], dict]:
    def f(cfg: dict) -> dict:
        out = {}
        for k in keys:
            v = cfg.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[k] = type(v)(max(minimum, v + delta))
        return out

    return f


STEP_KEYS = ("steps", "train_steps", "ae_steps", "ddpm_steps")
WIDTH_KEYS = ("width", "channels", "denoiser_channels")
DEPTH_KEYS = ("depth", "enc_blocks", "dec_blocks", "blocks")

VARIANTS: dict[str, Callable[[dict], dict]] = {
    "shorter 33%": _scale_keys(STEP_KEYS, 0.33),
    "shorter 50%": _scale_keys(STEP_KEYS, 0.5),
    "wider": _scale_keys(WIDTH_KEYS, 2.0),
    "narrower": _scale_keys(WIDTH_KEYS, 0.5, minimum=2),
    "deeper": _add_keys(DEPTH_KEYS, 1, minimum=1),
    "shallower": _add_keys(DEPTH_KEYS, -1, minimum=1),
    "dropout +10%": _add_keys(("dropout",), 0.1),
    "dropout +20%": _add_keys(("dropout",), 0.2),
    "input noise": lambda cfg: (
        {"input_noise": max(0.01, 10 * float(cfg["input_noise"]))}
        if "input_noise" in cfg
        else {"aug_noise": 2 * float(cfg["aug_noise"])}
        if "aug_noise" in cfg
        else {}
    ),
}


def _reference_sql(db, method: str, gid: int) -> str:
    """The reference set generator run ``gid`` recorded; for runs without one (wdb schema before
    0009), its training checkpoints or, for autoencoders, its reconstructions."""
    from wdb.plugin import method_info, recorded_references, reference_selection

    if recorded_references(db, [gid]):
        return reference_selection(gid)
    if method_info(method).reference == "reconstructed":
        return f"generator_run_id = {gid} AND kind = 'reconstructed'"
    ids = json_ids(db, "g.train_ids", f"generator_runs g WHERE g.id = {gid}")
    return f"checkpoint_id IN {ids} AND kind = 'training'"


def _variant_stats(db, method: str, gid: int, field: bool) -> dict[str, float]:
    gen = f"generator_run_id = {gid} AND kind = 'generated'"
    ref = _reference_sql(db, method, gid)
    rid = rel.novelty(db, gen, ref, metric="l2")
    s = db.sql(
        f"SELECT avg(min_l2) AS l2, avg(accuracy) AS acc, count(*) AS n FROM similarity "
        f"WHERE relation_id = {rid}"
    )[0]
    perf = s["acc"]
    if field:  # MMD: mean over training shapes of the min Chamfer to the generated shapes
        d = rel.shape_distances(db, ref, gen)
        perf = float(np.mean([v[0] for v in d.values()])) if d else float("nan")
    return {"mean_min_l2": s["l2"], "performance": perf, "n": s["n"]}


def modeling_factors(
    db,
    method: str,
    out: Path,
    size: str = "small",
    n: int | None = None,
    variants: list[str] | None = None,
    evaluate: Callable | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Retrain ``method`` per variant, evaluate, tabulate performance vs novelty.

    The base is the method's ``size`` config with ``overrides`` on top (e.g. the default
    architecture with fewer steps, which still learns where ``size=small`` does not); each
    variant changes one knob of that base. ``evaluate(db, where)`` replaces ``db.evaluate`` for
    tasks wdb does not know (tests)."""
    from analyses import figures as figs

    base = _latest(db, method)
    from wdb.plugin import get_method, resolve_config

    mod = get_method(method)
    fixed = {"size": size, **(overrides or {})}
    cfg = resolve_config(mod, dict(fixed))
    field = _is_field(db, base)
    n = int(n or cfg.get("n", 8))
    rows, notes = [], []
    todo = ["base", *(variants or VARIANTS)]
    for v in todo:
        over = {} if v == "base" else VARIANTS[v](cfg)
        if v != "base" and not over:
            notes.append(f"{v}: skipped ({method}'s config has no knob for it)")
            continue
        # the base is retrained at the variants' size too (the method's latest run may use other
        # steps or widths), so every row differs from "base" by exactly its own knob
        gid = find_run(db, method, base["train_selection"], {**fixed, **over}, v)
        if gid is None:
            t0 = time.perf_counter()
            r = db.generate(
                method, train=base["train_selection"], n=n, seed=0, overrides={**fixed, **over}
            )
            gid = r.generator_run_id
            _tag_variant(db, gid, v)
            notes.append(f"{v}: trained in {time.perf_counter() - t0:.1f} s with {over}")
        _evaluate(db, f"generator_run_id = {gid} AND kind <> 'model'", evaluate)
        st = _variant_stats(db, method, gid, field)
        rows.append({"variant": v, "overrides": json.dumps(over), "generator_run_id": gid, **st})
    name = f"x_modeling_factors_{method}"
    write_table(db, name, {k: [r[k] for r in rows] for k in rows[0]})
    perf = "mmd" if field else "accuracy"
    path = Path(out) / "figures" / f"experiment_modeling_factors_{method}.png"
    data = db.sql(f"SELECT * FROM {name}")
    figs.scatter(
        [dict(r, selection=r["variant"]) for r in data],
        path,
        title=f"{method}: modeling factors — {perf} vs novelty",
        x="mean_min_l2",
        y="performance",
        xlabel="mean min-L2 to training, weight units (higher = more novel)",
        ylabel="MMD to training shapes (lower = better)"
        if field
        else "mean test accuracy (fraction correct)",
    )
    return _record(
        out,
        "modeling-factors",
        method,
        name,
        f"SELECT * FROM {name}",
        "Each variant retrains the generator on the same training selection; novelty = mean min-L2 "
        "of its samples to the training set, performance = mean accuracy (MMD for shapes).",
        notes,
        [{"name": "modeling_factors", "path": str(path.relative_to(out)), "table": name}],
        performance=perf,
    )


def _is_field(db, gen_run: dict) -> bool:
    one = db.sql(
        f"SELECT space_id FROM checkpoint_info WHERE generator_run_id = {int(gen_run['id'])} LIMIT 1"
    )
    if not one:
        return False
    try:
        from wdb.plugin import task_for_space

        task = task_for_space(db.space(int(one[0]["space_id"])))
    except (ImportError, WdbError):
        return False
    return getattr(task, "kind", "") == "field"


def _tag_variant(db, gid: int, variant: str) -> None:
    """Record the variant in the generator run's config so reruns can find it."""
    row = db.sql(f"SELECT config FROM generator_runs WHERE id = {int(gid)}")[0]
    cfg = json.loads(row["config"] or "{}")
    cfg["variant"] = variant
    db.sql(
        "UPDATE generator_runs SET config = :c WHERE id = :i",
        {"c": json.dumps(cfg), "i": int(gid)},
        write=True,
    )


def find_run(
    db, method: str, selection: str, config: dict[str, Any], variant: str | None = None
) -> int | None:
    """The newest finished ``method`` run on ``selection`` whose config has every key of
    ``config`` and is tagged ``variant`` (None: an untagged run): what reruns reuse."""
    rows = db.sql(
        "SELECT id, config FROM generator_runs WHERE method = :m AND status = 'done' AND "
        "train_selection = :s ORDER BY id DESC",
        {"m": method, "s": selection},
    )
    for r in rows:
        cfg = json.loads(r["config"] or "{}")
        if cfg.get("variant") == variant and all(cfg.get(k) == v for k, v in config.items()):
            return int(r["id"])
    return None


# -- symmetry ----------------------------------------------------------------------------------
def symmetry(db, out: Path, n_models: int = 40, seed: int = 0, task: Any = None) -> dict[str, Any]:
    """Permuted / scaled training weights through the HR autoencoder vs different models."""
    from analyses import figures as figs
    from wdb.plugin import get_method
    from wdb.plugin import symmetry as sym
    from wdb.plugin import task_for_space as for_space

    method = get_method("hyperrep")
    if not hasattr(method, "reconstructor"):
        raise NotFound("the symmetry experiment needs a generator with a reconstructor (hyperrep)")
    base = _latest(db, "hyperrep")
    if base["model_checkpoint_id"] is None:
        raise NotFound(f"hyperrep run {base['id']} stored no autoencoder")
    cfg = json.loads(base["config"] or "{}")
    model = db.state_dict(int(base["model_checkpoint_id"]))
    ids = json.loads(base["train_ids"])
    rng = np.random.default_rng(seed)
    ids = sorted(rng.choice(ids, size=min(n_models, len(ids)), replace=False).tolist())
    info = db.checkpoints(f"checkpoint_id IN ({','.join(map(str, ids))})")
    space = db.space(int(info[0]["space_id"]))
    layout = space.layout
    task = task or for_space(space, db)
    if task is None:
        raise NotFound(f"no task evaluates space {space.name}")
    W = db.weights(ids)
    reconstruct = method.reconstructor(model, layout, cfg)

    perms = [sym.random_permutations(layout, rng) for _ in ids]
    P = np.stack([sym.permute(W[i], layout, perms[i]) for i in range(len(ids))])
    hidden = sym.hidden_sizes(layout)
    scales = [[np.exp(rng.uniform(np.log(0.5), np.log(2.0), h)) for h in hidden] for _ in ids]
    S = np.stack([sym.scale(W[i], layout, scales[i]) for i in range(len(ids))])
    # the transforms must preserve function: check on the original weights first. Positive
    # scaling holds for (Leaky)ReLU nets only; a tanh / max-pool CNN breaks it, so it is dropped.
    X0, _ = task.data(getattr(task, "eval_split", "test"))
    preserved = {}
    transforms = {"permuted": P, "scaled": S}
    for k, M in list(transforms.items()):
        pr = task.predict(np.stack([W[0], M[0]]), X0)
        preserved[k] = float((pr[0] == pr[1]).mean())
        if preserved[k] < 0.999:
            transforms.pop(k)
    res = {k: task.evaluate_rows(reconstruct(M)) for k, M in (("original", W), *transforms.items())}
    acc = {k: np.asarray(v["accuracy"], float) for k, v in res.items()}
    pred = {k: np.asarray(v["predictions"]) for k, v in res.items()}

    def agree(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a == b).mean(1)

    other = np.roll(np.arange(len(ids)), 1)
    rows = [
        {
            "comparison": k,
            "n_pairs": len(ids),
            "accuracy_diff": float(np.abs(acc["original"] - acc[k]).mean()),
            "disagreement": float(1 - agree(pred["original"], pred[k]).mean()),
        }
        for k in transforms
    ]
    rows.append(
        {
            "comparison": "different models",
            "n_pairs": len(ids),
            "accuracy_diff": float(np.abs(acc["original"] - acc["original"][other]).mean()),
            "disagreement": float(1 - agree(pred["original"], pred["original"][other]).mean()),
        }
    )
    for r in rows:
        r["reconstruction_accuracy"] = float(acc["original"].mean())
    name = "x_symmetry_hyperrep"
    write_table(db, name, {k: [r[k] for r in rows] for k in rows[0]})
    path = Path(out) / "figures" / "experiment_symmetry_hyperrep.png"
    long = [
        {"comparison": r["comparison"], "measure": m, "value": 100 * r[k]}
        for r in rows
        for m, k in (("accuracy diff (%)", "accuracy_diff"), ("1 − agreement (%)", "disagreement"))
    ]
    figs.bars(
        long,
        path,
        title="HR autoencoder: reconstructions of transformed weights",
        x="comparison",
        y="value",
        hue="measure",
        xlabel="weights compared (original vs transformed, or two different models)",
        ylabel="% of test items",
    )
    notes = [
        "prediction agreement of original vs transformed weights (before the autoencoder): "
        + ", ".join(f"{k} {v:.4f}" for k, v in preserved.items())
        + (
            ""
            if "scaled" in transforms
            else " — scaling is not function-preserving for this task (tanh / max-pool): not tested"
        ),
        f"{len(ids)} training models of generator run {base['id']}; scales log-uniform in [0.5, 2]",
    ]
    return _record(
        out,
        "symmetry",
        "hyperrep",
        name,
        f"SELECT * FROM {name}",
        "Original and transformed training weights through the HR autoencoder: mean |accuracy "
        "difference| and 1 − prediction agreement of the two reconstructions, vs pairs of "
        "reconstructions of different models.",
        notes,
        [{"name": "symmetry", "path": str(path.relative_to(out)), "table": name}],
    )


def hd_augmentation(
    db, out: Path, size: str = "small", n: int | None = None, perms: tuple[int, ...] = (0, 1, 3, 7)
) -> dict[str, Any]:
    """HyperDiffusion with 0/1/3/7 permutations per MLP: non-empty meshes and Chamfer."""
    from analyses import figures as figs

    base = _latest(db, "hyperdiffusion")
    rows, notes = [], []
    for k in perms:
        v = f"augment {k}"
        over = {"size": size, "augment_permutations": k}
        gid = find_run(db, "hyperdiffusion", base["train_selection"], over, v)
        if gid is None:
            r = db.generate(
                "hyperdiffusion", train=base["train_selection"], n=n, seed=0, overrides=over
            )
            gid = r.generator_run_id
            _tag_variant(db, gid, v)
        _evaluate(db, f"generator_run_id = {gid} AND kind <> 'model'")
        gen = f"generator_run_id = {gid} AND kind = 'generated'"
        total = db.sql(f"SELECT count(*) AS n FROM checkpoint_info WHERE {gen}")[0]["n"]
        d = rel.shape_distances(db, gen, _reference_sql(db, "hyperdiffusion", int(base["id"])))
        rows.append(
            {
                "augment_permutations": k,
                "generator_run_id": gid,
                "n": total,
                "nonempty_fraction": len(d) / total if total else float("nan"),
                "mean_chamfer_train": float(np.mean([x[0] for x in d.values()]))
                if d
                else float("nan"),
            }
        )
    name = "x_hd_augmentation"
    write_table(db, name, {k: [r[k] for r in rows] for k in rows[0]})
    path = Path(out) / "figures" / "experiment_hd_augmentation.png"
    figs.bars(
        [dict(r, variant=f"+{r['augment_permutations']} perms") for r in rows],
        path,
        title="HyperDiffusion with permutation augmentation",
        x="variant",
        y="nonempty_fraction",
        xlabel="training data: each MLP plus k random permutations of it",
        ylabel="fraction of non-empty meshes (0–1)",
    )
    return _record(
        out,
        "hd-augmentation",
        "hyperdiffusion",
        name,
        f"SELECT * FROM {name}",
        "HyperDiffusion retrained with k random hidden-neuron permutations of each "
        "training MLP added (x2, x4, x8 data).",
        notes,
        [{"name": "hd_augmentation", "path": str(path.relative_to(out)), "table": name}],
    )


def _record(
    out: Path,
    experiment: str,
    method: str,
    table: str,
    sql: str,
    description: str,
    notes: list[str],
    figures: list[dict],
    **extra: Any,
) -> dict[str, Any]:
    from analyses import figures as figs

    rec = {
        "experiment": experiment,
        "method": method,
        "table": table,
        "description": description,
        "notes": notes,
        "figures": [
            dict(
                f,
                title=f"{experiment} ({method})",
                sql=sql,
                axes=figs.LABELS.pop(str(Path(out) / f["path"]), []),
            )
            for f in figures
        ],
        "tables": [
            {
                "name": table,
                "kind": "table",
                "sql": sql,
                "description": description,
                "n_rows": 0,
                "columns": [],
                "preview": [],
            }
        ],
        **extra,
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"experiment_{experiment}_{method}.json").write_text(
        json.dumps(rec, indent=1, default=str)
    )
    return rec


def run(
    db,
    name: str,
    method: str | None = None,
    out: str | Path | None = None,
    size: str = "small",
    n: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run experiment ``name`` (see ``EXPERIMENTS``); writes its record and refreshes the report.

    ``overrides`` (modeling-factors only) adjust the base config every variant starts from."""
    from analyses.api import default_out
    from analyses.report import build

    out = Path(out) if out else default_out(db)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    if name == "modeling-factors":
        if not method:
            raise BadInput("modeling-factors needs --method (hyperrep, gpt or hyperdiffusion)")
        rec = modeling_factors(db, method, out, size=size, n=n, overrides=overrides)
    elif name == "symmetry":
        rec = symmetry(db, out)
    elif name == "hd-augmentation":
        rec = hd_augmentation(db, out, size=size, n=n)
    else:
        raise NotFound(f"unknown experiment '{name}' (known: {', '.join(EXPERIMENTS)})")
    for t in rec["tables"]:
        rows = db.sql(f"SELECT * FROM {t['name']}")
        t.update(n_rows=len(rows), columns=list(rows[0]) if rows else [], preview=rows[:30])
    (out / f"experiment_{name}_{rec['method']}.json").write_text(
        json.dumps(rec, indent=1, default=str)
    )
    rec["report"] = build(db, out)
    return rec


__all__ = ["EXPERIMENTS", "run", "create_table_as"]
