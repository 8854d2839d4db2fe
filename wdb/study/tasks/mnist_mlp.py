"""mnist-mlp: the G.pt zoo. MLP 784→10→ReLU→10 (7,960 params) on MNIST-5k (4000/1000).

Recipe (METHODS.md, G.pt): SGD Nesterov 0.9, lr 0.1 cosine, weight decay 5e-4, batch 128,
25 epochs; every run has its own seed (initialisation and data order). All runs train at once as
one stacked model (``torch.bmm``), which is exact: the loss is the sum of the per-run mean losses
and SGD acts elementwise, so each run gets exactly its own gradient and update.

Checkpoints per run: initialisation (step 0), random steps drawn per run, and the final step,
each with test loss and accuracy in the manifest. CPU-scale deviations: 300 runs (250 train /
50 test) with ~50 checkpoints each instead of many more runs with ~200.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from wdb.study.tasks.base import (
    SGD,
    ClassifierTask,
    ZooWriter,
    check_size,
    classifier_metrics,
    cosine_lr,
    mnist_split,
    run_splits,
)

SIZES = {
    # runs, epochs, checkpoints per run
    "small": dict(runs=12, epochs=3, ckpts=5),
    "default": dict(runs=300, epochs=25, ckpts=50),
}
BATCH = 128


def init_params(n: int, seeds: list[int]) -> dict:
    """Stacked PyTorch-default Linear init (U(±1/sqrt(fan_in))), one generator per run seed."""
    import torch

    out = {k: [] for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")}
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        for name, shape, fan_in in (
            ("fc1.weight", (10, 784), 784),
            ("fc1.bias", (10,), 784),
            ("fc2.weight", (10, 10), 10),
            ("fc2.bias", (10,), 10),
        ):
            bound = 1.0 / math.sqrt(fan_in)
            out[name].append((torch.rand(shape, generator=g) * 2 - 1) * bound)
    return {k: torch.stack(v) for k, v in out.items()}


def forward(p: dict, X):
    """Logits ``[n, T, 10]`` of stacked models ``p`` on ``X`` (``[T, 784]`` shared or ``[n, T, 784]``)."""
    import torch

    if X.dim() == 2:
        h = torch.einsum("td,nhd->nth", X, p["fc1.weight"])
    else:
        h = torch.bmm(X, p["fc1.weight"].transpose(1, 2))
    h = torch.relu(h + p["fc1.bias"][:, None])
    return torch.bmm(h, p["fc2.weight"].transpose(1, 2)) + p["fc2.bias"][:, None]


class MnistMLP(ClassifierTask):
    name = "mnist-mlp"

    def build_model(self):
        import torch.nn as nn

        class MLP(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = nn.Linear(784, 10)
                self.fc2 = nn.Linear(10, 10)

            def forward(self, x):
                return self.fc2(self.fc1(x.flatten(1)).relu())

        return MLP()

    def data(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        return mnist_split(split)

    def _params(self, rows: np.ndarray) -> dict:
        import torch

        arrays = {}
        t = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        for e in self.layout().entries:
            arrays[e.name] = t[:, e.offset : e.stop].reshape(len(rows), *e.shape)
        return arrays

    def logits(self, rows: np.ndarray, X: np.ndarray, context=None, batch: int = 256):
        import torch

        Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        out = []
        with torch.no_grad():
            for i in range(0, len(rows), batch):
                out.append(forward(self._params(rows[i : i + batch]), Xt))
        return torch.cat(out) if out else torch.empty(0, len(X), 10)

    def train_zoo(
        self, out: Path, runs: int | None = None, size: str = "default", seed: int = 0
    ) -> Path:
        """Train every run at once; write the zoo folder (see ``wdb.study.tasks.base``)."""
        import torch
        import torch.nn.functional as F

        from wdb.progress import progress

        check_size(size)
        cfg = SIZES[size]
        n = int(runs or cfg["runs"])
        Xtr, ytr = (torch.from_numpy(a) for a in self.data("train"))
        Xte, yte = self.data("test")
        Xte_t = torch.from_numpy(Xte)
        steps_per_epoch = len(Xtr) // BATCH
        total = steps_per_epoch * cfg["epochs"]
        split = run_splits(n, max(1, round(n / 6)), seed)
        seeds = [seed * 100_000 + i for i in range(n)]
        rngs = [np.random.default_rng(s) for s in seeds]
        # checkpoint steps: 0, random steps, final — drawn per run
        k = min(cfg["ckpts"], total + 1)
        save_at: dict[int, list[int]] = {}
        for r, rng in enumerate(rngs):
            mid = rng.choice(np.arange(1, total), size=max(0, k - 2), replace=False)
            for s in [0, total, *mid.tolist()]:
                save_at.setdefault(int(s), []).append(r)
        params = {k_: v.requires_grad_() for k_, v in init_params(n, seeds).items()}
        opt = SGD(params.values(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        writer = ZooWriter(out, self.name, size, seed)
        names = [f"{writer.zoo}-{i:04d}" for i in range(n)]
        configs = [
            {
                "task": self.name,
                "seed": seeds[i],
                "zoo_seed": seed,
                "optimizer": "sgd-nesterov",
                "lr": 0.1,
                "weight_decay": 5e-4,
                "batch": BATCH,
                "epochs": cfg["epochs"],
            }
            for i in range(n)
        ]
        order = None
        bar = progress(range(total + 1), total=total + 1, desc=f"train {self.name} x{n}")
        for step in bar:
            if step in save_at:
                who = save_at[step]
                with torch.no_grad():
                    sub = {k_: v[who].detach() for k_, v in params.items()}
                    m = classifier_metrics(forward(sub, Xte_t), yte)
                for j, r in enumerate(who):
                    writer.add(
                        names[r],
                        step,
                        {k_: v[j] for k_, v in sub.items()},
                        configs[r],
                        split=split[r],
                        accuracy=m["accuracy"][j],
                        loss=m["loss"][j],
                    )
            if step == total:
                break
            b = step % steps_per_epoch
            if b == 0:  # a fresh permutation per run and epoch
                order = torch.from_numpy(np.stack([rng.permutation(len(Xtr)) for rng in rngs]))
            idx = order[:, b * BATCH : (b + 1) * BATCH]
            logits = forward(params, Xtr[idx])
            loss = (
                F.cross_entropy(logits.reshape(-1, 10), ytr[idx].reshape(-1), reduction="sum")
                / BATCH
            )
            loss.backward()
            opt.step(cosine_lr(0.1, step, total))
            if step % 50 == 0:
                bar.set_postfix(loss=float(loss.detach()) / n)
        return writer.close(runs=n, epochs=cfg["epochs"], steps=total)
