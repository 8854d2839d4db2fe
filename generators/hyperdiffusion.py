"""HyperDiffusion (Erkoç et al. 2023): unconditional diffusion over neural-field MLP weights.

Every training checkpoint is one occupancy MLP (shapes-occupancy zoo, 27→64→64→1 with a
positional encoding). A transformer denoiser sees one token per weight/bias tensor plus a
timestep token and predicts the clean weights (x0); linear betas 1e-4→2e-2 over 500 steps; DDIM
(eta = 0) over all 500 steps at sampling. Generated MLPs are judged by the shapes they decode to:
``wdb evaluate`` meshes them (marching cubes at logit(0.8), 2048 surface points), and
:func:`nearest_training_chamfer` records each one's Chamfer distance to the nearest training
shape as the metric ``chamfer_train_min``.

Permutation augmentation (the paper's x2/x4/x8 experiment): ``augment_permutations=k`` adds ``k``
random function-preserving hidden-unit permutations (wdb.query.symmetry.permute) of every training MLP
to the data, fixed once per fit. The paper found that this makes HyperDiffusion fail to produce
shapes; the zoo's "first weights" alignment is exactly what the permutations destroy.

Deviations from the original and why:

- Size: width 192, 4 blocks (MLP ratio 2), 1500 AdamW steps, batch 32 on CPU (the original: GPT-style
  transformer of width 1440-2880 on 36,737-parameter MLPs, trained for thousands of epochs on
  GPU), so that fitting and sampling take minutes on 2 cores.
- Normalisation: the original diffuses the raw weights. Here each parameter is standardised by
  its mean and std over the training MLPs (``normalize="param"``, the default; stats returned in
  the state dict as ``norm.mean`` / ``norm.std``; std floored at 1e-3 of the mean std). The
  zoo's MLPs all start from the same first weights and differ by small amounts, and a CPU-sized
  denoiser trained for minutes cannot resolve those differences on the raw scale.
  ``normalize="global"`` (one scale to unit std) is closer to the original.
- Tokens: one linear projection per tensor in and out (the original splits large layers into
  several tokens of at most a fixed size; the 27→64→64→1 MLP's largest tensor has 4096 values).
- Chamfer to training shapes compares against each training shape's ground-truth cloud (as the
  paper does), not against the clouds of the training MLPs' own meshes.
- ``size=small``: width 32, 1 block, 40 steps, 50-step schedule, for tests and demos only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from generators.diffusion import LinearSchedule, timestep_embedding
from generators.transformer import (
    EMA,
    Encoder,
    TokenCodec,
    adamw,
    random_permutation_index,
    token_slices,
)
from wdb.plugin import BadInput, Fitted, MethodInfo, Samples, TrainingSet

NAME = "hyperdiffusion"
KIND = "generated"
#: how the study shows and compares it (wdb.study.generate.MethodInfo).
INFO = MethodInfo(
    display="HyperDiffusion",
    order=30,
    task="shapes-occupancy",
    noise_sigmas=(0.02, 0.04),
    noise_select="final",
    reference_steps="all",  # the paper's reference: the training-split fields
    plans={
        "quick": dict(zoo_size="small", zoo_runs=6, gen={"size": "small"}, n=4, n_baseline=4),
        "demo": dict(
            zoo_size="small",
            zoo_runs=24,
            gen={"size": "default", "train_steps": 600},
            n=16,
            n_baseline=16,
        ),
        "default": dict(zoo_size="default", gen={"size": "default"}, n=100, n_baseline=100),
    },
)
METRIC = "chamfer_train_min"


def default_config(size: str) -> dict:
    """CPU recipe (``default``, a few minutes on 2 cores) or a seconds-long ``small`` one."""
    if size not in ("small", "default"):
        raise ValueError(size)
    small = size == "small"
    return {
        "size": size,
        "n": 10 if small else 100,
        "width": 32 if small else 192,
        "depth": 1 if small else 4,
        "heads": 2 if small else 4,
        "mlp_ratio": 2,
        "dropout": 0.0,
        "train_steps": 40 if small else 1500,
        "batch": 16 if small else 32,
        "lr": 4e-4,
        "weight_decay": 0.0,
        "ema": 0.99 if small else 0.995,
        "diffusion_steps": 50 if small else 500,
        "beta_start": 1e-4,
        "beta_end": 2e-2,
        "normalize": "param",
        "augment_permutations": 0,
    }


# -- the model ---------------------------------------------------------------------------------
class Denoiser(nn.Module):
    """Tokens (one per tensor) + a timestep token → transformer → clean weights."""

    def __init__(self, slices: list[tuple[int, int]], config: dict):
        super().__init__()
        w = int(config["width"])
        self.width = w
        self.codec = TokenCodec(slices, w, decode=True)
        self.time = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.k = len(slices)
        self.encoder = Encoder(
            self.k + 1,
            w,
            int(config["depth"]),
            int(config["heads"]),
            float(config["dropout"]),
            int(config["mlp_ratio"]),
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = self.time(timestep_embedding(t, self.width))[:, None]
        h = self.encoder(torch.cat([self.codec.encode(x_t), tt], dim=1))
        return self.codec.decode(h[:, : self.k])


def _build(config: dict, layout) -> Denoiser:
    return Denoiser(token_slices(layout, None), config)


def augmented(train: TrainingSet, k: int, seed: int) -> np.ndarray:
    """Training rows plus ``k`` random hidden-unit permutations of each (x(k+1) rows)."""
    W = np.asarray(train.weights, dtype=np.float32)
    if k <= 0:
        return W
    rng = np.random.default_rng([seed, 7])
    out = [W]
    for _ in range(int(k)):
        idx = np.stack([random_permutation_index(train.layout, rng) for _ in range(len(W))])
        out.append(np.take_along_axis(W, idx, axis=1))
    return np.concatenate(out)


def _norm_stats(W: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    if mode == "param":
        mean = W.mean(0)
        std = W.std(0)
        std = np.maximum(std, 1e-3 * float(std.mean()) + 1e-12)
    elif mode == "global":
        mean = np.zeros(W.shape[1], np.float32)
        std = np.full(W.shape[1], max(float(W.std()), 1e-12), np.float32)
    else:
        raise BadInput(f"hyperdiffusion: normalize must be 'param' or 'global', not '{mode}'")
    return mean.astype(np.float32), std.astype(np.float32)


def _schedule(config: dict) -> LinearSchedule:
    return LinearSchedule(
        int(config["diffusion_steps"]), float(config["beta_start"]), float(config["beta_end"])
    )


# -- fit ----------------------------------------------------------------------------------------
def fit(train: TrainingSet, config: Mapping[str, Any], seed: int) -> Fitted:
    """Train the x0-predicting denoiser; returns EMA weights plus ``norm.mean`` / ``norm.std``."""
    from wdb.plugin import progress

    torch.manual_seed(seed)
    k = int(config["augment_permutations"])
    if k not in (0, 1, 3, 7) and k < 0:
        raise BadInput(f"hyperdiffusion: augment_permutations must be ≥ 0, not {k}")
    W = augmented(train, k, seed)
    mean, std = _norm_stats(W, str(config["normalize"]))
    X = torch.from_numpy((W - mean) / std)

    model = _build(config, train.layout)
    ema = EMA(model, float(config["ema"]))
    opt = adamw(list(model.parameters()), float(config["lr"]), float(config["weight_decay"]))
    sched = _schedule(config)
    steps, B = int(config["train_steps"]), int(config["batch"])
    warmup = max(1, steps // 20)
    gen = torch.Generator().manual_seed(seed)
    bar = progress(range(steps), total=steps, desc="fit hyperdiffusion")
    t0 = time.perf_counter()
    loss = torch.zeros(())
    for step in bar:
        x0 = X[torch.randint(0, len(X), (B,), generator=gen)]
        t = torch.randint(0, sched.steps, (B,), generator=gen)
        x_t = sched.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
        loss = ((model(x_t, t) - x0) ** 2).mean()
        lr = float(config["lr"]) * min(1.0, (step + 1) / warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        if step % 20 == 0:
            bar.set_postfix(loss=float(loss.detach()))
    state = {f"denoiser.{k_}": v.clone() for k_, v in ema.shadow.items()}
    state["norm.mean"] = torch.from_numpy(mean)
    state["norm.std"] = torch.from_numpy(std)
    record = {
        "n_train_rows": int(len(X)),
        "fit_loss_last": float(loss.detach()),
        "fit_time_s": round(time.perf_counter() - t0, 2),
    }
    return Fitted(state, record)


# -- sample -------------------------------------------------------------------------------------
def sample(
    model: dict[str, torch.Tensor] | None,
    train: TrainingSet,
    n: int,
    config: dict,
    seed: int,
    load: Callable[[str], TrainingSet] | None = None,
) -> list[Samples]:
    """DDIM (eta = 0) over all steps from Gaussian noise; rows in the training space."""
    if model is None:
        raise BadInput("hyperdiffusion: sampling needs a fitted model")
    net = _build(config, train.layout)
    net.load_state_dict(
        {k[len("denoiser.") :]: v for k, v in model.items() if k.startswith("denoiser.")}
    )
    net.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = _schedule(config).sample(
            net,
            (n, train.weights.shape[1]),
            predict="x0",
            method="ddim",
            generator=gen,
            desc="sample hyperdiffusion",
        )
    rows = x * model["norm.std"] + model["norm.mean"]
    info = [{"sample_index": i} for i in range(n)]
    return [Samples(rows.numpy().astype(np.float32), kind="generated", info=info)]


# -- evaluation helper: Chamfer distance to the nearest training shape --------------------------
def nearest_training_chamfer(
    db, targets: str, train: str, resolution: int = 64, write: bool = True
) -> list[dict]:
    """For every checkpoint ``targets`` selects: min Chamfer distance of its decoded shape to the
    ground-truth clouds of the shapes of the ``train`` checkpoints, and which one is nearest.

    Sample clouds come from the stored ``points`` outputs when ``wdb evaluate`` wrote them, else
    from meshing the weights here (marching cubes at logit(0.8), 2048 points). Empty meshes get
    NaN. With ``write``, records ``chamfer_train_min`` (and ``chamfer_train_nearest`` = the
    nearest training checkpoint id) as metrics on the task's eval set.
    """
    from wdb.plugin import run_configs
    from wdb.plugin import shapes as S

    task = S.ShapesOccupancy()
    tgt = db.checkpoints(targets)
    ref = db.checkpoints(train)
    if not tgt or not ref:
        raise BadInput(f"nearest_training_chamfer: {targets!r} or {train!r} selects nothing")
    ref_cfg = run_configs(db, ref)
    keep = [(r, c) for r, c in zip(ref, ref_cfg, strict=True) if c and "shape_index" in c]
    if not keep:
        raise BadInput(f"{train!r}: no training run config names its shape (shape_index)")
    clouds = [task.gt_points(c) for _, c in keep]
    ref_ids = [int(r["checkpoint_id"]) for r, _ in keep]
    ids = [int(r["checkpoint_id"]) for r in tgt]
    points = _points(db, task, ids, resolution)
    out = []
    for cid, p in zip(ids, points, strict=True):
        if p is None:
            out.append({"checkpoint_id": cid, "chamfer_train_min": float("nan"), "nearest": None})
            continue
        d = [S.chamfer(p, q) for q in clouds]
        j = int(np.argmin(d))
        out.append({"checkpoint_id": cid, "chamfer_train_min": d[j], "nearest": ref_ids[j]})
    if write:
        from wdb.plugin import ensure_eval_set

        es_id = ensure_eval_set(db, task.eval_set_name(), task.name, task.eval_split, None)
        rows = []
        for r in out:
            if r["nearest"] is None:
                continue  # empty mesh: no distance (like wdb evaluate, NaN is not stored)
            rows.append(
                {
                    "checkpoint_id": r["checkpoint_id"],
                    "eval_set_id": es_id,
                    "name": METRIC,
                    "value": r["chamfer_train_min"],
                }
            )
            rows.append(
                {
                    "checkpoint_id": r["checkpoint_id"],
                    "eval_set_id": es_id,
                    "name": "chamfer_train_nearest",
                    "value": float(r["nearest"]),
                }
            )
        db.add_metrics(rows)
    return out


def _points(db, task, ids: list[int], resolution: int) -> list[np.ndarray | None]:
    """Surface clouds per checkpoint: stored outputs if present, else meshed here."""
    stored: dict[int, np.ndarray] = {}
    try:
        from wdb.plugin import outputs

        rows = db.sql("SELECT id FROM eval_sets WHERE name = :n", {"n": task.eval_set_name()})
        if rows:
            es = int(rows[0]["id"])
            done = outputs.has_outputs(db, es, "points")
            have = [i for i in ids if i in done]
            if have:
                pts = outputs.read_outputs(db, have, es, "points")
                stored = {i: p for i, p in zip(have, pts, strict=True)}
    except Exception:  # noqa: BLE001 - outputs are a cache here; recompute on any mismatch
        stored = {}
    empty = {}
    if stored:
        rows = db.sql(
            "SELECT checkpoint_id, value FROM metrics WHERE name = 'mesh_empty' "
            "AND checkpoint_id IN (SELECT unnest(CAST(:ids AS BIGINT[])))",
            {"ids": ids},
        )
        empty = {int(r["checkpoint_id"]): r["value"] for r in rows}
    missing = [i for i in ids if i not in stored]
    if missing:
        W = db.weights(missing)
        from wdb.plugin import LEVEL, N_POINTS, marching_mesh, sample_points

        for i, w in zip(missing, W, strict=True):
            grid = task.grid_logits(w[None], resolution)[0]
            mesh = marching_mesh(grid, LEVEL, -1e3)
            if mesh is None or len(mesh.faces) == 0:
                stored[i], empty[i] = None, 1.0
            else:
                stored[i] = sample_points(mesh, N_POINTS, seed=0)
    return [None if empty.get(i) == 1.0 else stored[i] for i in ids]
