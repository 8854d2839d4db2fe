"""An outside task, written as a researcher would: an MLP 64-16-10 on scikit-learn's 8x8 digits.

wdb needs only ``name``, ``build_model`` and ``data`` from a classifier (``ClassifierTask`` loads
each stored row into the model for evaluation). ``train_zoo`` is the researcher's own training
code, writing their own checkpoint format (read by ``my_reader.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from wdb.plugin import ClassifierTask

TEST_FROM = 1400  # digits 0..1399 train, 1400..1796 test


class DigitsMLP(ClassifierTask):
    name = "digits-mlp"

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    def data(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = (X / 16.0).astype(np.float32)
        return (
            (X[:TEST_FROM], y[:TEST_FROM]) if split == "train" else (X[TEST_FROM:], y[TEST_FROM:])
        )

    def train_zoo(self, out: Path, runs: int | None = None, size: str = "small", seed: int = 0):
        """``runs`` seeds x 3 epochs of SGD, saved as ``runs/<run>/epoch_<k>.npz`` plus a
        ``metrics.json`` per run (the researcher's own format, not wdb's)."""
        X, y = (torch.from_numpy(a) for a in self.data("train"))
        Xt, yt = (torch.from_numpy(a) for a in self.data("test"))
        for r in range(runs or 8):
            torch.manual_seed(seed * 1000 + r)
            model = self.build_model()
            opt = torch.optim.SGD(model.parameters(), lr=0.5)
            folder = Path(out) / "runs" / f"digits-{r:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            metrics = {}
            for epoch in range(1, 4):
                for i in range(0, len(X), 100):
                    loss = nn.functional.cross_entropy(model(X[i : i + 100]), y[i : i + 100])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                with torch.no_grad():
                    acc = float((model(Xt).argmax(-1) == yt).float().mean())
                arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
                np.savez(folder / f"epoch_{epoch}.npz", **arrays)
                metrics[f"epoch_{epoch}"] = {"accuracy": acc}
            (folder / "metrics.json").write_text(json.dumps(metrics))
        return Path(out)


TASK = DigitsMLP
