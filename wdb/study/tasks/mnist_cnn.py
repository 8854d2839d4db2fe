"""mnist-cnn: the Hyper-Representations zoo. A small tanh CNN conv-pool-conv-pool-conv-fc-fc.

Architecture (1,296 params): the original zoo's CNN (Schürholt et al.: 8, 6, 4 channels, tanh,
2,464 params on 28×28) at half resolution so that ~100 runs train in minutes on 2 CPU cores:
MNIST-5k images 2×2-average-pooled to 14×14 → conv 1→8 (5×5, pad 2) → max-pool → conv 8→6
(3×3, pad 1) → max-pool → conv 6→4 (2×2) → flatten 16 → fc 16→20 → fc 20→10.

Recipe: Adam lr 3e-3, batch 64, 8 epochs (25 originally: grouped convolutions are the slowest
part of any zoo on a CPU), every run with its own seed (initialisation and data order); the last
5 epochs (4–8) are kept as checkpoints, like the original's epochs 21–25. Runs split 70/30 (``split`` in the manifest). All runs train at once as
one grouped-convolution model: the loss is a sum of per-run losses and Adam acts elementwise, so
each run trains exactly as it would alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wdb.study.tasks.base import (
    Adam,
    ClassifierTask,
    ZooWriter,
    check_size,
    classifier_metrics,
    mnist_split,
    run_splits,
    stacked_init,
    stacked_params,
)

SIZES = {
    "small": dict(runs=8, epochs=3, keep=2),
    "default": dict(runs=100, epochs=8, keep=5),
}
BATCH = 64
LR = 3e-3


def to14(X: np.ndarray) -> np.ndarray:
    """Normalised 784-vectors → ``[N, 1, 14, 14]`` by 2×2 average pooling."""
    return X.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(-1, 1, 14, 14).astype(np.float32)


def forward(p: dict, x):
    """Logits ``[n, B, 10]`` of ``n`` stacked CNNs; ``x`` is ``[B, n, 14, 14]`` (one image per
    model) or ``[B, 1, 14, 14]`` (shared)."""
    import torch
    import torch.nn.functional as F

    n = p["conv1.weight"].shape[0]
    if x.shape[1] == 1 and n > 1:
        x = x.expand(-1, n, -1, -1)
    x = x.contiguous(memory_format=torch.channels_last)  # grouped convs run ~2x faster so

    def conv(h, name, pad):
        w, b = p[f"{name}.weight"], p[f"{name}.bias"]
        return F.conv2d(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), padding=pad, groups=n)

    h = F.max_pool2d(torch.tanh(conv(x, "conv1", 2)), 2)
    h = F.max_pool2d(torch.tanh(conv(h, "conv2", 1)), 2)
    h = torch.tanh(conv(h, "conv3", 0))  # [B, n*4, 2, 2]
    B = h.shape[0]
    h = h.reshape(B, n, -1)
    h = torch.tanh(torch.einsum("bni,noi->bno", h, p["fc1.weight"]) + p["fc1.bias"])
    out = torch.einsum("bni,noi->bno", h, p["fc2.weight"]) + p["fc2.bias"]
    return out.transpose(0, 1)


class MnistCNN(ClassifierTask):
    name = "mnist-cnn"

    def build_model(self):
        import torch.nn as nn

        class CNN(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(1, 8, 5, padding=2)
                self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
                self.conv3 = nn.Conv2d(6, 4, 2)
                self.fc1 = nn.Linear(16, 20)
                self.fc2 = nn.Linear(20, 10)

            def forward(self, x):
                x = x.reshape(-1, 1, 14, 14)
                x = nn.functional.max_pool2d(self.conv1(x).tanh(), 2)
                x = nn.functional.max_pool2d(self.conv2(x).tanh(), 2)
                x = self.conv3(x).tanh().flatten(1)
                return self.fc2(self.fc1(x).tanh())

        return CNN()

    def data(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """14×14 images ``[N, 1, 14, 14]`` and labels (same items as mnist-mlp)."""
        X, y = mnist_split(split)
        return to14(X), y

    def _as_images(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 2 and X.shape[1] == 784:
            return to14(X)
        return X.reshape(-1, 1, 14, 14)

    def logits(self, rows: np.ndarray, X: np.ndarray, context=None, batch: int = 64):
        """``X`` may be 784-vectors (28×28, pooled here) or 14×14 images."""
        import torch

        x = torch.from_numpy(self._as_images(X))
        out = []
        with torch.no_grad():
            for i in range(0, len(rows), batch):
                p = stacked_params(self.layout(), rows[i : i + batch])
                out.append(forward(p, x))
        return torch.cat(out) if out else torch.empty(0, len(x), 10)

    def train_zoo(
        self, out: Path, runs: int | None = None, size: str = "default", seed: int = 0
    ) -> Path:
        import torch
        import torch.nn.functional as F

        from wdb.progress import progress

        check_size(size)
        cfg = SIZES[size]
        n = int(runs or cfg["runs"])
        Xtr, ytr = (torch.from_numpy(a) for a in self.data("train"))
        Xte, yte = self.data("test")
        Xte_t = torch.from_numpy(Xte)
        Xflat = Xtr[:, 0]  # [N, 14, 14]
        spe = len(Xtr) // BATCH
        split = run_splits(n, max(1, round(n * 0.3)), seed)
        seeds = [seed * 100_000 + i for i in range(n)]
        rngs = [np.random.default_rng(s) for s in seeds]
        params = {k: v.requires_grad_() for k, v in stacked_init(self.layout(), seeds).items()}
        opt = Adam(params.values(), lr=LR)
        writer = ZooWriter(out, self.name, size, seed)
        names = [f"{writer.zoo}-{i:04d}" for i in range(n)]
        configs = [
            {
                "task": self.name,
                "seed": seeds[i],
                "zoo_seed": seed,
                "optimizer": "adam",
                "lr": LR,
                "batch": BATCH,
                "epochs": cfg["epochs"],
            }
            for i in range(n)
        ]
        epochs = cfg["epochs"]
        bar = progress(total=epochs * spe, desc=f"train {self.name} x{n}")
        for epoch in range(1, epochs + 1):
            order = torch.from_numpy(np.stack([rng.permutation(len(Xtr)) for rng in rngs]))
            for b in range(spe):
                idx = order[:, b * BATCH : (b + 1) * BATCH]  # [n, B]
                x = Xflat[idx].transpose(0, 1).contiguous()  # [B, n, 14, 14]
                logits = forward(params, x)
                loss = F.cross_entropy(
                    logits.reshape(-1, 10), ytr[idx].reshape(-1), reduction="sum"
                )
                (loss / BATCH).backward()
                opt.step()
                bar.update(1)
            bar.set_postfix(epoch=epoch, loss=float(loss.detach()) / (BATCH * n))
            if epoch > epochs - cfg["keep"]:
                with torch.no_grad():
                    det = {k: v.detach() for k, v in params.items()}
                    m = classifier_metrics(self._logits_chunked(det, Xte_t), yte)
                for r in range(n):
                    writer.add(
                        names[r],
                        epoch,
                        {k: v[r] for k, v in det.items()},
                        configs[r],
                        split=split[r],
                        accuracy=m["accuracy"][r],
                        loss=m["loss"][r],
                    )
        bar.close()
        return writer.close(runs=n, epochs=epochs, kept_epochs=cfg["keep"])

    @staticmethod
    def _logits_chunked(p: dict, x, chunk: int = 50):
        import torch

        n = p["conv1.weight"].shape[0]
        return torch.cat(
            [forward({k: v[i : i + chunk] for k, v in p.items()}, x) for i in range(0, n, chunk)]
        )
