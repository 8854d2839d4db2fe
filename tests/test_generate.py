"""The generator framework: configs, lineage, failure handling, --from, no catalog held while fitting.

Uses the numpy baselines and a tiny fake method with a network on synthetic checkpoints.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner

from wdb import plugin as P
from wdb import plugins
from wdb.errors import BadInput, NotFound
from wdb.store.spaces import Layout
from wdb.study import generate as G
from wdb.study import methods as M

TRAIN = "zoo = 'toy' AND kind = 'training'"


def toy_layout() -> Layout:
    shapes = {"fc1.weight": (5, 4), "fc1.bias": (5,), "fc2.weight": (3, 5), "fc2.bias": (3,)}
    return Layout.from_arrays({k: np.zeros(s, np.float32) for k, s in shapes.items()})


def add_toy_zoo(db, runs: int = 4, steps: int = 3, seed: int = 0) -> list[int]:
    """``runs`` x ``steps`` checkpoints of a 4-5-3 MLP with accuracies, in zoo 'toy'."""
    rng = np.random.default_rng(seed)
    layout = toy_layout()
    ids = []
    for r in range(runs):
        base = rng.normal(0, 0.5, layout.n_params)
        rows = np.stack([base + 0.05 * s * rng.normal(size=base.shape) for s in range(steps)])
        acc = [{"accuracy": 0.5 + 0.1 * r + 0.01 * s} for s in range(steps)]
        ids += db.add_checkpoints(
            layout,
            rows.astype(np.float32),
            run=f"train_{r:02d}",
            kind="training",
            zoo="toy",
            metrics=acc,
            run_config={"task": "toy", "seed": r},
        )
    return ids


# -- a fake method with a "network" ----------------------------------------------------------
def fake_method(fit_hook=None, sample_hook=None) -> types.SimpleNamespace:
    import torch

    def default_config(size):
        return {"size": size, "n": 3, "scale": 1.0}

    def fit(train, config, seed):
        if fit_hook:
            fit_hook()
        g = torch.Generator().manual_seed(seed)
        mean = torch.from_numpy(train.weights.mean(0))
        return {"net.mean": mean, "net.jitter": torch.randn(mean.shape, generator=g)}

    def sample(model, train, n, config, seed, load):
        if sample_hook:
            sample_hook()
        rng = np.random.default_rng(seed)
        base = model["net.mean"].numpy() + 0.01 * model["net.jitter"].numpy()
        rows = base + config["scale"] * 0.1 * rng.standard_normal((n, base.size))
        recon = train.weights + 0.001
        info = [{"source_checkpoint": int(i)} for i in train.ids]
        return [P.Samples(rows), P.Samples(recon, kind="reconstructed", info=info)]

    return types.SimpleNamespace(
        NAME="fake", KIND="generated", default_config=default_config, fit=fit, sample=sample
    )


@pytest.fixture
def with_fake():
    def install(**hooks):
        method = fake_method(**hooks)
        plugins.register("wdb.generators", "fake", method)
        return method

    yield install
    plugins.unregister("wdb.generators", "fake")


# -- config ------------------------------------------------------------------------------------
def test_resolve_config_layers_and_refuses_unknown_keys(tmp_path):
    from generators.baselines import noise

    cfg = P.resolve_config(noise, {"sigma": 0.1, "size": "small"})
    assert cfg["sigma"] == 0.1 and cfg["size"] == "small" and cfg["n"] == 10
    f = tmp_path / "c.toml"
    f.write_text('sigma = 0.2\nselect = "all"\n')
    cfg = P.resolve_config(noise, {"sigma": 1}, f)
    assert cfg["sigma"] == 1.0 and isinstance(cfg["sigma"], float) and cfg["select"] == "all"
    with pytest.raises(BadInput, match="unknown config key 'sigmaa'"):
        P.resolve_config(noise, {"sigmaa": 0.1})
    assert M.parse_sets(["a=0.5", "b=small", "c=[1,2]", "d=true"]) == {
        "a": 0.5,
        "b": "small",
        "c": [1, 2],
        "d": True,
    }
    with pytest.raises(BadInput):
        M.parse_sets(["novalue"])
    with pytest.raises(NotFound):
        P.get_method("nope")


def test_load_training_set_prefers_computed_metrics(db):
    ids = add_toy_zoo(db, runs=2, steps=2)
    from wdb.store.outputs import ensure_eval_set

    es = ensure_eval_set(db, "toy:test", "toy", "test", np.arange(4) % 2)
    db.add_metrics([{"checkpoint_id": ids[0], "eval_set_id": es, "name": "accuracy", "value": 0.9}])
    ts = G.load_training_set(db, TRAIN)
    assert ts.ids.tolist() == ids and ts.weights.shape == (4, toy_layout().n_params)
    assert ts.weights.dtype == np.float32 and ts.space.layout.hash == toy_layout().hash
    assert ts.metrics["accuracy"][0] == pytest.approx(0.9)
    assert ts.metrics["accuracy"][1] == pytest.approx(0.51)
    assert ts.run_configs["train_01"] == {"task": "toy", "seed": 1}
    with pytest.raises(BadInput, match="selects no checkpoints"):
        G.load_training_set(db, "zoo = 'nothing'")
    # the database's message and hint, naming the option the selection came from
    with pytest.raises(BadInput, match="--train .no_such_column = 1. failed: .*no_such_column"):
        G.load_training_set(db, "no_such_column = 1")


# -- end to end with the fake method ------------------------------------------------------------
def test_generate_writes_runs_model_and_lineage(db, with_fake):
    train_ids = add_toy_zoo(db)
    with_fake()
    rep = G.generate(db, "fake", train=TRAIN, seed=3, overrides={"scale": 2})
    assert rep.status == "done" and rep.n_train == len(train_ids)
    kinds = [r["kind"] for r in rep.runs]
    assert kinds.count("generated") == 3 and kinds.count("reconstructed") == len(train_ids)
    g = db.sql("SELECT * FROM generator_runs WHERE id = :i", {"i": rep.generator_run_id})[0]
    assert g["status"] == "done" and g["method"] == "fake" and g["seed"] == 3
    assert json.loads(g["train_ids"]) == train_ids and g["train_selection"] == TRAIN
    cfg = json.loads(g["config"])
    assert cfg["scale"] == 2.0 and cfg["seed"] == 3 and cfg["n"] == 3 and "fit_s" in cfg["timings"]
    assert g["code_version"].startswith("wdb ") and g["wall_time_s"] > 0
    # the generator's network is a checkpoint of kind "model"
    model = db.checkpoints("checkpoint_id = :i", {"i": g["model_checkpoint_id"]})[0]
    assert model["kind"] == "model" and model["run"] == f"genmodel_{rep.generator_run_id}"
    assert set(db.state_dict(model["checkpoint_id"])) == {"net.mean", "net.jitter"}
    # sample runs inherit the agreed training config and record provenance
    run = db.run(rep.runs[0]["run"])
    conf = json.loads(run["config"])
    assert conf["task"] == "toy" and "seed" not in conf and conf["generator"] == "fake"
    assert run["zoo"] == "toy" and run["kind"] == "generated"
    # lineage: every generated run joins to its generator run and its training ids, in SQL
    if db.catalog.dialect == "duckdb":
        ids = "unnest(CAST(json_extract(g.train_ids, '$') AS BIGINT[])) AS t(train_id)"
    else:
        ids = "jsonb_array_elements_text(CAST(g.train_ids AS jsonb)) AS t(train_id)"
    rows = db.sql(
        "SELECT r.name, g.method, CAST(t.train_id AS BIGINT) AS train_id FROM runs r "
        f"JOIN generator_runs g ON g.id = r.generator_run_id, {ids} "
        "WHERE r.kind IN ('generated', 'reconstructed')"
    )
    joined = db.sql(
        f"SELECT count(DISTINCT c.id) AS n FROM generator_runs g, {ids} "
        "JOIN checkpoints c ON c.id = CAST(t.train_id AS BIGINT)"
    )[0]["n"]
    n_runs = 3 + len(train_ids)
    assert len(rows) == n_runs * len(train_ids)
    assert {r["train_id"] for r in rows} == set(train_ids) and joined == len(train_ids)


def test_fixed_seed_gives_identical_samples_and_from_resamples_without_fit(db, with_fake):
    add_toy_zoo(db)
    with_fake()
    a = G.generate(db, "fake", train=TRAIN, seed=5, overrides={"size": "small"})
    b = G.generate(db, "fake", train=TRAIN, seed=5, overrides={"size": "small"})
    c = G.generate(db, "fake", train=TRAIN, seed=6, overrides={"size": "small"})

    def gen_rows(rep):
        return db.weights([r["checkpoint_id"] for r in rep.runs if r["kind"] == "generated"])

    np.testing.assert_array_equal(gen_rows(a), gen_rows(b))
    assert not np.allclose(gen_rows(a), gen_rows(c))

    def boom():
        raise AssertionError("fit must not run with --from")

    with_fake(fit_hook=boom)
    d = G.generate(db, "fake", seed=5, from_run=a.generator_run_id, n=5)
    assert d.model_checkpoint_id == a.model_checkpoint_id
    rows = gen_rows(d)
    assert rows.shape == (5, toy_layout().n_params)
    np.testing.assert_array_equal(rows[:3], gen_rows(a))  # same model, same seed: same draws
    g = db.sql("SELECT config FROM generator_runs WHERE id = :i", {"i": d.generator_run_id})[0]
    assert json.loads(g["config"])["from_run"] == a.generator_run_id
    with pytest.raises(BadInput):
        G.generate(db, "noise", from_run=a.generator_run_id)


LOCK_PROBE = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])  # read-write: fails if any other process holds the file
con.execute("CREATE TABLE IF NOT EXISTS probe (x INTEGER)")
con.execute("INSERT INTO probe VALUES (1)")
con.close()
"""


def test_no_catalog_connection_is_held_while_fitting_or_sampling(db, with_fake):
    add_toy_zoo(db, runs=2, steps=2)
    path = str(db.path / "catalog.duckdb")
    results = []

    def probe():
        p = subprocess.run([sys.executable, "-c", LOCK_PROBE, path], capture_output=True, text=True)
        results.append((p.returncode, p.stderr[-300:]))

    with_fake(fit_hook=probe, sample_hook=probe)
    G.generate(db, "fake", train="zoo = 'toy'")
    assert len(results) == 2
    assert all(rc == 0 for rc, _ in results), results


@pytest.mark.parametrize("exc", [RuntimeError("diverged"), KeyboardInterrupt()])
def test_interrupted_generation_is_failed_with_no_rows(db, with_fake, exc):
    add_toy_zoo(db, runs=2, steps=2)

    def fail():
        raise exc

    with_fake(sample_hook=fail)
    before = db.sql("SELECT count(*) AS n FROM runs")[0]["n"]
    with pytest.raises(type(exc)):
        G.generate(db, "fake", train=TRAIN)
    g = db.sql("SELECT * FROM generator_runs")
    assert len(g) == 1 and g[0]["status"] == "failed"
    assert type(exc).__name__ in g[0]["error"] and g[0]["model_checkpoint_id"] is None
    assert db.sql("SELECT count(*) AS n FROM runs")[0]["n"] == before
    assert db.checkpoints("generator_run_id IS NOT NULL") == []
    with pytest.raises(BadInput, match="failed"):
        G.generate(db, "fake", from_run=g[0]["id"])


def test_failure_while_writing_discards_written_samples(db, with_fake, monkeypatch):
    """A crash after the first block was committed still leaves no sample rows behind."""
    add_toy_zoo(db, runs=2, steps=2)
    with_fake()
    real = db.write_checkpoints
    calls = []

    def flaky(space, items, **kw):
        calls.append(len(items))
        if len(calls) == 3:  # model, generated block, then fail on the reconstructions
            raise OSError("disk full")
        return real(space, items, **kw)

    monkeypatch.setattr(db, "write_checkpoints", flaky)
    with pytest.raises(OSError):
        G.generate(db, "fake", train=TRAIN)
    assert db.sql("SELECT status FROM generator_runs")[0]["status"] == "failed"
    assert db.checkpoints("generator_run_id IS NOT NULL") == []


def test_cli_generate_prints_runs(db, tmp_path):
    from wdb.cli.main import cli

    add_toy_zoo(db, runs=2, steps=2)
    runner = CliRunner()
    args = ["--db", str(db.path), "generate", "average", "--train", TRAIN, "--n", "4"]
    res = runner.invoke(cli, [*args, "--set", "k=2", "--seed", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["method"] == "average" and len(out["runs"]) == 4 and out["config"]["k"] == 2
    res = runner.invoke(cli, [*args, "--set", "bogus=1"])
    assert res.exit_code != 0 and "unknown config key 'bogus'" in res.output
    res = runner.invoke(cli, ["--db", str(db.path), "generate", "gaussian", "--train", TRAIN])
    assert res.exit_code == 0 and "generator run" in res.output and "gen_" in res.output


def test_a_selection_over_two_spaces_uses_the_training_space_or_lists_the_choices(db):
    """A zoo's training checkpoints plus its base model (another space): the training space is
    used and the recorded selection says so; two training spaces: one line with both choices."""
    from wdb.store.spaces import Layout

    rng = np.random.default_rng(0)
    small = Layout.from_arrays({"w": np.zeros(3, np.float32)})
    big = Layout.from_arrays({"w": np.zeros(5, np.float32)})
    db.add_checkpoints(small, rng.standard_normal((3, 3)), run="t", kind="training", zoo="z")
    db.add_checkpoints(big, rng.standard_normal((1, 5)), run="base", kind="model", zoo="z")
    ts = G.load_training_set(db, "zoo = 'z'")
    assert len(ts.ids) == 3 and ts.space.layout.hash == small.hash
    assert ts.selection == f"(zoo = 'z') AND space = '{ts.space.name}'"
    db.add_checkpoints(big, rng.standard_normal((2, 5)), run="t2", kind="training", zoo="z")
    with pytest.raises(BadInput, match="spans 2 weight spaces; pick one: .*AND space = ") as exc:
        G.load_training_set(db, "zoo = 'z'")
    assert "\n" not in str(exc.value)
