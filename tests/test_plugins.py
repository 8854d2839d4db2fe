"""Plugin discovery and bring-your-own inputs: clear one-line errors, nothing half-written."""

from __future__ import annotations

import numpy as np
import pytest

from wdb import plugin as P
from wdb import plugins
from wdb.errors import BadInput, NotFound
from wdb.ingest.outputs import ingest_outputs
from wdb.study import methods as M


def test_builtins_are_entry_points_like_any_plugin():
    assert {"mnist-mlp", "shapes-occupancy"} <= set(plugins.names("wdb.tasks"))
    assert {"pdiff", "noise"} <= set(plugins.names("wdb.generators"))
    assert plugins.registry("wdb.readers")["folder"].distribution == "wdb"
    from wdb.ingest.readers import format_names

    assert format_names()[-1] == "folder"  # the generic reader is asked last
    assert P.study_methods()[:4] == ["hyperrep", "gpt", "hyperdiffusion", "pdiff"]
    assert set(P.baseline_methods()) == {"noise", "average", "gaussian"}
    assert P.method_info("pdiff").beats_noise and P.method_info("gpt").aligned


def test_bad_plugin_files_fail_in_one_line_naming_the_file(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1\nraise RuntimeError('boom')\n")
    with pytest.raises(BadInput, match=r"broken.py:2: importing the plugin failed: RuntimeError"):
        plugins.load("wdb.generators", str(broken))
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(BadInput, match="defines no generator"):
        P.get_method(str(empty))
    with pytest.raises(NotFound, match="no such task file"):
        plugins.load("wdb.tasks", str(tmp_path / "missing.py"))
    with pytest.raises(NotFound, match="unknown generator 'nope'"):
        P.get_method("nope")


def test_a_generator_file_without_fit_is_a_baseline_style_method(tmp_path):
    f = tmp_path / "copycat.py"
    f.write_text(
        "from wdb.study.generate import Samples\n"
        "def default_config(size):\n    return {'n': 2}\n"
        "def sample(model, train, n, config, seed, load):\n"
        "    return [Samples(train.weights[:n])]\n"
    )
    m = P.get_method(str(f))
    assert m.NAME == "copycat" and m.KIND == "generated" and m.fit is P.no_fit


def test_config_is_read_only_for_methods():
    from generators.baselines import noise

    cfg = P.resolve_config(noise, {"size": "small"})
    view = M.config_view(noise, cfg)
    with pytest.raises(TypeError):
        view["sigma"] = 1.0  # type: ignore[index]


def _db_with_runs(tmp_path):
    import wdb
    from wdb.store.spaces import Layout

    db = wdb.open(tmp_path / "db")
    layout = Layout.from_arrays({"w": np.zeros(4, np.float32)})
    ids = db.add_checkpoints(layout, np.eye(4, dtype=np.float32)[:3], run="r", kind="training")
    return db, ids


def test_ingest_outputs_checks_everything_before_writing(tmp_path):
    db, ids = _db_with_runs(tmp_path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, run=np.array(["r", "r"]), step=np.array([0, 9]), accuracy=np.array([0.5, 0.6]))
    with pytest.raises(BadInput, match=r"bad.npz: row 1: run 'r' step 9 is not stored"):
        ingest_outputs(db, bad, "mine:test")
    np.savez(bad, checkpoint_id=np.array(ids), errors=np.full((3, 5), 2))
    with pytest.raises(BadInput, match="'errors' must be 0/1"):
        ingest_outputs(db, bad, "mine:test")
    np.savez(bad, checkpoint_id=np.array(ids), predictions=np.zeros((3, 5), int))
    with pytest.raises(BadInput, match="predictions need labels"):
        ingest_outputs(db, bad, "mine:test")
    np.save(tmp_path / "plain.npy", np.zeros((3, 5)))
    with pytest.raises(BadInput, match="plain .npy array has no checkpoint keys"):
        ingest_outputs(db, tmp_path / "plain.npy", "mine:test")
    assert db.sql("SELECT count(*) AS n FROM eval_sets")[0]["n"] == 0  # nothing half-written
    assert db.sql("SELECT count(*) AS n FROM metrics")[0]["n"] == 0


def test_ingest_outputs_csv_metrics_and_npz_errors(tmp_path):
    from wdb.store.outputs import error_masks, eval_set

    db, ids = _db_with_runs(tmp_path)
    csv = tmp_path / "m.csv"
    csv.write_text("run,step,accuracy,loss\nr,0,0.5,1.0\nr,2,0.75,\n")
    res = ingest_outputs(db, csv, "mine:test")
    assert res["checkpoints"] == 2 and res["metrics"] == "accuracy, loss"
    vals = {
        (r["checkpoint_id"], r["name"]): r["value"]
        for r in db.sql("SELECT checkpoint_id, name, value FROM metrics")
    }
    assert vals == {(ids[0], "accuracy"): 0.5, (ids[0], "loss"): 1.0, (ids[2], "accuracy"): 0.75}
    errs = np.array([[1, 0, 0, 1], [0, 0, 1, 1], [1, 1, 1, 1]], dtype=bool)
    npz = tmp_path / "e.npz"
    np.savez(npz, checkpoint_id=np.array(ids), errors=errs)
    ingest_outputs(db, npz, "mine:test")
    es = eval_set(db, "mine:test")
    assert es["n_items"] == 4
    np.testing.assert_array_equal(error_masks(db, ids, es["id"]), errs)
    np.savez(npz, checkpoint_id=np.array(ids), errors=np.zeros((3, 6), bool))
    with pytest.raises(BadInput, match="has 4 items, the file's errors have 6"):
        ingest_outputs(db, npz, "mine:test")


def test_ingest_with_generator_records_lineage_or_nothing(tmp_path):
    import torch

    db, ids = _db_with_runs(tmp_path)
    gen = tmp_path / "gen"
    gen.mkdir()
    for i in range(2):
        torch.save({"w": torch.full((4,), float(i))}, gen / f"s{i}.pt")
    with pytest.raises(BadInput, match="selects no checkpoints"):
        db.ingest(gen, generator="theirs", trained_on="run = 'nope'")
    with pytest.raises(BadInput, match="--trained-on needs --generator"):
        db.ingest(gen, trained_on="run = 'r'")
    assert db.sql("SELECT count(*) AS n FROM generator_runs")[0]["n"] == 0
    rep = db.ingest(gen, generator="theirs", trained_on="run = 'r'")
    assert rep.checkpoints_added == 2 and rep.generator_run_id is not None
    g = db.sql("SELECT * FROM generator_runs")[0]
    assert g["status"] == "done" and g["method"] == "theirs"
    kinds = db.sql("SELECT DISTINCT kind, generator_run_id FROM runs WHERE kind <> 'training'")
    assert kinds == [{"kind": "generated", "generator_run_id": g["id"]}]
    again = db.ingest(gen, generator="theirs", trained_on="run = 'r'")  # nothing new: no new run
    assert again.checkpoints_added == 0 and again.generator_run_id is None
    assert db.sql("SELECT count(*) AS n FROM generator_runs")[0]["n"] == 1


def test_a_registered_generator_with_a_task_joins_the_demo():
    """Adding a method to the study is one module: its INFO names the task and the plans."""
    import types

    from analyses import demo

    fifth = types.SimpleNamespace(
        NAME="fifth",
        KIND="generated",
        INFO=P.MethodInfo(display="Fifth", order=45, task="mnist-mlp", noise_sigmas=(0.1, 0.2)),
        default_config=lambda size: {"n": 2},
        fit=P.no_fit,
        sample=lambda *a: [],
    )
    plugins.register("wdb.generators", "fifth", fifth)
    try:
        assert demo.demo_methods() == ["hyperrep", "gpt", "hyperdiffusion", "pdiff", "fifth"]
        p = demo.plan("fifth", "quick")
        assert (p.zoo_size, p.n, p.n_baseline) == ("small", 8, 10)
        assert demo._available("fifth") is None
    finally:
        plugins.unregister("wdb.generators", "fifth")
    assert "fifth" not in demo.demo_methods()
