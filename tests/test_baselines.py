"""Baselines: noise has the requested std, average is the mean of its members, gaussian fits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_generate import TRAIN, add_toy_zoo, toy_layout

from generators import baselines
from wdb import plugin as P
from wdb.study import generate as G


def synthetic(n: int = 40, d: int = 30, seed: int = 0, acc: bool = True) -> P.TrainingSet:
    rng = np.random.default_rng(seed)
    w = (rng.normal(0, 1, d) * 0.3 + rng.normal(0, 0.2, (n, d))).astype(np.float32)
    info = [{"run": f"r{i // 4}", "step": i % 4} for i in range(n)]
    metrics = {"accuracy": np.linspace(0.1, 0.9, n)} if acc else {}
    space = type("S", (), {"n_params": d, "layout": None, "name": "s", "id": 1})()
    return P.TrainingSet(np.arange(100, 100 + n), w, space, info, metrics, {}, "test")


def run(method, train, n, seed=0, **over):
    cfg = P.resolve_config(method, over)
    return G.sample_method(method, None, train, n, cfg, seed), cfg


def test_noise_has_requested_std_and_uses_top_sources():
    ts = synthetic()
    (s,), cfg = run(baselines.noise, ts, 200, sigma=0.05)
    src = np.array([i["source_checkpoint"] for i in s.info])
    assert s.kind == "baseline" and s.rows.shape == (200, 30) and s.rows.dtype == np.float32
    assert set(src) <= set(ts.ids[-12:].tolist())  # top 30% of 40 by accuracy
    diff = s.rows - ts.weights[src - 100]
    assert diff.std() == pytest.approx(0.05, rel=0.03) and abs(diff.mean()) < 0.002
    assert cfg["sigma_used"] == 0.05 and cfg["select_used"] == "top" and cfg["pool_size"] == 12


def test_noise_rescales_sigma_and_falls_back_to_final_checkpoints():
    ts = synthetic(acc=False)
    (s,), cfg = run(baselines.noise, ts, 50, sigma=0.1, ref_std=0.5)
    expected = 0.1 * ts.weights.std() / 0.5
    assert cfg["sigma_used"] == pytest.approx(expected) and s.info[0]["sigma"] == cfg["sigma_used"]
    assert cfg["select_used"] == "final"
    src = {i["source_checkpoint"] for i in s.info}
    assert src <= {100 + i for i in range(3, 40, 4)}  # step 3 is each run's last


def test_average_equals_mean_of_recorded_members():
    ts = synthetic()
    (s,), cfg = run(baselines.average, ts, 20, k=16)
    for row, info in zip(s.rows, s.info, strict=True):
        members = np.array(info["members"]) - 100
        assert len(set(members)) == 16
        np.testing.assert_allclose(row, ts.weights[members].mean(0), rtol=1e-5, atol=1e-6)
    small = synthetic(n=5)
    (s,), cfg = run(baselines.average, small, 3, k=16)
    assert cfg["k_used"] == 5 and np.allclose(s.rows, small.weights.mean(0), atol=1e-6)


def test_gaussian_matches_per_parameter_mean_and_std():
    ts = synthetic(n=60)
    (s,), _ = run(baselines.gaussian, ts, 4000)
    np.testing.assert_allclose(s.rows.mean(0), ts.weights.mean(0), atol=0.02)
    np.testing.assert_allclose(s.rows.std(0), ts.weights.std(0), rtol=0.06)


def test_fixed_seed_is_deterministic():
    ts = synthetic()
    for m in (baselines.noise, baselines.average, baselines.gaussian):
        a = run(m, ts, 5, seed=1)[0][0].rows
        b = run(m, ts, 5, seed=1)[0][0].rows
        c = run(m, ts, 5, seed=2)[0][0].rows
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_baselines_through_the_store(db):
    add_toy_zoo(db)
    rep = G.generate(db, "noise", train=TRAIN, seed=0, overrides={"size": "small", "sigma": 0.02})
    assert rep.model_checkpoint_id is None and len(rep.runs) == 10
    assert {r["kind"] for r in rep.runs} == {"baseline"}
    g = db.sql("SELECT config FROM generator_runs WHERE id = :i", {"i": rep.generator_run_id})
    assert json.loads(g[0]["config"])["sigma_used"] == 0.02
    run_ = db.run(rep.runs[0]["run"])
    conf = json.loads(run_["config"])
    assert conf["sigma"] == 0.02 and "source_checkpoint" in conf and conf["task"] == "toy"
    rows = db.weights([r["checkpoint_id"] for r in rep.runs])
    assert rows.shape == (10, toy_layout().n_params)
    again = G.generate(db, "noise", from_run=rep.generator_run_id)
    np.testing.assert_array_equal(db.weights([r["checkpoint_id"] for r in again.runs]), rows)
