"""HyperDiffusion: shapes, seeds, augmentation size, lineage, Chamfer to the nearest training shape."""

from __future__ import annotations

import json

import numpy as np
import pytest

from generators import hyperdiffusion as hd
from wdb import plugin as P
from wdb.store.write import NewCheckpoint
from wdb.study import generate as G
from wdb.study.tasks import get
from wdb.study.tasks import shapes as S

TINY = {"size": "small", "width": 16, "train_steps": 6, "diffusion_steps": 10, "batch": 8}


def _layout():
    return get("shapes-occupancy").layout()


def synthetic(n=12, seed=0):
    layout = _layout()
    rng = np.random.default_rng(seed)
    W = (rng.normal(0, 0.2, layout.n_params) + rng.normal(0, 0.02, (n, layout.n_params))).astype(
        np.float32
    )
    space = type("S", (), {"layout": layout, "id": 3, "name": "s", "n_params": layout.n_params})()
    info = [{"run": f"r{i}", "step": 0} for i in range(n)]
    return P.TrainingSet(np.arange(n), W, space, info, {}, {}, "synthetic")


def fit_sample(ts, n=4, seed=0, **over):
    cfg = P.resolve_config(hd, {**TINY, **over})
    state = G.fit_method(hd, ts, cfg, seed)
    return state, G.sample_method(hd, state, ts, n, cfg, seed), cfg


def test_shapes_seeds_and_augmentation_size():
    ts = synthetic()
    state, (s,), cfg = fit_sample(ts)
    assert s.rows.shape == (4, 6017) and s.rows.dtype == np.float32 and np.isfinite(s.rows).all()
    assert cfg["n_train_rows"] == 12
    np.testing.assert_allclose(state["norm.mean"].numpy(), ts.weights.mean(0), atol=1e-6)
    _, (again,), _ = fit_sample(ts)
    np.testing.assert_array_equal(again.rows, s.rows)
    _, (other,), _ = fit_sample(ts, seed=1)
    assert not np.allclose(other.rows, s.rows)
    _, (aug,), cfg7 = fit_sample(ts, augment_permutations=7)
    assert cfg7["n_train_rows"] == 96 and aug.rows.shape == (4, 6017)
    _, _, cfg_g = fit_sample(ts, normalize="global")
    assert cfg_g["normalize"] == "global"


def octahedron(radius: float) -> np.ndarray:
    """An occupancy MLP by hand: logit = 8 (r - |x|-|y|-|z|) — a closed octahedron."""
    layout = _layout()
    p = {e.name: np.zeros(e.shape, np.float32) for e in layout.entries}
    for i in range(3):  # the positional encoding starts with the raw coordinates
        p["fc1.weight"][2 * i, i], p["fc1.weight"][2 * i + 1, i] = 1.0, -1.0
    p["fc2.weight"][0, :6] = 1.0
    p["fc3.weight"][0, 0], p["fc3.bias"][0] = -8.0, 8.0 * radius
    return layout.flatten(p)


def octahedron_zoo(db) -> None:
    """Zoo 'shp': two training fields (octahedra of radius 0.5 and 0.6) of shapes 0 and 1."""
    db.write_checkpoints(
        db.ensure_space(_layout()),
        [
            NewCheckpoint(
                run=f"shape-{i}",
                step=0,
                row=octahedron(0.5 + 0.1 * i),
                zoo="shp",
                split="train",
                run_config={"task": "shapes-occupancy", "seed": 0, "shape_index": i},
            )
            for i in range(2)
        ],
    )


def test_generate_lineage_and_nearest_training_chamfer(db):
    layout = _layout()
    octahedron_zoo(db)
    rep = G.generate(db, "hyperdiffusion", train="zoo = 'shp'", n=2, overrides=dict(TINY))
    assert rep.status == "done" and len(rep.runs) == 2
    cfgs = db.sql(
        "SELECT r.config FROM runs r WHERE r.generator_run_id = :g AND r.name NOT LIKE 'genmodel%'",
        {"g": rep.generator_run_id},
    )
    assert [json.loads(c["config"])["task"] for c in cfgs] == ["shapes-occupancy"] * 2
    # targets: a real shape and an empty field (all logits negative)
    empty = np.zeros(layout.n_params, np.float32)
    empty[-1] = -5.0
    ids = db.add_checkpoints(layout, np.stack([octahedron(0.6), empty]), kind="baseline")
    out = hd.nearest_training_chamfer(
        db, f"checkpoint_id IN ({ids[0]}, {ids[1]})", "zoo = 'shp'", resolution=32
    )
    got = {r["checkpoint_id"]: r for r in out}
    assert np.isnan(got[ids[1]]["chamfer_train_min"]) and got[ids[1]]["nearest"] is None
    # recompute by hand: mesh the octahedron, compare with both ground-truth planes
    mesh = S.marching_mesh(S.ShapesOccupancy().grid_logits(octahedron(0.6), 32)[0], S.LEVEL, -1e3)
    pts = S.sample_points(mesh, S.N_POINTS, seed=0)
    d = [
        S.chamfer(pts, S.ShapesOccupancy().gt_points({"seed": 0, "shape_index": i})) for i in (0, 1)
    ]
    assert got[ids[0]]["chamfer_train_min"] == pytest.approx(min(d), rel=1e-6)
    assert (
        got[ids[0]]["nearest"]
        == db.checkpoints(f"run = 'shape-{int(np.argmin(d))}'")[0]["checkpoint_id"]
    )
    rows = db.sql(
        "SELECT value FROM metrics WHERE name = 'chamfer_train_min' AND checkpoint_id = :i",
        {"i": ids[0]},
    )
    assert rows and rows[0]["value"] == pytest.approx(min(d), rel=1e-6)


def test_evaluate_records_chamfer_to_the_generators_training_shapes(db):
    """`wdb evaluate` follows a generated checkpoint's lineage to its generator's training shapes
    and records `chamfer_train_min` (issue 6: Chamfer to the nearest training shape as a metric)."""
    layout = _layout()
    octahedron_zoo(db)
    rep = G.generate(db, "hyperdiffusion", train="zoo = 'shp'", n=1, overrides=dict(TINY))
    # a sample of that generator that decodes to a real surface (an octahedron field)
    (cid,) = db.add_checkpoints(
        layout, octahedron(0.6)[None], kind="generated", generator_run_id=rep.generator_run_id
    )
    db.evaluate(where=f"checkpoint_id = {cid}")
    got = db.sql(
        "SELECT value FROM metrics WHERE name = 'chamfer_train_min' AND checkpoint_id = :i",
        {"i": cid},
    )
    task = S.ShapesOccupancy()
    pts = S.sample_points(
        S.marching_mesh(task.grid_logits(octahedron(0.6))[0], S.LEVEL, -1e3), 2048, 0
    )
    want = min(S.chamfer(pts, task.gt_points({"seed": 0, "shape_index": i})) for i in (0, 1))
    assert len(got) == 1 and got[0]["value"] == pytest.approx(want, rel=1e-6)
    # a training checkpoint has its own shape, so it gets `chamfer`, not `chamfer_train_min`
    db.evaluate(where="run = 'shape-0'")
    names = {
        r["name"]
        for r in db.sql(
            "SELECT m.name FROM metrics m JOIN checkpoint_info c "
            "USING (checkpoint_id) WHERE c.run = 'shape-0'"
        )
    }
    assert "chamfer" in names and "chamfer_train_min" not in names


def test_hd_augmentation_rerun_reuses_its_runs(db, tmp_path):
    """The experiment's table has one row per permutation count, and a rerun finds the tagged
    runs (matched on size and augment_permutations) instead of training them again."""
    from analyses import experiments

    octahedron_zoo(db)
    G.generate(db, "hyperdiffusion", train="zoo = 'shp'", n=1, overrides=dict(TINY))
    rec = experiments.hd_augmentation(db, tmp_path, size="small", n=2, perms=(0, 1))
    rows = db.sql(f"SELECT * FROM {rec['table']} ORDER BY augment_permutations")
    assert [r["augment_permutations"] for r in rows] == [0, 1]
    for r in rows:
        cfg = json.loads(
            db.sql(f"SELECT config FROM generator_runs WHERE id = {r['generator_run_id']}")[0][
                "config"
            ]
        )
        assert cfg["augment_permutations"] == r["augment_permutations"] and r["n"] == 2
    before = db.sql("SELECT count(*) AS n FROM generator_runs")[0]["n"]
    experiments.hd_augmentation(db, tmp_path, size="small", n=2, perms=(0, 1))
    assert db.sql("SELECT count(*) AS n FROM generator_runs")[0]["n"] == before
