"""P-diff on synthetic BN-like checkpoints: shapes, standardisation, determinism, store round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generators import pdiff
from wdb import plugin as P
from wdb.store.spaces import Layout
from wdb.study import generate as G

BN = ["bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"]


def bn_layout(width: int = 12) -> Layout:
    return Layout.from_arrays({k: np.zeros(width, np.float32) for k in BN})


def bn_rows(n: int = 30, width: int = 12, seed: int = 0) -> np.ndarray:
    """Consecutive-checkpoint-like rows: weights near 1, biases near 0, a slow drift."""
    rng = np.random.default_rng(seed)
    start = np.concatenate([1 + 0.1 * rng.normal(size=width), 0.05 * rng.normal(size=width)] * 2)
    drift = 0.01 * rng.normal(size=(n, start.size)).cumsum(0)
    return (start + drift).astype(np.float32)


def training_set(n: int = 30) -> P.TrainingSet:
    layout = bn_layout()
    space = type("S", (), {"n_params": layout.n_params, "layout": layout, "name": "bn", "id": 1})()
    info = [{"run": "bn", "step": i} for i in range(n)]
    return P.TrainingSet(np.arange(n), bn_rows(n), space, info, {}, {}, "test")


def test_tensor_stats_standardise_each_tensor():
    ts = training_set()
    mean, std = pdiff.tensor_stats(ts)
    z = (ts.weights - mean) / std
    for e in ts.space.layout.entries:
        block = z[:, e.offset : e.stop]
        assert abs(block.mean()) < 1e-4 and block.std() == pytest.approx(1, abs=1e-3)


def test_fit_and_sample_shapes_and_determinism():
    ts = training_set()
    cfg = P.resolve_config(pdiff, {"size": "small", "ae_steps": 8, "ddpm_steps": 8})
    a = pdiff.fit(ts, cfg, seed=0)
    b = pdiff.fit(ts, cfg, seed=0)
    assert {"norm.mean", "norm.std", "latent.mean", "latent.std"} <= set(a)
    assert any(k.startswith("ae.") for k in a) and any(k.startswith("denoiser.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    (s,) = pdiff.sample(a, ts, 5, cfg, seed=1, load=None)
    (s2,) = pdiff.sample(a, ts, 5, cfg, seed=1, load=None)
    (s3,) = pdiff.sample(a, ts, 5, cfg, seed=2, load=None)
    assert s.kind == "generated" and s.rows.shape == (5, 48) and s.rows.dtype == np.float32
    assert np.isfinite(s.rows).all()
    np.testing.assert_array_equal(s.rows, s2.rows)
    assert not np.array_equal(s.rows, s3.rows)


def test_autoencoder_learns_the_training_rows():
    """A short AE-only fit reconstructs training rows better than the per-tensor mean does."""
    ts = training_set(40)
    cfg = P.resolve_config(pdiff, {"size": "small", "ae_steps": 150, "ddpm_steps": 1})
    state = pdiff.fit(ts, cfg, seed=0)
    ae, _ = pdiff._load(state, ts.space.n_params, cfg)
    mean, std = state["norm.mean"], state["norm.std"]
    x = (torch.from_numpy(ts.weights) - mean) / std
    with torch.no_grad():
        err = ((ae.decode(ae.encode(x)) - x) ** 2).mean().item()
    assert err < 0.5 * (x**2).mean().item()


def test_pdiff_through_the_store_and_from(db):
    rows = bn_rows(24)
    db.add_checkpoints(
        bn_layout(), rows, run="bn_run", kind="training", zoo="bnzoo", run_config={"base_run": "b"}
    )
    rep = G.generate(
        db,
        "pdiff",
        train="zoo = 'bnzoo'",
        overrides={"size": "small", "ae_steps": 10, "ddpm_steps": 10},
        n=4,
    )
    assert len(rep.runs) == 4 and rep.model_checkpoint_id is not None
    again = G.generate(db, "pdiff", from_run=rep.generator_run_id, n=4)
    first = db.weights([r["checkpoint_id"] for r in rep.runs])
    np.testing.assert_allclose(db.weights([r["checkpoint_id"] for r in again.runs]), first)
    assert db.run(rep.runs[0]["run"])["config"].count('"base_run": "b"') == 1
