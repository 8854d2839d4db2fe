"""Hyper-Representations on a synthetic tiny CNN zoo: tokens, KDE modes, losses, fit/sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generators import hyperrep as H
from wdb import plugin as P
from wdb.query.symmetry import permute, random_permutations
from wdb.store.spaces import Layout
from wdb.study import generate as G


def cnn_layout() -> Layout:
    shapes = {
        "conv1.weight": (4, 1, 3, 3),
        "conv1.bias": (4,),
        "fc1.weight": (6, 16),  # flatten of 4 channels x 2 x 2
        "fc1.bias": (6,),
        "fc2.weight": (3, 6),
        "fc2.bias": (3,),
    }
    return Layout.from_arrays({k: np.zeros(s, np.float32) for k, s in shapes.items()})


def training_set(n: int = 24, seed: int = 0) -> P.TrainingSet:
    layout = cnn_layout()
    rng = np.random.default_rng(seed)
    w = (0.3 * rng.normal(size=(n, layout.n_params))).astype(np.float32)
    space = type("S", (), {"n_params": layout.n_params, "layout": layout, "name": "c", "id": 1})()
    info = [{"run": f"r{i}", "step": 0} for i in range(n)]
    metrics = {"accuracy": rng.uniform(0.2, 0.9, n)}
    return P.TrainingSet(np.arange(1000, 1000 + n), w, space, info, metrics, {}, "test")


def test_tokens_are_one_per_output_neuron_and_cover_the_row():
    layout = cnn_layout()
    cols = H.token_columns(layout)
    assert [c.shape for c in cols] == [(4, 10), (6, 17), (3, 7)]
    chunked = H.token_columns(layout, max_token=8)
    assert [c.shape for c in chunked] == [(4, 5), (4, 5), (6, 6), (6, 6), (6, 5), (3, 7)]
    flat = np.concatenate([c.reshape(-1) for c in chunked])
    assert sorted(flat) == list(range(layout.n_params))
    flat = np.concatenate([c.reshape(-1) for c in cols])
    assert sorted(flat) == list(range(layout.n_params))
    # unit 2 of conv1 owns its 3x3 kernel and its bias
    e, b = layout.entry("conv1.weight"), layout.entry("conv1.bias")
    assert list(cols[0][2]) == [*range(e.offset + 18, e.offset + 27), b.offset + 2]


def test_permutation_bank_matches_symmetry_permute():
    layout = cnn_layout()
    bank = H.permutation_bank(layout, 4, np.random.default_rng(0))
    assert bank.shape == (4, layout.n_params)
    assert all(sorted(b.tolist()) == list(range(layout.n_params)) for b in bank)
    row = np.random.default_rng(1).normal(size=layout.n_params)
    perms = random_permutations(layout, np.random.default_rng(0))
    np.testing.assert_array_equal(row[bank[0].numpy()], permute(row, layout, perms))


def test_nt_xent_rewards_matching_views():
    a = torch.randn(8, 5)
    same = H.nt_xent(a, a + 0.01 * torch.randn(8, 5), 0.1)
    other = H.nt_xent(a, torch.randn(8, 5), 0.1)
    assert same < other


def test_shared_kde_copies_a_latent_plus_one_offset_independent_does_not():
    lat = np.random.default_rng(0).normal(size=(10, 6))
    s = H.kde_sample(lat, 50, 0.002, seed=3, mode="shared")
    src = H.shared_sources(10, 50, seed=3)
    offset = s - lat[src]
    np.testing.assert_allclose(offset, offset[:, :1].repeat(6, axis=1), atol=1e-12)
    assert 0.0005 < np.abs(offset[:, 0]).mean() < 0.005
    ind = H.kde_sample(lat, 50, 0.002, seed=3, mode="independent")
    dist = np.abs(ind[:, None, :] - lat[None]).min(1)  # per-dimension distance to some latent
    assert dist.max() < 0.02
    assert np.linalg.norm(ind[:, None] - lat[None], axis=2).min(1).mean() > 0.1  # mixes rows
    with pytest.raises(ValueError):
        H.kde_sample(lat, 5, 0.002, 0, "other")


def test_fit_sample_shapes_kinds_determinism():
    ts = training_set()
    cfg = P.resolve_config(H, {"size": "small", "steps": 6})
    a = H.fit(ts, cfg, seed=0)
    b = H.fit(ts, cfg, seed=0)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    gen, rec = G.sample_method(H, a, ts, 7, cfg, seed=0)
    assert gen.kind == "generated" and gen.rows.shape == (7, ts.space.n_params)
    assert rec.kind == "reconstructed" and rec.rows.shape == ts.weights.shape
    assert [i["source_checkpoint"] for i in rec.info] == ts.ids.tolist()
    top = set(ts.ids[np.argsort(-ts.metrics["accuracy"])[: cfg["n_top"]]].tolist())
    assert cfg["n_top"] == 7 and {i["source_checkpoint"] for i in gen.info} <= top
    gen2, _ = H.sample(a, ts, 7, cfg, seed=0, load=None)
    np.testing.assert_array_equal(gen.rows, gen2.rows)
    # shared KDE: each sample decodes from (almost) its source's latent: near that reconstruction
    src = [int(np.flatnonzero(ts.ids == i["source_checkpoint"])[0]) for i in gen.info]
    near = np.linalg.norm(gen.rows - rec.rows[src], axis=1)
    far = np.linalg.norm(gen.rows[:, None] - rec.rows[None], axis=2).mean(1)
    assert (near < 0.2 * far).all()
    cfg_ind = {**cfg, "kde": "independent", "reconstruct": False}
    (ind,) = H.sample(a, ts, 7, cfg_ind, seed=0, load=None)
    assert ind.info[0] == {"kde": "independent"}


def test_reconstruction_improves_with_training():
    ts = training_set(16)
    cfg = P.resolve_config(H, {"size": "small", "gamma": 0.0})

    def recon_error(steps):
        state = H.fit(ts, {**cfg, "steps": steps}, seed=0)
        _, rec = H.sample(state, ts, 1, cfg, seed=0, load=None)
        return float(((rec.rows - ts.weights) ** 2).mean())

    assert recon_error(60) < 0.8 * recon_error(1)


def test_hyperrep_through_the_store(db):
    ts = training_set(12)
    db.add_checkpoints(
        cnn_layout(),
        ts.weights,
        run=[f"t{i}" for i in range(12)],
        kind="training",
        zoo="cnnzoo",
        metrics=[{"accuracy": float(a)} for a in ts.metrics["accuracy"]],
    )
    rep = G.generate(db, "hyperrep", train="zoo = 'cnnzoo'", overrides={"size": "small"}, n=5)
    kinds = [r["kind"] for r in rep.runs]
    assert kinds.count("generated") == 5 and kinds.count("reconstructed") == 12
    again = G.generate(db, "hyperrep", from_run=rep.generator_run_id, n=5)
    ids = [r["checkpoint_id"] for r in rep.runs if r["kind"] == "generated"]
    ids2 = [r["checkpoint_id"] for r in again.runs if r["kind"] == "generated"]
    np.testing.assert_allclose(db.weights(ids2), db.weights(ids), atol=1e-6)


def test_kde_draws_equal_scikit_learns_kernel_density():
    from sklearn.neighbors import KernelDensity

    lat = np.random.default_rng(2).normal(size=(9, 3))
    ours = H.kde_sample(lat, 6, 0.002, seed=4, mode="shared")
    for d in range(3):
        kde = KernelDensity(kernel="gaussian", bandwidth=0.002).fit(lat[:, d : d + 1])
        np.testing.assert_array_equal(ours[:, d], kde.sample(6, random_state=4)[:, 0])
