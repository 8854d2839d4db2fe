"""G.pt: shapes, seeds, prompting, conditioning fallback, lineage through `wdb generate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from generators import gpt
from tests.toyzoo import write_toy_mlp_zoo
from wdb import plugin as P
from wdb.study import generate as G
from wdb.study.tasks import get

TINY = {"size": "small", "width": 16, "train_steps": 6, "diffusion_steps": 12, "batch": 8}


def _layout():
    return get("mnist-mlp").layout()


def _space(layout):
    return type("S", (), {"layout": layout, "id": 7, "name": "s", "n_params": layout.n_params})()


def synthetic(runs=4, steps=3, seed=0, metrics=("loss",), offset=0):
    """``runs`` x ``steps`` checkpoints per run drifting from an init, loss falling with step."""
    layout = _layout()
    rng = np.random.default_rng(seed)
    rows, info, loss = [], [], []
    for r in range(runs):
        base = rng.normal(0, 0.03, layout.n_params)
        for s in range(steps):
            rows.append(base + 0.02 * s)
            info.append({"run": f"r{r + offset}", "step": s * 10, "zoo": "toy", "split": "train"})
            loss.append(2.3 - 0.5 * s)
    m = {}
    if "loss" in metrics:
        m["loss"] = np.array(loss)
    if "accuracy" in metrics:
        m["accuracy"] = 1 - np.array(loss) / 3
    ids = np.arange(100 + offset * steps, 100 + offset * steps + len(rows))
    W = np.asarray(rows, dtype=np.float32)
    return P.TrainingSet(ids, W, _space(layout), info, m, {}, "synthetic")


def fit_sample(ts, n=5, seed=0, load=None, **over):
    cfg = P.resolve_config(gpt, {**TINY, **over})
    state = G.fit_method(gpt, ts, cfg, seed)
    return state, G.sample_method(gpt, state, ts, n, cfg, seed, load), cfg


def test_shapes_scale_and_determinism():
    ts = synthetic()
    state, (s,), cfg = fit_sample(ts, n=5)
    assert s.kind == "generated" and s.rows.shape == (5, 7960) and s.rows.dtype == np.float32
    assert np.isfinite(s.rows).all() and len(s.info) == 5
    assert cfg["weight_scale"] == pytest.approx(0.538 / ts.weights.std(), rel=1e-5)
    assert float(state["norm.scale"]) == pytest.approx(cfg["weight_scale"], rel=1e-6)
    assert cfg["condition_used"] == "loss" and cfg["augment_used"] is True
    # no loader: the earliest checkpoint of each run is the prompt
    assert {i["prompt_checkpoint"] for i in s.info} <= set(ts.ids[::3].tolist())
    _, (again,), _ = fit_sample(ts, n=5)
    np.testing.assert_array_equal(again.rows, s.rows)
    _, (other,), _ = fit_sample(ts, n=5, seed=1)
    assert not np.allclose(other.rows, s.rows)


def test_untrained_model_returns_its_prompts():
    """Without preconditioning, output projections start at zero, so the x0 prediction is the
    start: DDPM ends on it."""
    ts = synthetic()
    prompts = synthetic(runs=2, seed=5, offset=10)
    called = []

    def load(where):
        called.append(where)
        return prompts

    _, (s,), cfg = fit_sample(ts, n=4, load=load, train_steps=0, precond=False)
    assert "split = 'test' AND step = 0" in called[0] and cfg["prompt_used"] == called[0]
    src = np.array([i["prompt_checkpoint"] for i in s.info])
    assert set(src) <= set(prompts.ids.tolist())
    expected = prompts.weights[np.searchsorted(prompts.ids, src)]
    np.testing.assert_allclose(s.rows, expected, atol=1e-5)
    assert all(i["target_loss"] == 0.0 for i in s.info)


def test_condition_falls_back_to_error_then_none():
    values, name = gpt.condition(synthetic(metrics=("accuracy",)))
    assert name == "error" and np.all((values >= 0) & (values <= 1))
    ts = synthetic()
    cfg = P.resolve_config(gpt, {"target_min": True})
    assert gpt._target({**cfg, "condition_used": "loss"}, ts) == pytest.approx(1.3)
    assert gpt._target({**cfg, "condition_used": "loss", "target_min": False}, ts) == 0.0
    ts = synthetic(metrics=())
    _, (s,), cfg = fit_sample(ts, n=2, augment_permutations=False)
    assert gpt.condition(ts)[1] == "none" and cfg["condition_used"] == "none"
    assert cfg["augment_used"] is False and s.rows.shape == (2, 7960)


def test_generate_writes_lineage_and_reloads(db):
    write_toy_mlp_zoo(db)
    rep = G.generate(
        db, "gpt", train="zoo = 'toy' AND split = 'train'", n=3, overrides=dict(TINY), seed=2
    )
    assert rep.status == "done" and len(rep.runs) == 3 and rep.model_checkpoint_id is not None
    test_init = db.checkpoints("run = 'toy-4' AND step = 0")[0]["checkpoint_id"]
    runs = db.sql(
        "SELECT r.config, g.train_ids, g.config AS gconfig FROM runs r "
        "JOIN generator_runs g ON g.id = r.generator_run_id WHERE g.id = :g AND r.name NOT LIKE 'genmodel%'",
        {"g": rep.generator_run_id},
    )
    assert len(runs) == 3
    for r in runs:
        cfg = json.loads(r["config"])
        assert cfg["prompt_checkpoint"] == test_init and cfg["task"] == "mnist-mlp"
    assert len(json.loads(runs[0]["train_ids"])) == 12
    gcfg = json.loads(runs[0]["gconfig"])
    assert gcfg["weight_scale"] > 0 and "split = 'test'" in gcfg["prompt_used"]
    first = db.weights([x["checkpoint_id"] for x in rep.runs])
    again = G.generate(db, "gpt", n=3, seed=2, from_run=rep.generator_run_id)
    np.testing.assert_array_equal(db.weights([x["checkpoint_id"] for x in again.runs]), first)


def test_untrained_preconditioned_denoiser_is_the_gaussian_posterior_mean():
    """Zero output projections + EDM skip: x0 = start + σd²/(σ²+σd²)·(x_t/√ᾱ − start)."""
    ts = synthetic()
    state, _, cfg = fit_sample(ts, n=1, train_steps=0, precond=True)
    assert cfg["delta_std"] > 0 and cfg["tokens_used"] == "units"
    net = gpt._build(cfg, ts.layout)
    net.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("denoiser.")})
    g = torch.Generator().manual_seed(0)
    start, x_t = torch.randn(3, 7960, generator=g), torch.randn(3, 7960, generator=g)
    t = torch.tensor([0, 5, 11])
    with torch.no_grad():
        out = net(x_t, start, t, torch.zeros(3), torch.zeros(3))
    ab = net.alpha_bar[t].reshape(-1, 1)
    var, sd2 = (1 - ab) / ab, cfg["delta_std"] ** 2
    expected = start + sd2 / (var + sd2) * (x_t / ab.sqrt() - start)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_unit_tokens_partition_the_row_and_are_permutation_equivariant():
    from wdb.query.symmetry import permute, random_permutations

    layout = _layout()
    groups = gpt.neuron_groups(layout, 1000)
    flat = np.concatenate([g.reshape(-1) for g in groups])
    assert sorted(flat.tolist()) == list(range(layout.n_params))
    assert [g.shape for g in groups] == [(10, 795), (1, 10)]
    cfg = {**P.resolve_config(gpt, TINY), "delta_std": 0.1, "tokens_used": "units"}
    torch.manual_seed(0)
    net = gpt._build(cfg, layout)
    for p in net.parameters():  # non-zero output projections
        torch.nn.init.normal_(p, std=0.05) if p.requires_grad else None
    rng = np.random.default_rng(0)
    x_t, start = rng.normal(size=(2, 7960)), rng.normal(size=(2, 7960))
    perms = random_permutations(layout, rng)
    t, z = torch.tensor([3, 7]), torch.zeros(2)

    def run(x, s):
        with torch.no_grad():
            out = net(
                torch.tensor(x, dtype=torch.float32), torch.tensor(s, dtype=torch.float32), t, z, z
            )
        return out.numpy()

    a = permute(run(x_t, start), layout, perms)
    b = run(permute(x_t, layout, perms), permute(start, layout, perms))
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert not np.allclose(a, run(x_t, start), atol=1e-3)  # the permutation did change the row


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_strided_sampling_visits_steps_and_ends_on_x0(method):
    """``steps`` < the schedule's: that many model calls, the last update returns its x0."""
    from generators.diffusion import LinearSchedule

    x0 = torch.linspace(-1, 1, 12).reshape(3, 4)
    seen = []

    def model(x_t, t):
        seen.append(int(t[0]))
        return x0

    out = LinearSchedule(100).sample(
        model,
        (3, 4),
        predict="x0",
        method=method,
        generator=torch.Generator().manual_seed(0),
        steps=7,
    )
    assert len(seen) == 7 and seen[0] == 99 and seen[-1] == 0 and seen == sorted(seen)[::-1]
    torch.testing.assert_close(out, x0)


def test_sample_steps_untrained_model_returns_its_prompts():
    ts = synthetic()
    _, (s,), _ = fit_sample(ts, n=4, train_steps=0, sample_steps=3)
    src = np.array([i["prompt_checkpoint"] for i in s.info])
    np.testing.assert_allclose(s.rows, ts.weights[np.searchsorted(ts.ids, src)], atol=1e-5)
