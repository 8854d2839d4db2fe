"""nearest / novelty against float64 brute force, on random, clustered and near-duplicate data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wdb.query import nearest as wq
from wdb.store.spaces import Layout


def layout(d: int = 48) -> Layout:
    return Layout.from_arrays({"w": np.zeros((d // 8, 8), np.float32)})


def brute(train: np.ndarray, q: np.ndarray, exclude: int | None = None):
    d = np.sqrt(((train.astype(np.float64) - q.astype(np.float64)) ** 2).sum(1))
    if exclude is not None:
        d[exclude] = np.inf
    o = np.argsort(d, kind="stable")
    return o, d[o]


def add_training(db, lay, rows, prefix="train"):
    names = [f"{prefix}_{i:04d}" for i in range(len(rows))]
    return db.add_checkpoints(lay, rows, run=names, kind="training", steps=[0] * len(rows))


def data(kind: str, rng, d: int = 48, n: int = 400):
    if kind == "random":
        return rng.normal(size=(n, d)).astype(np.float32)
    if kind == "clustered":
        centres = rng.normal(size=(8, d)) * 3
        return (centres[rng.integers(0, 8, n)] + 0.01 * rng.normal(size=(n, d))).astype(np.float32)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_nearest_matches_brute_force(db, kind):
    rng = np.random.default_rng(0)
    lay = layout()
    train = data(kind, rng)
    ids = add_training(db, lay, train)
    queries = train[rng.integers(0, len(train), 4)] + 0.005 * rng.normal(size=(4, 48))
    gen_ids = db.add_checkpoints(lay, queries.astype(np.float32), kind="generated")
    stored_q = db.weights(gen_ids)
    for gid, q in zip(gen_ids, stored_q, strict=True):
        run = db.checkpoints("checkpoint_id = :i", {"i": gid})[0]["run"]
        got = db.nearest(run=run, k=5)
        order, dist = brute(train, q)
        assert [r["checkpoint_id"] for r in got] == [ids[i] for i in order[:5]]
        assert np.allclose([r["distance"] for r in got], dist[:5], rtol=1e-6, atol=0)
        assert [r["rank"] for r in got] == [1, 2, 3, 4, 5]
        assert all(r["kind"] == "training" for r in got)
    # a training checkpoint as the query: itself excluded
    got = db.nearest(run="train_0007", k=3)
    order, dist = brute(train, train[7], exclude=7)
    assert [r["checkpoint_id"] for r in got] == [ids[i] for i in order[:3]]
    assert ids[7] not in [r["checkpoint_id"] for r in got]


def test_near_duplicates_of_one_run(db):
    """Consecutive checkpoints differing by ~1e-5: uncentred float32 search gets these wrong."""
    rng = np.random.default_rng(1)
    lay = layout(400)
    base = 0.1 * rng.normal(size=400)
    steps = base + np.cumsum(1e-5 * rng.normal(size=(300, 400)), 0)
    traj = steps.astype(np.float32)
    ids = db.add_checkpoints(lay, traj, run="train_a", kind="training")
    others = (0.1 * rng.normal(size=(60, 400))).astype(np.float32)
    add_training(db, lay, others, prefix="other")
    stored = db.weights(ids).astype(np.float64)
    allrows = np.concatenate([stored, others.astype(np.float64)])
    all_ids = ids + [r["checkpoint_id"] for r in db.checkpoints("run LIKE 'other_%'")]
    for s in (0, 150, 299):
        got = db.nearest(run="train_a", step=s, k=4)
        order, dist = brute(allrows, stored[s], exclude=s)
        assert [r["checkpoint_id"] for r in got] == [all_ids[i] for i in order[:4]]
        assert np.allclose([r["distance"] for r in got], dist[:4], rtol=1e-6, atol=0)
        assert got[0]["step"] in (s - 1, s + 1)
    # --among restricts the reference set
    got = db.nearest(run="train_a", step=10, k=2, among="run LIKE 'other_%'")
    order, dist = brute(others, stored[10])
    assert [r["run"] for r in got] == [f"other_{i:04d}" for i in order[:2]]


def test_knn_widening_rounds(db, monkeypatch):
    """Force the FAISS path on a small set and check widening reaches the exact answer."""
    monkeypatch.setattr(wq, "BRUTE_MAX", 10)
    rng = np.random.default_rng(2)
    lay = layout(24)
    base = rng.normal(size=24)
    rows = (base + 1e-5 * rng.normal(size=(200, 24))).astype(np.float32)  # all near-identical
    ids = add_training(db, lay, rows)
    space = db.space(lay.default_name())
    ref = wq.select(db, "kind = 'training'", space.id)
    q = db.weights(ids[:3])
    got_i, got_d, info = wq.knn(db, space, q, ids[:3], ref, 3)
    for j in range(3):
        order, dist = brute(db.weights(ids), q[j], exclude=j)
        assert list(got_i[j]) == [ids[i] for i in order[:3]]
        assert np.allclose(got_d[j], dist[:3], rtol=1e-6, atol=0)
    assert info["rounds"] >= 1 and not info["approximate"]


def test_aligned_nearest_finds_permuted_copy(db):
    from wdb.query.symmetry import permute
    from wdb.study.tasks import get as get_task

    lay = get_task("mnist-mlp").layout()  # the G.pt zoo's 784-10-10 MLP
    rng = np.random.default_rng(5)
    train = (0.1 * rng.normal(size=(30, lay.n_params))).astype(np.float32)
    ids = add_training(db, lay, train)
    copy = permute(train[12], lay, [rng.permutation(10)])
    db.add_checkpoints(lay, copy[None], run="gen_copy", kind="generated")
    plain = db.nearest(run="gen_copy", k=1)
    aligned = db.nearest(run="gen_copy", k=2, aligned=True)
    assert aligned[0]["checkpoint_id"] == ids[12] and aligned[0]["distance"] == 0.0
    assert plain[0]["distance"] > 1.0
    assert aligned[1]["distance"] > 0


def _with_predictions(db, rng):
    from wdb.store.outputs import ensure_eval_set, write_outputs

    lay = layout(32)
    train = rng.normal(size=(300, 32)).astype(np.float32)
    t_ids = add_training(db, lay, train)
    gen = (train[:5] + 0.01 * rng.normal(size=(5, 32))).astype(np.float32)
    g_ids = db.add_checkpoints(lay, gen, kind="generated")
    labels = rng.integers(0, 10, 500)
    es = ensure_eval_set(db, "toy:test", "toy", "test", labels)
    preds = np.where(rng.random((305, 500)) < 0.8, labels, rng.integers(0, 10, (305, 500)))
    preds[300:] = np.where(rng.random((5, 500)) < 0.97, preds[:5], preds[300:])  # near copies
    write_outputs(db, es, "predictions", t_ids + g_ids, preds)
    acc = (preds == labels).mean(1)
    db.add_metrics(
        [
            {"checkpoint_id": c, "eval_set_id": es, "name": "accuracy", "value": float(a)}
            for c, a in zip(t_ids + g_ids, acc, strict=True)
        ]
    )
    return lay, train, t_ids, g_ids, preds != labels, acc


def test_nearest_joins_metrics_and_error_iou(db):
    from wdb.query.similarity import iou_matrix

    rng = np.random.default_rng(6)
    lay, train, t_ids, g_ids, err, acc = _with_predictions(db, rng)
    run = db.checkpoints("checkpoint_id = :i", {"i": g_ids[2]})[0]["run"]
    got = db.nearest(run=run, k=3)
    assert got[0]["checkpoint_id"] == t_ids[2]
    pos = {c: i for i, c in enumerate(t_ids + g_ids)}
    for r in got:
        i = pos[r["checkpoint_id"]]
        assert r["accuracy"] == pytest.approx(acc[i])
        assert r["error_iou"] == iou_matrix(err[[302]], err[[i]])[0, 0]
    assert got[0]["error_iou"] > 0.8


def test_novelty_tables_and_staleness(db):
    from wdb.query.similarity import iou_matrix

    rng = np.random.default_rng(7)
    lay, train, t_ids, g_ids, err, acc = _with_predictions(db, rng)
    rows = db.novelty(targets="kind = 'generated'")
    assert [r["checkpoint_id"] for r in rows] == g_ids
    stored = db.weights(g_ids)
    iou = iou_matrix(err[300:], err[:300])
    for j, r in enumerate(rows):
        order, dist = brute(train, stored[j])
        assert r["nearest_id"] == t_ids[order[0]]
        assert r["min_l2"] == pytest.approx(dist[0], rel=1e-9)
        assert r["max_iou"] == iou[j].max() and r["max_iou_id"] == t_ids[int(iou[j].argmax())]
        assert r["accuracy"] == pytest.approx(acc[300 + j])
    rid = rows[0]["relation_id"]
    joined = db.sql(
        "SELECT c.run, s.min_l2, s.max_iou, n.neighbor_id, r.kind, r.reference_selection "
        "FROM similarity s JOIN checkpoint_info c USING (checkpoint_id) "
        "JOIN neighbors n ON n.relation_id = s.relation_id AND n.checkpoint_id = s.checkpoint_id "
        "JOIN relations r ON r.id = s.relation_id WHERE s.relation_id = :r ORDER BY c.checkpoint_id",
        {"r": rid},
    )
    assert len(joined) == 5 and joined[0]["kind"] == "novelty"
    assert joined[0]["reference_selection"] == wq.DEFAULT_REFERENCE
    assert [j["neighbor_id"] for j in joined] == [r["nearest_id"] for r in rows]
    assert not wq.relation_status(db, rid)[0]["stale"]
    # self excluded when the targets are the training set itself
    self_rows = db.novelty(targets="run IN ('train_0000', 'train_0001')", save=False)
    assert all(
        r["nearest_id"] not in (t_ids[0], t_ids[1]) or r["checkpoint_id"] != r["nearest_id"]
        for r in self_rows
    )
    assert all(r["max_iou_id"] != r["checkpoint_id"] for r in self_rows)
    assert self_rows[0]["relation_id"] is None
    # adding a training checkpoint makes the stored relation stale
    add_training(db, lay, rng.normal(size=(1, 32)).astype(np.float32), prefix="late")
    status = wq.relation_status(db, rid)[0]
    assert status["stale"] and "reference" in status["why"]


def test_cli_json_keys(db):
    from click.testing import CliRunner

    from wdb.cli.main import cli

    rng = np.random.default_rng(8)
    _with_predictions(db, rng)
    run = db.checkpoints("kind = 'generated'")[0]["run"]
    runner = CliRunner()
    res = runner.invoke(cli, ["--db", str(db.path), "query", "nearest", "--run", run, "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 3
    assert list(rows[0]) == [
        "rank", "run", "step", "checkpoint_id", "kind", "distance", "accuracy", "error_iou",
        "path",
    ]  # fmt: skip
    assert rows[0]["path"] == "index"  # 300 references, whose flat index fits the budget
    res = runner.invoke(
        cli, ["--db", str(db.path), "query", "novelty", "--targets", "kind = 'generated'", "--json"]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {
        "checkpoint_id", "min_l2", "nearest_id", "max_iou", "max_iou_id", "accuracy", "path"
    } <= set(rows[0])  # fmt: skip
    res = runner.invoke(cli, ["--db", str(db.path), "query", "nearest", "--run", "nope"])
    assert res.exit_code != 0 and "error:" in res.output
    res = runner.invoke(
        cli, ["--db", str(db.path), "query", "nearest", "--run", run, "--among", "bogus_col = 1"]
    )
    assert res.exit_code != 0 and "error:" in res.output


def test_novelty_aligned_and_multiple_spaces(db):
    """Aligned novelty finds the permuted copy; targets in two spaces give two relations."""
    from wdb.query.symmetry import permute

    z = np.zeros
    mlp = Layout.from_arrays(
        {
            "fc1.weight": z((4, 20), np.float32),
            "fc1.bias": z(4, np.float32),
            "fc2.weight": z((3, 4), np.float32),
            "fc2.bias": z(3, np.float32),
        }
    )
    rng = np.random.default_rng(11)
    train = rng.normal(size=(12, mlp.n_params)).astype(np.float32)
    t_ids = add_training(db, mlp, train, prefix="mlp")
    copy = permute(train[4], mlp, [rng.permutation(4)])
    g = db.add_checkpoints(mlp, copy[None], kind="generated")
    other = layout(16)
    add_training(db, other, rng.normal(size=(5, 16)).astype(np.float32), prefix="o")
    db.add_checkpoints(other, rng.normal(size=(2, 16)).astype(np.float32), kind="generated")
    rows = db.novelty(
        targets="kind = 'generated' AND space = :x".replace(":x", f"'{mlp.default_name()}'"),
        aligned=True,
    )
    assert rows[0]["checkpoint_id"] == g[0]
    assert rows[0]["nearest_id"] == t_ids[4] and rows[0]["min_l2"] == 0.0
    assert rows[0]["max_iou"] is None  # no predictions stored
    both = db.novelty(targets="kind = 'generated'")
    assert len(both) == 3 and len({r["relation_id"] for r in both}) == 2
    rel = db.sql("SELECT metric, space_id FROM relations ORDER BY id")
    assert rel[0]["metric"] == "aligned_l2" and {r["metric"] for r in rel[1:]} == {"l2"}


def test_add_metrics_replaces_only_its_own_keys(db):
    """``replace`` drops the rows with the same (checkpoint, eval set, name) and no others, in
    one statement per (eval set, name) with the ids bound as one list."""
    from wdb.store.outputs import ensure_eval_set

    ids = add_training(db, Layout.from_arrays({"w": np.zeros(4, np.float32)}), np.zeros((3, 4)))
    a = ensure_eval_set(db, "toy:a", "toy", "test", np.arange(4) % 2)
    b = ensure_eval_set(db, "toy:b", "toy", "test", np.arange(4) % 2)
    first = [
        {"checkpoint_id": c, "eval_set_id": e, "name": n, "value": 0.0}
        for c in ids
        for e in (a, b)
        for n in ("accuracy", "loss")
    ]
    db.add_metrics(first)
    db.add_metrics(
        [{"checkpoint_id": c, "eval_set_id": a, "name": "accuracy", "value": 1.0} for c in ids[:2]]
    )
    got = {
        (r["checkpoint_id"], r["eval_set_id"], r["name"]): r["value"]
        for r in db.sql("SELECT checkpoint_id, eval_set_id, name, value FROM metrics")
    }
    assert len(got) == len(first)  # replaced, not duplicated; nothing else dropped
    assert {k for k, v in got.items() if v == 1.0} == {(c, a, "accuracy") for c in ids[:2]}


def test_a_newer_eval_set_wins_a_tie(db):
    """Re-evaluated on a task's new eval set, a store compares error sets there: when two sets
    cover the same checkpoints, nearest takes the newer one."""
    from wdb.query.similarity import iou_matrix
    from wdb.store.outputs import ensure_eval_set, write_outputs

    rng = np.random.default_rng(8)
    lay, train, t_ids, g_ids, err, acc = _with_predictions(db, rng)
    labels = rng.integers(0, 3, 200)
    newer = ensure_eval_set(db, "toy:hard", "toy", "hard", labels)
    preds = rng.integers(0, 3, (305, 200))
    write_outputs(db, newer, "predictions", t_ids + g_ids, preds)
    run = db.checkpoints("checkpoint_id = :i", {"i": g_ids[2]})[0]["run"]
    (got,) = db.nearest(run=run, k=1)
    hard = preds != labels
    assert got["checkpoint_id"] == t_ids[2]
    assert got["error_iou"] == iou_matrix(hard[[302]], hard[[2]])[0, 0]
    assert got["error_iou"] != iou_matrix(err[[302]], err[[2]])[0, 0]


def test_output_sets_read_all_or_by_ids_alike(db):
    """``behaviour.output_sets`` reads the whole table and filters when it has no more rows
    than ids are asked for, else asks for the ids: the same answer either way."""
    from wdb.query.behaviour import output_sets

    rng = np.random.default_rng(5)
    _lay, _train, t_ids, g_ids, _err, _acc = _with_predictions(db, rng)
    (es,) = {r["eval_set_id"] for r in db.sql("SELECT eval_set_id FROM predictions")}
    every = t_ids + g_ids
    assert db.sql("SELECT count(*) AS n FROM predictions")[0]["n"] == len(every)
    assert output_sets(db, every + [10**9]) == {es: set(every)}  # read all, filtered here
    assert output_sets(db, every[:7]) == {es: set(every[:7])}  # by ids
    assert output_sets(db, [10**9]) == {}


def test_a_selection_reads_keys_first_and_the_rest_when_asked(db):
    """``select`` reads ids and Zarr rows at once, hashes and runs when first used; a
    checkpoint deleted in between is an error naming the selection, never a shifted row; the
    records travel (pickled, as to a Dask worker) whole."""
    import pickle

    from wdb.errors import WdbError

    rng = np.random.default_rng(3)
    lay = layout()
    ids = add_training(db, lay, rng.normal(size=(6, 48)).astype(np.float32))
    sel = wq.select(db, "kind = 'training'")
    assert sel.ids.tolist() == list(ids) and sel.info._got is None  # keys only so far
    assert sel.info.column("checkpoint_id") == list(ids) and sel.info._got is None
    shipped = pickle.loads(pickle.dumps(sel.info))
    assert [r["run"] for r in shipped] == [f"train_{i:04d}" for i in range(6)]
    again = wq.select(db, "kind = 'training'")
    db.rm("run = 'train_0003'", yes=True)
    with pytest.raises(WdbError, match="selection 'kind = 'training'' changed while it was read"):
        again.info.column("sha256")
    fresh = wq.select(db, "kind = 'training'")
    db.add_checkpoints(
        lay, rng.normal(size=(1, 48)).astype(np.float32), run="late", kind="training"
    )
    assert [r["run"] for r in fresh.info] == [f"train_{i:04d}" for i in (0, 1, 2, 4, 5)]
