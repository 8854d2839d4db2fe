"""The paper's baselines: checkpoints that need no generator network.

- ``noise``: a selected training checkpoint plus Gaussian noise of std ``sigma`` per parameter.
  The paper adds it to the top-accuracy (Hyper-Representations: top-30% reconstructions) or final
  (G.pt) training checkpoints, or to the training checkpoints themselves (P-diff), with
  σ ∈ {0.06, 0.12} (P-diff), {0.02, 0.04} (HR, HyperDiffusion), {0.05, 0.1} (G.pt, normalised
  space). ``select``: ``top`` (top ``top_frac`` by accuracy; falls back to ``final`` when no
  checkpoint has an accuracy), ``final`` (last step of each run) or ``all``.
- ``average``: the mean of ``k`` = 16 random training checkpoints (P-diff's "averaged" models).
- ``gaussian``: each parameter drawn independently from a normal fitted (mean, std) to its values
  over the training set (P-diff's "gaussian" models).

Deviations from the paper and why:

- σ rescaling: the paper's σ were tuned to its weight scales. Here ``sigma`` is absolute unless
  ``ref_std`` (the overall weight std that the paper's σ was meant for, e.g. 0.538 for G.pt's
  normalised space) is given; then ``sigma_used = sigma * std(training weights) / ref_std``.
  The σ actually used is recorded in the generator run's config as ``sigma_used``.
- Sources for ``noise`` are drawn uniformly with replacement from the selected pool (the paper
  takes up to 100 distinct ones); with a pool smaller than ``n`` some sources repeat, which each
  run's ``source_checkpoint`` records.
"""

from __future__ import annotations

import numpy as np

from wdb.plugin import Samples, TrainingSet, method_namespace


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- noise -------------------------------------------------------------------------------------
def noise_config(size: str) -> dict:
    if size not in ("small", "default"):
        raise ValueError(size)
    return {
        "size": size,
        "n": 10 if size == "small" else 100,
        "sigma": 0.06,
        "ref_std": None,
        "select": "top",
        "top_frac": 0.3,
    }


def _final_per_run(train: TrainingSet) -> np.ndarray:
    last: dict[str, int] = {}
    for i, r in enumerate(train.info):
        j = last.get(r["run"])
        if j is None or r["step"] > train.info[j]["step"]:
            last[r["run"]] = i
    return np.array(sorted(last.values()), dtype=np.int64)


def select_pool(train: TrainingSet, select: str, top_frac: float) -> tuple[np.ndarray, str]:
    """Indices of the checkpoints noise is added to, and the rule actually applied."""
    if select == "all":
        return np.arange(len(train)), "all"
    if select == "top":
        acc = train.metric("accuracy")
        if acc is not None:
            order = np.argsort(-np.nan_to_num(acc, nan=-np.inf), kind="stable")
            keep = max(1, int(round(top_frac * np.isfinite(acc).sum())))
            return np.sort(order[:keep]), "top"
        select = "final"
    if select == "final":
        return _final_per_run(train), "final"
    raise ValueError(f"select must be top, final or all, not '{select}'")


def noise_sample(model, train: TrainingSet, n: int, config: dict, seed: int, load) -> list[Samples]:
    rng = _rng(seed)
    pool, rule = select_pool(train, config["select"], float(config["top_frac"]))
    sigma = float(config["sigma"])
    train_std = float(train.weights.std())
    if config.get("ref_std"):
        sigma = sigma * train_std / float(config["ref_std"])
    record = dict(sigma_used=sigma, train_std=train_std, select_used=rule, pool_size=len(pool))
    src = pool[rng.integers(0, len(pool), size=n)]
    rows = train.weights[src] + sigma * rng.standard_normal((n, train.weights.shape[1]))
    info = [{"source_checkpoint": int(train.ids[i]), "sigma": sigma} for i in src]
    return [Samples(rows.astype(np.float32), kind="baseline", info=info, record=record)]


# -- average -----------------------------------------------------------------------------------
def average_config(size: str) -> dict:
    if size not in ("small", "default"):
        raise ValueError(size)
    return {"size": size, "n": 10 if size == "small" else 100, "k": 16}


def average_sample(
    model, train: TrainingSet, n: int, config: dict, seed: int, load
) -> list[Samples]:
    rng = _rng(seed)
    k = min(int(config["k"]), len(train))
    rows, info = [], []
    for _ in range(n):
        members = np.sort(rng.choice(len(train), size=k, replace=False))
        rows.append(train.weights[members].astype(np.float64).mean(0))
        info.append({"members": [int(train.ids[i]) for i in members]})
    return [
        Samples(
            np.asarray(rows, dtype=np.float32), kind="baseline", info=info, record={"k_used": k}
        )
    ]


# -- gaussian ----------------------------------------------------------------------------------
def gaussian_config(size: str) -> dict:
    if size not in ("small", "default"):
        raise ValueError(size)
    return {"size": size, "n": 10 if size == "small" else 100}


def gaussian_sample(
    model, train: TrainingSet, n: int, config: dict, seed: int, load
) -> list[Samples]:
    rng = _rng(seed)
    w = train.weights.astype(np.float64)
    mu, sd = w.mean(0), w.std(0)
    rows = mu + sd * rng.standard_normal((n, w.shape[1]))
    return [Samples(rows.astype(np.float32), kind="baseline")]


noise = method_namespace("noise", "baseline", noise_config, noise_sample, doc=__doc__)
average = method_namespace("average", "baseline", average_config, average_sample, doc=__doc__)
gaussian = method_namespace("gaussian", "baseline", gaussian_config, gaussian_sample, doc=__doc__)
