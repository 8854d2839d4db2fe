"""shapes-occupancy: the HyperDiffusion zoo. One occupancy MLP per procedural plane-like shape.

Shapes (no 3D data ships offline, so they are generated): a fuselage (ellipsoid), swept tapered
main wings with dihedral, a horizontal stabiliser and a vertical fin, proportions drawn from
``numpy.random.default_rng([seed, shape_index])``. Each part is an approximate signed distance
(ellipsoid / slab), the shape is their union (min), so occupancy labels are exact and the
ground-truth surface is the zero level set (marching cubes at 80³, then 2048 surface points
sampled with a fixed seed): everything is regenerated from ``{"seed", "shape_index"}`` in a run
config, nothing extra is stored. Parts are ≥ 0.08 thick so a 64³ grid resolves them.

Model: positional encoding (x, sin/cos(2^k π x/2), k = 0..3 → 27 inputs) → 64 → 64 → 1, ReLU
(6,017 params; the original is 128-128-128 on ShapeNet planes normalised to a smaller box, which
is why coordinates are halved inside the sin/cos here). Fitting: BCE on near-surface
(surface + N(0, 0.01²) / N(0, 0.05²)) and, in every batch, fresh uniform points in [-1.1, 1.1]³; the first shape's MLP is fitted from a
seeded initialisation, then *every* MLP starts from its weights (HyperDiffusion's "first weights",
which keeps the zoo aligned) and all are fitted at once as one stacked model (``torch.bmm``).
Default 300 shapes, split 250 train / 50 test.

Evaluation: marching cubes of the occupancy logits on a 64³ grid over [-1, 1]³ at level
logit(0.8) ≈ 1.386 (the grid is padded with "outside" so meshes are closed), 2048 surface points
per checkpoint, Chamfer distance (``chamfer``) to the ground-truth cloud of its own shape when the
run config says which shape. An empty level set gives ``mesh_empty = 1`` and no points.
"""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from wdb.study.tasks.base import (
    Adam,
    EvalContext,
    Task,
    ZooWriter,
    check_size,
    id_in,
    run_configs,
    run_splits,
    stacked_init,
    stacked_params,
)

LEVEL = math.log(0.8 / 0.2)  # logit(0.8) ≈ 1.386
N_POINTS = 2048
GT_RES = 80
N_FREQS = 4
SIZES = {
    # shapes, steps for the first MLP, steps for all, points per model and step
    "small": dict(runs=6, first_steps=300, steps=400, batch=1024),
    "default": dict(runs=300, first_steps=1500, steps=800, batch=512),
}
LR = 5e-3
N_NEAR, N_UNIFORM = 8000, 2000
#: uniform samples cover a box a little larger than the [-1, 1]³ grid: without supervision at
#: the faces of the cube the fields grow floaters there
UNIFORM_BOX = 1.1


# -- shapes ---------------------------------------------------------------------------------
def shape_params(seed: int, index: int) -> dict:
    """The proportions of plane ``index`` of a zoo seeded ``seed``."""
    rng = np.random.default_rng([int(seed), int(index), 1234])
    u = rng.uniform
    a = u(0.62, 0.85)  # fuselage half-length
    return dict(
        fuselage=(a, u(0.09, 0.14), u(0.09, 0.14)),
        wing=dict(
            x=u(-0.25, 0.05),
            z=u(-0.05, 0.04),
            span=u(0.55, 0.88),
            chord=u(0.25, 0.42),
            taper=u(0.35, 0.85),
            sweep=u(0.0, 0.55),
            half=u(0.04, 0.055),
            dihedral=u(0.0, 0.15),
        ),
        stab=dict(
            x=a * u(0.65, 0.8),
            z=u(-0.02, 0.06),
            span=u(0.2, 0.36),
            chord=u(0.14, 0.22),
            taper=u(0.45, 0.9),
            sweep=u(0.0, 0.4),
            half=u(0.04, 0.05),
            dihedral=u(0.0, 0.1),
        ),
        fin=dict(
            x=a * u(0.62, 0.78),
            height=u(0.2, 0.36),
            chord=u(0.16, 0.26),
            taper=u(0.4, 0.8),
            sweep=u(0.1, 0.6),
            half=u(0.04, 0.05),
        ),
    )


def _wing(p: np.ndarray, w: dict) -> np.ndarray:
    """Approximate signed distance of a swept, tapered, mirrored slab (wings, stabiliser)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    ay = np.abs(y)
    t = np.clip(ay / w["span"], 0.0, 1.0)
    xc = w["x"] + w["sweep"] * w["span"] * t
    chord = w["chord"] * (1 - (1 - w["taper"]) * t)
    zc = w["z"] + w["dihedral"] * ay
    return np.maximum.reduce(
        [ay - w["span"], np.abs(x - xc) - chord / 2, np.abs(z - zc) - w["half"]]
    )


def _fin(p: np.ndarray, f: dict) -> np.ndarray:
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    t = np.clip(z / f["height"], 0.0, 1.0)
    xc = f["x"] + f["sweep"] * f["height"] * t
    chord = f["chord"] * (1 - (1 - f["taper"]) * t)
    return np.maximum.reduce(
        [z - f["height"], -z, np.abs(x - xc) - chord / 2, np.abs(y) - f["half"]]
    )


def sdf(params: dict, p: np.ndarray) -> np.ndarray:
    """Approximate signed distance (negative inside) of the plane at points ``p [..., 3]``.

    Works on one shape's params (floats) or on ``stack_params`` of many (arrays ``[n, 1]``
    against points ``[n, B, 3]``)."""
    a, b, c = (np.asarray(v, dtype=p.dtype) for v in params["fuselage"])
    q = p / np.stack(np.broadcast_arrays(a, b, c), -1)
    body = (np.sqrt((q**2).sum(-1)) - 1.0) * np.minimum(np.minimum(a, b), c)
    return np.minimum.reduce(
        [body, _wing(p, params["wing"]), _wing(p, params["stab"]), _fin(p, params["fin"])]
    )


def stack_params(many: list[dict]) -> dict:
    """Shape params of ``n`` shapes as arrays ``[n, 1]`` (for ``sdf`` on ``[n, B, 3]`` points)."""

    def col(values):
        return np.asarray(values, dtype=np.float32)[:, None]

    out: dict = {"fuselage": tuple(col([m["fuselage"][k] for m in many]) for k in range(3))}
    for part in ("wing", "stab", "fin"):
        out[part] = {key: col([m[part][key] for m in many]) for key in many[0][part]}
    return out


def _grid(res: int) -> np.ndarray:
    ax = np.linspace(-1.0, 1.0, res, dtype=np.float32)
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1)


def marching_mesh(values: np.ndarray, level: float, pad_value: float):
    """Marching cubes on a field over [-1, 1]³, padded so the surface is closed; None if empty."""
    import trimesh
    from skimage.measure import marching_cubes

    res = values.shape[0]
    v = np.pad(values, 1, constant_values=pad_value)
    if not (v.max() > level and v.min() < level):
        return None
    verts, faces, _, _ = marching_cubes(v, level=level)
    verts = (verts - 1.0) * (2.0 / (res - 1)) - 1.0
    return trimesh.Trimesh(verts, faces, process=True)


#: every part lies within this z range, so the field is computed only there (3x fewer points)
Z_RANGE = (-0.3, 0.55)


@lru_cache(maxsize=8)
def _grid_z(res: int) -> tuple[np.ndarray, slice]:
    ax = np.linspace(-1.0, 1.0, res, dtype=np.float32)
    keep = np.flatnonzero((ax >= Z_RANGE[0]) & (ax <= Z_RANGE[1]))
    zs = slice(int(keep[0]), int(keep[-1]) + 1)
    return np.stack(np.meshgrid(ax, ax, ax[zs], indexing="ij"), -1), zs


@lru_cache(maxsize=512)
def _gt(seed: int, index: int) -> tuple:
    params = shape_params(seed, index)
    grid, zs = _grid_z(GT_RES)
    field = np.full((GT_RES,) * 3, -1.0, dtype=np.float32)
    field[:, :, zs] = -sdf(params, grid)  # positive inside, like occupancy logits
    mesh = marching_mesh(field, 0.0, -1.0)
    pts = sample_points(mesh, N_POINTS, seed=int(index))
    return mesh, pts


def sample_points(mesh, n: int = N_POINTS, seed: int = 0) -> np.ndarray:
    import trimesh

    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts, dtype=np.float32)


def gt_mesh(seed: int, index: int):
    """Ground-truth mesh of a shape (marching cubes of its signed distance at 80³)."""
    return _gt(int(seed), int(index))[0]


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Chamfer distance (METHODS.md): each cloud centred and divided by its overall std, then
    mean squared nearest-neighbour distance a→b plus b→a."""
    from scipy.spatial import cKDTree

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = (a - a.mean(0)) / a.std()
    b = (b - b.mean(0)) / b.std()
    d_ab, _ = cKDTree(b).query(a)
    d_ba, _ = cKDTree(a).query(b)
    return float((d_ab**2).mean() + (d_ba**2).mean())


def nearest_shapes(
    P: np.ndarray, tid: list[int], Q: np.ndarray, rid: list[int], ok_r: list[int]
) -> dict[int, tuple[float, int]]:
    """The nearest usable reference cloud ``Q[ok_r]`` of every non-empty target cloud ``P``
    (never the target itself): ``{target id: (Chamfer distance, reference id)}``."""
    out: dict[int, tuple[float, int]] = {}
    for i, c in enumerate(tid):
        if not nonempty(P[i]):
            continue
        best, arg = np.inf, -1
        for j in ok_r:
            if rid[j] == c:
                continue
            d = chamfer(P[i], Q[j])
            if d < best:
                best, arg = d, rid[j]
        if arg >= 0:
            out[c] = (float(best), int(arg))
    return out


def nonempty(p: np.ndarray) -> bool:
    """A usable cloud: some points, all finite, not all equal (an empty mesh's cloud is)."""
    return bool(len(p)) and bool(np.isfinite(p).all()) and float(np.ptp(p, axis=0).max()) > 0


# -- the model ------------------------------------------------------------------------------
#: coordinates are halved before the sin/cos features: their longest period (2) then spans
#: [-2, 2], so points near +1 and -1 do not share an encoding (that aliasing grew floaters)
PE_SCALE = 0.5


def encode(p):
    """Positional encoding: [x, sin(2^k π x/2), cos(2^k π x/2)] for k < 4 → 27 features."""
    import torch

    feats = [p]
    q = p * PE_SCALE
    for k in range(N_FREQS):
        feats += [torch.sin((2.0**k) * math.pi * q), torch.cos((2.0**k) * math.pi * q)]
    return torch.cat(feats, -1)


def forward(params: dict, x):
    """Logits ``[n, P]`` of stacked MLPs on encoded points ``x`` (``[P, 27]`` or ``[n, P, 27]``)."""
    import torch

    def layer(h, name: str):
        # bias fused into the matmul, ReLU in place: 1.4x faster fit steps than bmm + add + relu
        # (both backward passes need only the layer's inputs, so in-place is safe for autograd)
        w, b = params[f"{name}.weight"], params[f"{name}.bias"][:, None]
        return torch.baddbmm(b, h, w.transpose(1, 2))

    if x.dim() == 2:
        h = (
            torch.einsum("pi,noi->npo", x, params["fc1.weight"]) + params["fc1.bias"][:, None]
        ).relu_()
    else:
        h = layer(x, "fc1").relu_()
    return layer(layer(h, "fc2").relu_(), "fc3")[..., 0]


class ShapesOccupancy(Task):
    name = "shapes-occupancy"
    kind = "field"
    eval_split = "points"

    def build_model(self):
        import torch.nn as nn

        class OccupancyMLP(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = nn.Linear(27, 64)
                self.fc2 = nn.Linear(64, 64)
                self.fc3 = nn.Linear(64, 1)

            def forward(self, p):
                h = self.fc2(self.fc1(encode(p)).relu()).relu()
                return self.fc3(h)[..., 0]

        return OccupancyMLP()

    def data(self, split: str = "test"):
        """Shapes have no shared dataset: ground truth is per shape (``gt_points``)."""
        return None, None

    def eval_labels(self):
        return None

    def prepare(self, db: Any, checkpoints: list[dict]) -> EvalContext:
        """Run configs, plus, for each generated checkpoint (no shape of its own), the
        ground-truth clouds of the shapes its generator trained on (lineage:
        ``generator_runs.train_ids``), so ``wdb evaluate`` records ``chamfer_train_min``."""
        ctx = super().prepare(db, checkpoints)
        if db is None:
            return ctx
        clouds: dict[int, np.ndarray] = {}
        refs: list[np.ndarray | None] = []
        for c, cfg in zip(checkpoints, ctx.configs or [], strict=True):
            gid = c.get("generator_run_id")
            if gid is None or (cfg and cfg.get("shape_index") is not None):
                refs.append(None)
                continue
            if int(gid) not in clouds:
                clouds[int(gid)] = self._training_clouds(db, int(gid))
            refs.append(clouds[int(gid)])
        ctx.references = refs
        return ctx

    def _training_clouds(self, db: Any, generator_run_id: int) -> np.ndarray | None:
        rows = db.sql("SELECT train_ids FROM generator_runs WHERE id = :g", {"g": generator_run_id})
        ids = json.loads(rows[0]["train_ids"] or "[]") if rows else []
        if not ids:
            return None
        train = db.checkpoints(id_in(db, "checkpoint_id"), {"ids": [int(i) for i in ids]})
        shapes = {
            (int(cfg.get("seed", 0)), int(cfg["shape_index"]))
            for cfg in run_configs(db, train)
            if cfg and cfg.get("shape_index") is not None
        }
        if not shapes:
            return None
        return np.stack([_gt(seed, index)[1] for seed, index in sorted(shapes)])

    def gt_points(self, run_config: dict) -> np.ndarray:
        """Ground-truth cloud ``[2048, 3]`` of the shape named by a run config."""
        return _gt(int(run_config.get("seed", 0)), int(run_config["shape_index"]))[1]

    # -- evaluation ----------------------------------------------------------------------
    def grid_logits(self, rows: np.ndarray, resolution: int = 64, chunk: int = 65536):
        """Occupancy logits ``[n, r, r, r]`` on the [-1, 1]³ grid."""
        import torch

        rows = np.atleast_2d(np.asarray(rows, dtype=np.float32))
        pts = torch.from_numpy(_grid(resolution).reshape(-1, 3))
        out = np.empty((len(rows), len(pts)), dtype=np.float32)
        with torch.no_grad():
            for i in range(0, len(rows), 8):
                p = stacked_params(self.layout(), rows[i : i + 8])
                for j in range(0, len(pts), chunk):
                    out[i : i + 8, j : j + chunk] = forward(p, encode(pts[j : j + chunk])).numpy()
        return out.reshape(len(rows), resolution, resolution, resolution)

    def mesh(self, row: np.ndarray, resolution: int = 64):
        """Marching cubes of the occupancy logits at logit(0.8); None if the level set is empty."""
        return marching_mesh(self.grid_logits(row, resolution)[0], LEVEL, -1e3)

    def evaluate_rows(self, rows: np.ndarray, context: EvalContext | None = None) -> dict:
        """``points [n, 2048, 3]``, ``mesh_empty [n]`` and ``chamfer [n]`` (NaN where the shape is
        unknown or the mesh is empty)."""
        rows = np.atleast_2d(rows)
        n = len(rows)
        configs = (context.configs if context is not None else None) or [None] * n
        points = np.zeros((n, N_POINTS, 3), dtype=np.float32)
        empty = np.zeros(n)
        cham = np.full(n, np.nan)
        cham_train = np.full(n, np.nan)
        refs = (context.references if context is not None else None) or [None] * n
        for i in range(0, n, 8):
            grids = self.grid_logits(rows[i : i + 8])
            for j, g in enumerate(grids):
                k = i + j
                mesh = marching_mesh(g, LEVEL, -1e3)
                if mesh is None or len(mesh.faces) == 0:
                    empty[k] = 1
                    continue
                points[k] = sample_points(mesh, N_POINTS, seed=0)
                cfg = configs[k]
                if cfg and cfg.get("shape_index") is not None:
                    cham[k] = chamfer(points[k], self.gt_points(cfg))
                if refs[k] is not None:
                    cham_train[k] = min(chamfer(points[k], q) for q in refs[k])
        out = {"points": points, "mesh_empty": empty, "chamfer": cham}
        if any(r is not None for r in refs):
            out["chamfer_train_min"] = cham_train
        return out

    def predict(self, rows: np.ndarray, X: np.ndarray, context: EvalContext | None = None):
        """Occupancy (logit > logit(0.8)) ``[n, N]`` at points ``X [N, 3]``."""
        import torch

        with torch.no_grad():
            p = stacked_params(self.layout(), np.atleast_2d(rows))
            x = encode(torch.from_numpy(np.asarray(X, dtype=np.float32)))
            return (forward(p, x) > LEVEL).numpy()

    # -- training --------------------------------------------------------------------------
    def _pool(self, seed: int, index: int, n_surface: int = N_NEAR, n_uniform: int = N_UNIFORM):
        """Fixed training points and occupancy labels of one shape (deterministic): near-surface
        and some uniform ones. Every batch adds as many *fresh* uniform points labelled by the
        analytic field: with a fixed set of far-away samples the positional encoding leaves
        floaters in empty space, which Chamfer distance punishes hard."""
        params = shape_params(seed, index)
        mesh = gt_mesh(seed, index)
        rng = np.random.default_rng([seed, index, 99])
        surf = sample_points(mesh, n_surface, seed=int(index) + 7)
        sigma = np.where(np.arange(n_surface) % 2 == 0, 0.01, 0.05)[:, None]
        near = surf + rng.normal(size=surf.shape) * sigma
        uni = rng.uniform(-UNIFORM_BOX, UNIFORM_BOX, size=(n_uniform, 3))
        pts = np.concatenate([near, uni]).astype(np.float32)
        occ = (sdf(params, pts) < 0).astype(np.float32)
        return pts, occ

    def train_zoo(
        self, out: Path, runs: int | None = None, size: str = "default", seed: int = 0
    ) -> Path:
        import torch
        import torch.nn.functional as F

        from wdb.progress import progress

        check_size(size)
        cfg = SIZES[size]
        n = int(runs or cfg["runs"])
        B = cfg["batch"]
        split = run_splits(n, max(1, round(n / 6)), seed)
        writer = ZooWriter(out, self.name, size, seed)
        bar = progress(total=n + cfg["first_steps"] + cfg["steps"], desc=f"train {self.name} x{n}")
        pools = []
        for i in range(n):
            pools.append(self._pool(seed, i))
            bar.update(1)
        P = torch.from_numpy(np.stack([p for p, _ in pools]))  # [n, M, 3]
        Occ = torch.from_numpy(np.stack([o for _, o in pools]))  # [n, M]
        gen = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng([seed, 4242])
        shapes = [shape_params(seed, i) for i in range(n)]
        stacked = stack_params(shapes)

        def fit(params: dict, members: list[int], steps: int) -> float:
            opt = Adam(params.values(), lr=LR)
            sel = torch.tensor(members)
            loss = torch.zeros(())
            for step in range(steps):
                idx = torch.randint(0, P.shape[1], (len(members), B // 2), generator=gen)
                uni = rng.uniform(-UNIFORM_BOX, UNIFORM_BOX, size=(len(members), B // 2, 3)).astype(
                    np.float32
                )
                sub = stacked if len(members) == n else stack_params([shapes[m] for m in members])
                x = torch.cat(
                    [
                        torch.gather(P[sel], 1, idx[..., None].expand(-1, -1, 3)),
                        torch.from_numpy(uni),
                    ],
                    1,
                )
                y = torch.cat(
                    [
                        torch.gather(Occ[sel], 1, idx),
                        torch.from_numpy((sdf(sub, uni) < 0).astype(np.float32)),
                    ],
                    1,
                )
                logits = forward(params, encode(x))
                loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1).sum()
                loss.backward()
                lr = LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
                opt.step(lr)
                bar.update(1)
            return float(loss.detach()) / len(members)

        first = {k: v.requires_grad_() for k, v in stacked_init(self.layout(), [seed]).items()}
        fit(first, [0], cfg["first_steps"])
        params = {
            k: v.detach().expand(n, *v.shape[1:]).clone().requires_grad_() for k, v in first.items()
        }
        fit(params, list(range(n)), cfg["steps"])
        with torch.no_grad():
            det = {k: v.detach() for k, v in params.items()}
            loss, acc = [], []
            for i in range(n):
                sub = {k: v[i : i + 1] for k, v in det.items()}
                lg = forward(sub, encode(P[i : i + 1]))[0]
                loss.append(float(F.binary_cross_entropy_with_logits(lg, Occ[i])))
                acc.append(float(((lg > 0) == (Occ[i] > 0.5)).float().mean()))
        for i in range(n):
            config = {
                "task": self.name,
                "seed": seed,
                "shape_index": i,
                "first_weights": "shape 0",
                "steps": cfg["steps"],
            }
            writer.add(
                f"{writer.zoo}-{i:04d}",
                cfg["steps"],
                {k: v[i] for k, v in det.items()},
                config,
                split=split[i],
                loss=loss[i],
                occupancy_accuracy=acc[i],
            )
        bar.close()
        return writer.close(runs=n, steps=cfg["steps"], first_steps=cfg["first_steps"])

    def mesh_for_checkpoint(self, db, checkpoint_id: int, resolution: int = 64):
        return mesh_for_checkpoint(db, checkpoint_id, resolution)


def mesh_for_checkpoint(db, checkpoint_id: int, resolution: int = 64):
    """The mesh of a stored shapes-occupancy checkpoint (for ``wdb export RUN --mesh out.ply``)."""
    from wdb.errors import BadInput, WdbError
    from wdb.study.tasks import for_space

    info = db.checkpoints("checkpoint_id = :i", {"i": int(checkpoint_id)})
    if not info:
        from wdb.errors import NotFound

        raise NotFound(f"checkpoint {checkpoint_id} not found")
    space = db.space(int(info[0]["space_id"]))
    task = for_space(space)
    if not isinstance(task, ShapesOccupancy):
        raise BadInput(
            f"checkpoint {checkpoint_id} (space '{space.name}') is not a shapes-occupancy field; "
            "only neural fields export meshes"
        )
    mesh = task.mesh(db.weights([int(checkpoint_id)])[0], resolution)
    if mesh is None:
        raise WdbError(
            f"checkpoint {checkpoint_id}: the occupancy field has no surface (empty mesh)"
        )
    return mesh


def export_mesh(db, run: str, step: int | None, out: str | os.PathLike) -> dict:
    """Decode a neural-field checkpoint to a mesh (marching cubes) and write it (.ply/.obj/.stl)."""
    from wdb.errors import BadInput
    from wdb.store.export import atomic_write

    info = db.checkpoint(run, step)
    mesh = mesh_for_checkpoint(db, info["checkpoint_id"])
    if mesh is None or len(mesh.faces) == 0:
        raise BadInput(f"run '{run}' step {info['step']}: the occupancy field has no surface")
    out = Path(out)
    suffix = out.suffix.lstrip(".") or "ply"
    with atomic_write(out) as tmp:
        mesh.export(str(tmp), file_type=suffix)
    return {
        "run": run,
        "step": info["step"],
        "vertices": len(mesh.vertices),
        "faces": len(mesh.faces),
        "out": str(out),
    }


def _chamfer_part(P: np.ndarray, tid: list[int], Q: np.ndarray, rid: list[int], ok: list[int]):
    """One chunk of targets, on a worker: the in-process loop, unchanged."""
    return nearest_shapes(P, tid, Q, rid, ok)


def nearest_shapes_on(
    c, P: np.ndarray, tid: list[int], Q: np.ndarray, rid: list[int], ok: list[int]
):
    """:func:`nearest_shapes` over all targets, split by target on the Dask client ``c``."""
    from wdb.query import engine

    n = engine.n_workers(c)
    bounds = np.linspace(0, len(tid), min(len(tid), 2 * n) + 1).astype(int)
    q_f = c.scatter(Q, broadcast=True)
    futures = [
        c.submit(_chamfer_part, P[a:b], tid[a:b], q_f, rid, ok, pure=False)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        if b > a
    ]
    out: dict[int, tuple[float, int]] = {}
    for part in c.gather(futures):
        out.update(part)
    return out
