"""An outside weight generator: the mean of two final training checkpoints plus Gaussian noise.

The contract (``wdb.study.generate.Generator``): ``NAME``, ``KIND``, ``default_config(size)``,
``fit(train, config, seed)``, ``sample(model, train, n, config, seed, load)``. The config is a
typed dataclass here; what sampling derives is returned in ``Samples.record``, never written into
the config. ``INFO`` tells the study how to show it and which noise baselines compare with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wdb.plugin import MethodInfo, Samples, TrainingSet

NAME = "mixup"
KIND = "generated"
INFO = MethodInfo(display="Mixup (outside)", order=50, noise_sigmas=(0.01, 0.03))


@dataclass(frozen=True)
class Config:
    size: str = "default"
    n: int = 12
    sigma: float = 0.01


def default_config(size: str) -> Config:
    return Config(size=size, n=4 if size == "small" else 12)


def fit(train: TrainingSet, config: Config, seed: int) -> None:
    return None  # nothing to learn: sampling mixes training checkpoints directly


def sample(model, train: TrainingSet, n: int, config: Config, seed: int, load) -> list[Samples]:
    rng = np.random.default_rng(seed)
    last: dict[str, int] = {}
    for i, r in enumerate(train.info):
        if r["run"] not in last or r["step"] > train.info[last[r["run"]]]["step"]:
            last[r["run"]] = i
    finals = np.array(sorted(last.values()))
    pairs = np.stack([rng.choice(finals, 2, replace=False) for _ in range(n)])
    rows = train.weights[pairs].mean(1) + config.sigma * rng.standard_normal(
        (n, train.weights.shape[1])
    )
    info = [{"parents": [int(train.ids[a]), int(train.ids[b])]} for a, b in pairs]
    return [Samples(rows.astype(np.float32), info=info, record={"n_parents": int(len(finals))})]
