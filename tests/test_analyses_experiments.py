"""Experiments plumbing on the toy database with the real Hyper-Representations generator (small)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analyses import experiments, synthetic


@pytest.fixture(scope="module")
def hr_db(tmp_path_factory):
    pytest.importorskip("generators.hyperrep")
    import wdb

    root = tmp_path_factory.mktemp("exp")
    db = wdb.open(root / "db")
    made = synthetic.build(db, n_train=12, n_gen=2, n_base=2)
    rep = db.generate(
        "hyperrep",
        train="zoo = 'toy' AND kind = 'training'",
        n=4,
        seed=0,
        overrides={"size": "small", "steps": 5},
    )
    synthetic.evaluator(made["task"])(
        db, f"generator_run_id = {rep.generator_run_id} AND kind <> 'model'"
    )
    return db, made, root / "out"


def test_symmetry_table(hr_db):
    db, made, out = hr_db
    rec = experiments.symmetry(db, out, n_models=6, task=made["task"])
    rows = {r["comparison"]: r for r in db.sql(f"SELECT * FROM {rec['table']}")}
    # the toy MLP is ReLU without normalisation: both transforms are function-preserving
    assert set(rows) == {"permuted", "scaled", "different models"}
    for r in rows.values():
        assert 0 <= r["accuracy_diff"] <= 1 and 0 <= r["disagreement"] <= 1
        assert r["n_pairs"] == 6
    assert "permuted 1.0000" in rec["notes"][0] and "scaled 1.0000" in rec["notes"][0]
    assert (out / rec["figures"][0]["path"]).exists()
    assert (
        json.loads((out / "experiment_symmetry_hyperrep.json").read_text())["table"] == rec["table"]
    )


def test_modeling_factors_table(hr_db):
    db, made, out = hr_db
    rec = experiments.modeling_factors(
        db,
        "hyperrep",
        out,
        size="small",
        n=3,
        variants=["wider", "shorter 50%"],
        evaluate=synthetic.evaluator(made["task"]),
    )
    rows = {r["variant"]: r for r in db.sql(f"SELECT * FROM {rec['table']}")}
    assert set(rows) == {"base", "wider", "shorter 50%"}
    assert json.loads(rows["wider"]["overrides"])["width"] == 32  # small width 16, doubled
    for r in rows.values():
        assert np.isfinite(r["mean_min_l2"]) and 0 <= r["performance"] <= 1
    # rerunning finds the tagged variant runs instead of training again
    before = db.sql("SELECT count(*) AS n FROM generator_runs")[0]["n"]
    experiments.modeling_factors(
        db,
        "hyperrep",
        out,
        size="small",
        n=3,
        variants=["wider"],
        evaluate=synthetic.evaluator(made["task"]),
    )
    assert db.sql("SELECT count(*) AS n FROM generator_runs")[0]["n"] == before


def test_modeling_factors_base_overrides(hr_db):
    """``overrides`` change the base every variant starts from, and a rerun with other
    overrides trains anew instead of reusing runs made from a different base."""
    db, made, out = hr_db
    run = dict(
        size="small", n=3, variants=["shorter 50%"], evaluate=synthetic.evaluator(made["task"])
    )
    rec = experiments.modeling_factors(db, "hyperrep", out, overrides={"steps": 12}, **run)
    rows = {r["variant"]: r for r in db.sql(f"SELECT * FROM {rec['table']}")}
    configs = {
        r["variant"]: json.loads(
            db.sql(f"SELECT config FROM generator_runs WHERE id = {r['generator_run_id']}")[0][
                "config"
            ]
        )
        for r in rows.values()
    }
    assert configs["base"]["steps"] == 12 and configs["shorter 50%"]["steps"] == 6
    before = db.sql("SELECT count(*) AS n FROM generator_runs")[0]["n"]
    experiments.modeling_factors(db, "hyperrep", out, overrides={"steps": 12}, **run)
    assert db.sql("SELECT count(*) AS n FROM generator_runs")[0]["n"] == before
    experiments.modeling_factors(db, "hyperrep", out, overrides={"steps": 10}, **run)
    assert db.sql("SELECT count(*) AS n FROM generator_runs")[0]["n"] == before + 2
