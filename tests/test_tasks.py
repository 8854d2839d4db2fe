"""Tasks and evaluation end to end: train ``--size small`` zoos of every task, ingest them,
evaluate, and check what is stored."""

from __future__ import annotations

import json

import numpy as np
import pytest

import wdb
from wdb.errors import BadInput, NotFound, WdbError
from wdb.store.outputs import error_masks, eval_set, read_outputs
from wdb.study import tasks

CLASSIFIERS = ["mnist-mlp", "mnist-cnn", "mnist-bn"]


@pytest.fixture(scope="module")
def zoo_db(tmp_path_factory):
    """One database holding a small zoo of every task, evaluated once."""
    root = tmp_path_factory.mktemp("zoos")
    db = wdb.open(root / "db")
    folders = {}
    for name in tasks.names():
        folders[name] = tasks.get(name).train_zoo(root / name, size="small", seed=0)
        db.ingest(folders[name])
    report = db.evaluate()
    return db, folders, report


def _metric(db, eval_name: str, name: str) -> dict[int, float]:
    rows = db.sql(
        "SELECT m.checkpoint_id, m.value FROM metrics m JOIN eval_sets e ON e.id = m.eval_set_id "
        "WHERE e.name = :e AND m.name = :n",
        {"e": eval_name, "n": name},
    )
    return {r["checkpoint_id"]: r["value"] for r in rows}


def test_registry_and_spaces():
    assert set(tasks.names()) >= {"mnist-mlp", "mnist-cnn", "mnist-bn", "shapes-occupancy"}
    assert tasks.get("mnist-mlp").layout().n_params == 7960
    assert 1000 <= tasks.get("mnist-cnn").layout().n_params <= 2500
    bn = tasks.get("mnist-bn")
    assert bn.layout().n_params == 512
    assert bn.base_layout().n_params > 512
    assert tasks.get("shapes-occupancy").layout().n_params == 27 * 64 + 64 + 64 * 64 + 64 + 65
    for name in tasks.names():
        t = tasks.get(name)
        assert tasks.for_space(t.layout()) is t
        assert tasks.for_space(t.layout().hash) is t
    assert tasks.for_space(bn.base_layout()) is bn
    with pytest.raises(NotFound, match="unknown task 'nope'"):
        tasks.get("nope")


def test_data_is_deterministic_and_split():
    t = tasks.get("mnist-mlp")
    Xtr, ytr = t.data("train")
    Xte, yte = t.data("test")
    assert Xtr.shape == (4000, 784) and Xte.shape == (1000, 784)
    assert np.bincount(yte).tolist() == [100] * 10
    assert abs(float(Xtr.mean())) < 0.2  # normalised
    X2, y2 = t.data("test")
    assert np.array_equal(X2, Xte) and np.array_equal(y2, yte)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_vectorised_evaluation_matches_torch_module(name):
    """Batched evaluation = the plain nn.Module, item for item, on fresh random models."""
    import torch

    from wdb.store.tensors import state_to_numpy

    t = tasks.get(name)
    X, y = t.data(t.eval_split)
    models = [t.build_model().eval() for _ in range(3)]
    full = [t.base_layout().flatten(state_to_numpy(m.state_dict())[0]) for m in models]
    with torch.no_grad():
        ref = np.stack([m(torch.from_numpy(X)).argmax(-1).numpy() for m in models])
    if name == "mnist-bn":
        rows = np.stack([r[t.base_layout().columns(t.layout().names)] for r in full])
        got = [t.evaluate_rows(rows[i : i + 1], models[i].state_dict()) for i in range(3)]
        pred = np.concatenate([g["predictions"] for g in got])
        assert np.array_equal(t.evaluate_rows(np.stack(full))["predictions"], ref)
    else:
        pred = t.evaluate_rows(np.stack(full))["predictions"]
    assert np.array_equal(pred, ref)


def test_zoo_folder_format(zoo_db):
    _, folders, _ = zoo_db
    lines = [json.loads(s) for s in (folders["mnist-mlp"] / "manifest.jsonl").open()]
    assert {"file", "run", "step", "kind", "split", "config", "accuracy", "loss"} <= set(lines[0])
    assert all((folders["mnist-mlp"] / r["file"]).is_file() for r in lines)
    assert {r["split"] for r in lines} == {"train", "test"}
    runs = {r["run"] for r in lines}
    assert all(r["config"]["task"] == "mnist-mlp" for r in lines)
    per_run = {run: [r["step"] for r in lines if r["run"] == run] for run in runs}
    assert all(0 in steps and len(steps) == len(set(steps)) for steps in per_run.values())
    bn = [json.loads(s) for s in (folders["mnist-bn"] / "manifest.jsonl").open()]
    assert [r["kind"] for r in bn].count("model") == 1
    steps = [r["step"] for r in bn if r["kind"] == "training"]
    assert steps == list(range(1, len(steps) + 1))  # consecutive checkpoints of one run
    shapes = [json.loads(s) for s in (folders["shapes-occupancy"] / "manifest.jsonl").open()]
    assert sorted(r["config"]["shape_index"] for r in shapes) == list(range(len(shapes)))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifiers_accuracy_and_predictions(zoo_db, name):
    db, _, _ = zoo_db
    t = tasks.get(name)
    acc = _metric(db, t.eval_set_name(), "accuracy")
    ids = sorted(c["checkpoint_id"] for c in db.checkpoints("zoo = :z", {"z": name}))
    assert set(acc) == set(ids)
    values = np.array([acc[i] for i in ids])
    last = db.sql(
        "SELECT checkpoint_id FROM checkpoint_info c WHERE zoo = :z AND step = "
        "(SELECT max(step) FROM checkpoint_info d WHERE d.run = c.run)",
        {"z": name},
    )
    # mnist-bn's eval set is the test split plus perturbed copies; its first 1,000 items are
    # the test split, scored as clean_accuracy (what the trainer reports)
    clean = _metric(db, t.eval_set_name(), "clean_accuracy") if name == "mnist-bn" else acc
    final = np.array([clean[r["checkpoint_id"]] for r in last])
    assert final.min() > 0.5 and final.mean() > 0.7  # chance is 0.1
    es = eval_set(db, t.eval_set_name())
    assert es["n_items"] == (10000 if name == "mnist-bn" else 1000) and es["labels_sha256"]
    # stored predictions reproduce the stored accuracy exactly
    masks = error_masks(db, ids, es["id"])
    assert np.array_equal((~masks).mean(1), values)
    assert np.array_equal((~masks[:, :1000]).mean(1), [clean[i] for i in ids])
    # ... and the trainer's own test accuracy (reported at ingest) agrees
    reported = _metric(db, f"reported:{name}", "accuracy")
    assert all(abs(reported[i] - clean[i]) < 1e-9 for i in ids)


def test_mnist_mlp_held_out_runs(zoo_db):
    db, _, _ = zoo_db
    splits = db.sql(
        "SELECT split, count(DISTINCT run) AS n FROM checkpoint_info WHERE zoo = 'mnist-mlp' "
        "GROUP BY split"
    )
    n = {r["split"]: r["n"] for r in splits}
    assert n["train"] > n["test"] >= 1


def test_shapes_meshes_and_chamfer(zoo_db):
    """Threshold: a fitted field must be closer (Chamfer) to its own ground-truth shape than to
    any other shape of the zoo, and within half the median distance between distinct shapes."""
    from wdb.study.tasks.shapes import chamfer, mesh_for_checkpoint

    db, _, _ = zoo_db
    t = tasks.get("shapes-occupancy")
    cks = db.checkpoints("zoo = 'shapes-occupancy'")
    cham = _metric(db, t.eval_set_name(), "chamfer")
    empty = _metric(db, t.eval_set_name(), "mesh_empty")
    assert all(empty[c["checkpoint_id"]] == 0 for c in cks)
    configs = {
        r["run"]: json.loads(r["config"])
        for r in db.sql("SELECT name AS run, config FROM runs WHERE zoo = 'shapes-occupancy'")
    }
    gts = {configs[c["run"]]["shape_index"]: t.gt_points(configs[c["run"]]) for c in cks}
    between = [chamfer(gts[a], gts[b]) for a in gts for b in gts if a < b]
    es = eval_set(db, t.eval_set_name())["id"]
    pts = read_outputs(db, [c["checkpoint_id"] for c in cks], es, "points")
    assert pts.shape == (len(cks), 2048, 3)
    for c, p in zip(cks, pts, strict=True):
        own = configs[c["run"]]["shape_index"]
        d = {k: chamfer(p, g) for k, g in gts.items()}
        assert abs(d[own] - cham[c["checkpoint_id"]]) < 1e-9
        assert d[own] == min(d.values()), (c["run"], d)
        assert d[own] < 0.5 * float(np.median(between)), (d[own], np.median(between))
        mesh = mesh_for_checkpoint(db, c["checkpoint_id"])
        assert mesh.is_watertight and len(mesh.faces) > 100


def test_chamfer_definition():
    from wdb.study.tasks.shapes import chamfer

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2048, 3)), rng.normal(size=(2048, 3)) * [1, 2, 3]
    assert chamfer(a, a) == 0
    assert chamfer(a, b) == pytest.approx(chamfer(b, a))
    assert chamfer(a * 5 + 3, b) == pytest.approx(chamfer(a, b))  # centred and scaled
    assert chamfer(a, b) > 0.05


def test_reevaluate_skips_and_force(zoo_db):
    db, _, first = zoo_db
    assert first.evaluated == len(db.checkpoints()) and first.skipped == 0
    again = db.evaluate()
    assert again.evaluated == 0 and again.skipped == first.evaluated
    forced = db.evaluate(where="zoo = 'mnist-mlp' AND step = 0", force=True)
    assert forced.evaluated > 0
    t = tasks.get("mnist-mlp")
    ids = [c["checkpoint_id"] for c in db.checkpoints("zoo = 'mnist-mlp'")]
    es = eval_set(db, t.eval_set_name())["id"]
    assert error_masks(db, ids, es).shape == (len(ids), 1000)


def test_bn_generated_rows_find_the_base_model(zoo_db):
    """A generated BN row without config is evaluated in the only stored base model."""
    db, _, _ = zoo_db
    t = tasks.get("mnist-bn")
    src = db.checkpoints("zoo = 'mnist-bn' AND kind = 'training'")[-1]
    row = db.weights([src["checkpoint_id"]])
    (gid,) = db.add_checkpoints(t.layout(), row.copy(), run=None, kind="generated")
    db.evaluate(where=f"checkpoint_id = {gid}")
    acc = _metric(db, t.eval_set_name(), "accuracy")
    assert acc[gid] == acc[src["checkpoint_id"]]
    base = t.base_state(db)
    direct = t.evaluate_rows(row, base)["accuracy"][0]
    assert direct == acc[gid]
    X, y = t.data(t.eval_split)
    assert (t.predict(row, X, db)[0] == y).mean() == acc[gid]  # the database as context


def test_bn_eval_set_is_the_test_split_then_perturbed_copies():
    from wdb.study.tasks.mnist_bn import perturbed_test

    t = tasks.get("mnist-bn")
    assert t.eval_set_name() == "mnist-bn:test-perturbed-v1"
    X, y = t.data(t.eval_split)
    Xc, yc = t.data("test")
    assert X.shape == (10000, 784) and X.dtype == np.float32
    assert np.array_equal(X[:1000], Xc) and np.array_equal(y, np.tile(yc, 10))
    again = perturbed_test.__wrapped__()  # computed afresh, not the cached arrays
    assert np.array_equal(again[0], X) and np.array_equal(again[1], y)
    moved = np.abs(X[1000:].reshape(9, 1000, 784) - Xc[None]).mean(-1)
    assert moved.min() > 0.05  # every copy of every item is perturbed


def test_bn_eval_set_separates_trained_checkpoints(zoo_db):
    """The BN-only steps' error sets: near-identical on the 1,000 clean items (few errors that
    hardly move), told apart on the perturbed eval set (thousands of errors)."""
    from wdb.query.similarity import max_iou

    db, _, _ = zoo_db
    t = tasks.get("mnist-bn")
    cks = db.checkpoints("zoo = 'mnist-bn' AND kind = 'training'")
    ids = [c["checkpoint_id"] for c in cks]
    masks = error_masks(db, ids, eval_set(db, t.eval_set_name())["id"])
    X, y = t.data("test")
    clean = t.predict(db.weights(ids), X, db) != y[None]
    assert np.array_equal(clean, masks[:, :1000])
    assert masks.sum(1).min() > 10 * clean.sum(1).max()

    def distinct(m):
        return len({r.tobytes() for r in np.packbits(m, axis=1)})

    assert distinct(masks) > distinct(clean)
    best, _ = max_iou(masks, masks, np.arange(len(ids)))
    # measured on this zoo (20 steps): 6 distinct clean error sets, 20 distinct here, max 0.999
    assert np.mean(best < 1) >= 0.9


def test_analyses_score_on_the_current_eval_set(zoo_db):
    """A store evaluated before mnist-bn's eval set changed holds outputs on both eval sets; the
    analyses use the task's current one for every selection (never a mix)."""
    from analyses.relations import current_eval_set, novelty
    from wdb.store.outputs import ensure_eval_set, write_outputs

    db, _, _ = zoo_db
    t = tasks.get("mnist-bn")
    cks = db.checkpoints("zoo = 'mnist-bn' AND kind = 'training'")
    ids = [c["checkpoint_id"] for c in cks]
    X, y = t.data("test")
    old = ensure_eval_set(db, "mnist-bn:test", "mnist-bn", "test", y)
    write_outputs(db, old, "predictions", ids, t.predict(db.weights(ids), X, db))
    new = eval_set(db, t.eval_set_name())["id"]
    assert old != new  # both exist
    sel = "zoo = 'mnist-bn' AND kind = 'training'"
    assert current_eval_set(db, sel, sel) == t.eval_set_name()
    rid = novelty(db, sel, sel)
    (params,) = db.sql("SELECT params FROM relations WHERE id = :r", {"r": rid})
    assert json.loads(params["params"])["eval_set_id"] == new
    from analyses import findings
    from analyses.engine import table_name, write_table

    rows = db.sql(
        "SELECT checkpoint_id, max_iou FROM similarity WHERE relation_id = :r", {"r": rid}
    )
    write_table(
        db,
        table_name("memorization", "pdiff", "novelty"),
        {
            "selection": ["training"] * len(rows),
            "relation_id": [rid] * len(rows),
            "max_iou": [r["max_iou"] for r in rows],
        },
    )
    line = findings.iou_context(db, "pdiff")
    assert "on mnist-bn:test-perturbed-v1 (10,000 items)" in line and "median" in line
    assert current_eval_set(db, "zoo = 'mnist-mlp'", "zoo = 'mnist-mlp'") == "mnist-mlp:test"
    assert current_eval_set(db, "zoo = 'nothing'", sel) is None


def test_unknown_space_is_a_clear_error(zoo_db, tmp_path):
    db = wdb.open(tmp_path / "other")
    from wdb.store.spaces import Layout

    layout = Layout.from_arrays({"w": np.zeros((2, 3), np.float32)})
    (cid,) = db.add_checkpoints(layout, np.ones((1, 6)), run="odd", kind="training")
    with pytest.raises(WdbError) as info:
        db.evaluate()
    msg = str(info.value)
    assert "\n" not in msg and str(cid) in msg and "no known task" in msg
    assert db.sql("SELECT count(*) AS n FROM metrics")[0]["n"] == 0
    with pytest.raises(WdbError, match="not a weight space of task"):
        db.evaluate(task="mnist-mlp")
    with pytest.raises(BadInput, match="not a shapes-occupancy"):
        from wdb.study.tasks.shapes import mesh_for_checkpoint

        mesh_for_checkpoint(db, cid)
