"""Analyses on a tiny synthetic database: tables checked against independent numpy computations."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from analyses import engine, spec, synthetic
from wdb.errors import BadInput, NotFound

GRID = 24


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, module_catalog):
    import wdb

    root = tmp_path_factory.mktemp("analyses")
    db = wdb.open(root / "db", catalog_url=module_catalog)
    made = synthetic.build(db, n_train=20, n_gen=10, n_base=8)
    rec = engine.run(
        db,
        "memorization",
        method="toygen",
        out=root / "report",
        task=made["task"],
        options={"boundary": {"grid": GRID}},
    )
    return db, made, rec, root / "report"


def _table(db, rec, short):
    name = engine.table_name(rec["spec"], rec["method"], short)
    assert name in {t["name"] for t in rec["tables"]}
    return db.sql(f"SELECT * FROM {name}")


def _l2(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


# -- specs ------------------------------------------------------------------------------------
def test_builtin_spec_and_method_overlay():
    assert "memorization" in spec.builtin()
    s = spec.load("memorization")
    assert {"training", "generated", "noise_1", "noise_2"} <= set(s.selections)
    hr = spec.load("memorization", method="hyperrep")
    assert "reconstructed" in hr.selections["training"]
    gpt = spec.load("memorization", method="gpt")
    assert next(r for r in gpt.relations if r["name"] == "novelty")["metric"] == "aligned_l2"
    assert next(r for r in s.relations if r["name"] == "novelty").get("metric", "l2") == "l2"


def test_bad_specs_are_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[[relations]]\nname = "x"\nkind = "magic"\n')
    with pytest.raises(BadInput, match="kind"):
        spec.load(bad)
    bad.write_text('name = "bad"\n[[figures]]\nname = "f"\nkind = "scatter"\ntable = "nope"\n')
    with pytest.raises(BadInput, match="unknown table"):
        spec.load(bad)
    with pytest.raises(NotFound):
        spec.load("no-such-spec")


def test_fill_leaves_unknown_placeholders():
    assert spec.fill("a {x} {y}", {"x": 1}) == "a 1 {y}"


# -- the tables -------------------------------------------------------------------------------
def test_selections_match_what_was_written(analysed):
    db, made, rec, _ = analysed
    rows = _table(db, rec, "selections")
    for sel in ("training", "generated", "noise_1", "noise_2", "average", "gaussian"):
        got = sorted(r["checkpoint_id"] for r in rows if r["selection"] == sel)
        assert got == sorted(made[sel]), sel
    # the smaller σ is noise_1
    assert rec["context"]["sigmas"] == {"noise_1": 0.05, "noise_2": 0.3}


def test_novelty_min_l2_and_max_iou_match_brute_force(analysed):
    db, made, rec, _ = analysed
    rows = {(r["selection"], r["checkpoint_id"]): r for r in _table(db, rec, "novelty")}
    task = made["task"]
    X, y = task.data("test")
    W_train = db.weights(made["training"])
    E_train = task.predict(W_train, X) != y
    for sel in ("training", "generated", "noise_2"):
        ids = made[sel]
        W = db.weights(ids)
        D = _l2(W, W_train)
        E = task.predict(W, X) != y
        inter = (E[:, None, :] & E_train[None]).sum(-1)
        union = (E[:, None, :] | E_train[None]).sum(-1)
        iou = inter / (union + 1e-8)
        if sel == "training":
            np.fill_diagonal(D, np.inf)
            np.fill_diagonal(iou, -np.inf)
        for i, c in enumerate(ids):
            r = rows[(sel, c)]
            assert r["min_l2"] == pytest.approx(D[i].min(), rel=1e-6)
            assert r["nearest_id"] == made["training"][int(D[i].argmin())]
            assert r["max_iou"] == pytest.approx(iou[i].max(), abs=1e-12)
            assert r["accuracy"] == pytest.approx(1 - E[i].mean())


def test_histogram_counts_match_numpy(analysed):
    db, made, rec, _ = analysed
    nov = _table(db, rec, "novelty")
    hist = _table(db, rec, "min_l2_hist")
    vals = {
        s: np.array([r["min_l2"] for r in nov if r["selection"] == s])
        for s in ("training", "generated")
    }
    edges = np.histogram_bin_edges(np.concatenate(list(vals.values())), bins=15)
    for s, v in vals.items():
        counts, _ = np.histogram(v, bins=edges)
        rows = sorted((r for r in hist if r["selection"] == s), key=lambda r: r["bin"])
        assert [r["n"] for r in rows] == counts.tolist()
        assert sum(r["pct"] for r in rows) == pytest.approx(100.0)
        assert rows[0]["bin_lo"] == pytest.approx(edges[0])
        assert rows[-1]["bin_hi"] == pytest.approx(edges[-1])
    # generated near-copies sit in the lowest bins, training models do not
    assert vals["generated"].max() < vals["training"].min()


def test_summary_is_the_mean_of_the_novelty_rows(analysed):
    db, _, rec, _ = analysed
    nov = _table(db, rec, "novelty")
    for r in _table(db, rec, "summary"):
        v = [x for x in nov if x["selection"] == r["selection"]]
        assert r["n"] == len(v)
        assert r["mean_min_l2"] == pytest.approx(np.mean([x["min_l2"] for x in v]))
        assert r["mean_accuracy"] == pytest.approx(np.mean([x["accuracy"] for x in v]))


def test_heatmap_values_are_the_stored_weights_of_the_3_nearest(analysed):
    db, made, rec, _ = analysed
    rows = _table(db, rec, "heatmap")
    queries = sorted({r["query"] for r in rows})
    assert queries == sorted(made["generated"])[:3]  # generated #0-2
    W_train = db.weights(made["training"])
    for q in queries:
        mine = [r for r in rows if r["query"] == q]
        idx = sorted({r["param_index"] for r in mine})
        assert len(idx) == min(64, W_train.shape[1])
        d = _l2(db.weights([q]), W_train)[0]
        want = [made["training"][j] for j in np.argsort(d)[:3]]
        got = [next(r["checkpoint_id"] for r in mine if r["rank"] == k) for k in (1, 2, 3)]
        assert got == want
        for r in mine[:10]:
            assert r["value"] == pytest.approx(
                float(db.weights([r["checkpoint_id"]])[0, r["param_index"]])
            )


def test_decision_grid_pairs_and_agreement(analysed):
    db, made, rec, _ = analysed
    rows = _table(db, rec, "boundary")
    pairs = sorted({r["pair"] for r in rows})
    assert pairs == [0, 1, 2]
    for p in pairs:
        gen = [r for r in rows if r["pair"] == p and r["role"] == "generated"]
        nn = [r for r in rows if r["pair"] == p and r["role"] == "nearest training"]
        assert len(gen) == len(nn) == GRID * GRID
        a = np.array([r["pred"] for r in sorted(gen, key=lambda r: (r["gy"], r["gx"]))])
        b = np.array([r["pred"] for r in sorted(nn, key=lambda r: (r["gy"], r["gx"]))])
        assert set(a) <= set(range(made["task"].n_classes))
        assert (a == b).mean() > 0.9  # near-copies draw near-identical regions


def test_scatter_samples_at_most_100_per_group_from_novelty(analysed):
    db, _, rec, _ = analysed
    nov = {(r["selection"], r["checkpoint_id"]): r for r in _table(db, rec, "novelty")}
    sc = _table(db, rec, "scatter")
    assert {r["selection"] for r in sc} == {"training", "generated", "noise_1", "noise_2"}
    for r in sc:
        assert r["max_iou"] == nov[(r["selection"], r["checkpoint_id"])]["max_iou"]


def test_figures_are_valid_pngs_named_by_their_tables(analysed):
    db, _, rec, out = analysed
    kinds = {f["kind"] for f in rec["figures"]}
    assert {"heatmap", "histogram", "decision", "scatter"} <= kinds
    for f in rec["figures"]:
        data = (out / f["path"]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        w, h = struct.unpack(">II", data[16:24])
        assert w > 200 and h > 200
        assert db.sql(f"SELECT count(*) AS n FROM {f['table']}")[0]["n"] > 0
    # neural-field and p-diff-only entries are skipped for a classifier method, with a reason
    skipped = {s["name"] for s in rec["skipped"]}
    assert {"shapes", "chamfer", "tsne"} <= skipped


def test_unknown_method_is_a_clear_error(analysed):
    db, *_ = analysed
    with pytest.raises(NotFound, match="no finished generator run"):
        engine.run(db, "memorization", method="nope", out="/tmp/unused")


def test_neural_field_method_gets_shapes_and_chamfer_tables(tmp_path):
    """A 'field' task: stored point clouds instead of predictions → shape figure, Chamfer table."""
    import wdb
    from wdb.store import outputs
    from wdb.study.tasks.shapes import chamfer

    db = wdb.open(tmp_path / "db")
    task = synthetic.ToyTask(kind="field")
    made = synthetic.build(db, task=task, n_train=8, n_gen=4, n_base=3, method="hyperdiffusion")
    test_ids = made["training"][-2:]
    db.sql(
        f"UPDATE checkpoints SET split = 'test' WHERE id IN ({test_ids[0]}, {test_ids[1]})",
        write=True,
    )
    ids = [i for k in ("training", "generated", "noise_1", "noise_2") for i in made[k]]
    rng = np.random.default_rng(0)
    sphere = rng.normal(size=(256, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    W = db.weights(ids)
    clouds = np.stack([sphere * (1 + np.abs(w[:3])) for w in W]).astype(np.float32)
    es = outputs.ensure_eval_set(db, "toy:points", "toy", "points", n_items=256)
    outputs.write_outputs(db, es, "points", ids, clouds)
    rec = engine.run(db, "memorization", method="hyperdiffusion", out=tmp_path / "r", task=task)
    names = {f["name"] for f in rec["figures"]}
    assert {"shapes", "shape_novelty", "heatmap", "min_l2_hist"} <= names
    assert "decision_boundaries" not in names
    rows = _table(db, rec, "chamfer")
    pos = {c: k for k, c in enumerate(ids)}
    train = made["training"]
    for r in rows[:6]:
        c = r["checkpoint_id"]
        d = [chamfer(clouds[pos[c]], clouds[pos[t]]) for t in train if t != c]
        assert r["min_chamfer_train"] == pytest.approx(min(d))
        dt = [chamfer(clouds[pos[c]], clouds[pos[t]]) for t in test_ids if t != c]
        assert r["min_chamfer_test"] == pytest.approx(min(dt))
    shapes = _table(db, rec, "shapes")
    assert {r["role"] for r in shapes} == {"generated", "nearest training"}
