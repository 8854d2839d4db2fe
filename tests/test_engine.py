"""The distributed engine: ``wdb query novelty`` on a local Dask cluster of 2 workers gives the
in-process result to the last bit (neighbour ids and float64 distances)."""

from __future__ import annotations

import numpy as np
import pytest

from wdb.query import nearest as query

pytest.importorskip("distributed", reason="Dask is not installed (pip install -e '.[dask]')")


@pytest.mark.parametrize("n_ref", [120, 700])  # brute-force scan, and the FAISS index path
def test_novelty_on_two_workers_is_bit_identical(db, n_ref):
    from wdb.store.spaces import Layout

    rng = np.random.default_rng(n_ref)
    layout = Layout.from_arrays({"w": np.zeros((6, 10), np.float32), "b": np.zeros(6, np.float32)})
    base = rng.normal(size=layout.n_params).astype(np.float32)
    train = (base + rng.normal(0, 0.3, (n_ref, layout.n_params))).astype(np.float32)
    db.add_checkpoints(layout, train, run="train", kind="training", zoo="z")
    gen = (base + rng.normal(0, 0.3, (90, layout.n_params))).astype(np.float32)
    db.add_checkpoints(layout, gen, run="gen", kind="generated", zoo="z")
    local = query.novelty(db, "kind = 'generated'", k=3, save=False)
    dist = query.novelty(db, "kind = 'generated'", k=3, save=False, workers=2)
    assert len(local) == len(dist) == 90
    for a, b in zip(local, dist, strict=True):
        assert a["checkpoint_id"] == b["checkpoint_id"] and a["nearest_id"] == b["nearest_id"]
        assert np.float64(a["min_l2"]).tobytes() == np.float64(b["min_l2"]).tobytes()
    # the training set's own novelty (each target excluded from its reference) also matches
    local = query.novelty(db, "kind = 'training'", k=2, save=False)
    dist = query.novelty(db, "kind = 'training'", k=2, save=False, workers=2)
    assert [(r["nearest_id"], r["min_l2"]) for r in local] == [
        (r["nearest_id"], r["min_l2"]) for r in dist
    ]


def test_a_cluster_scan_splits_the_references_finer_than_one_part_per_worker(db):
    """Many references, one query: the scan is cut into SPLIT parts per worker (the next part
    goes to the first worker free) and the merged answer is the in-process one, bit for bit;
    big queries against few references keep one part per worker."""
    from wdb.query import engine
    from wdb.store.spaces import Layout

    assert engine.partitions(1000, 2, 1000 * 8, 8) == 2 * engine.SPLIT
    assert engine.partitions(10, 2, 10 * 8, 10 * 8) == 2  # re-reading big queries would cost more
    assert engine.partitions(3, 4, 3 * 8, 8) == 3  # never more parts than references
    rng = np.random.default_rng(5)
    layout = Layout.from_arrays({"w": np.zeros((4, 5), np.float32)})
    train = rng.normal(size=(200, layout.n_params)).astype(np.float32)  # <= BRUTE_MAX: the scan
    db.add_checkpoints(layout, train, run="train", kind="training", zoo="z")
    db.add_checkpoints(layout, train[7:8] + 0.01, run="gen", kind="generated", zoo="z")
    tgt, ref = query.select(db, "kind = 'generated'"), query.select(db, "kind = 'training'")
    space = db.space(int(tgt.info[0]["space_id"]))
    q = query.stored(db, space, tgt.rows)
    local = engine.knn(db, space, q, list(tgt.ids), ref, 4, False, "local")
    dist = engine.knn(db, space, q, list(tgt.ids), ref, 4, False, "local:2")
    assert dist[2]["parts"] == 2 * engine.SPLIT
    assert (local[0] == dist[0]).all() and local[1].tobytes() == dist[1].tobytes()
    assert local[0][0, 0] == ref.ids[7]


def _results(db, eval_name: str) -> tuple[dict, dict]:
    """Every metric value (as float64 bytes) and every stored output row, per checkpoint."""
    from wdb.store.outputs import eval_set, read_outputs

    metrics = {
        (r["checkpoint_id"], r["name"]): np.float64(r["value"]).tobytes()
        for r in db.sql(
            "SELECT m.checkpoint_id, m.name, m.value FROM metrics m "
            "JOIN eval_sets e ON e.id = m.eval_set_id WHERE e.name = :e",
            {"e": eval_name},
        )
    }
    ids = sorted({cid for cid, _ in metrics})
    preds = read_outputs(db, ids, eval_set(db, eval_name)["id"], "predictions")
    return metrics, dict(zip(ids, (p.tobytes() for p in preds), strict=True))


@pytest.mark.parametrize("task_ref", ["mnist-mlp", "outside"])
def test_evaluate_on_two_workers_is_bit_identical(db, task_ref, monkeypatch):
    """A built-in task and a researcher's task file: the same metrics and predictions, to the
    last bit, whether the batches ran here or on 2 workers; and one writer, so each checkpoint
    has its metric once."""
    from pathlib import Path

    from wdb.study import tasks

    if task_ref == "outside":
        task_ref = str(Path(__file__).parent / "outside_study" / "my_task.py")
    t = tasks.get(task_ref)
    layout = t.layout()
    rng = np.random.default_rng(0)
    rows = (rng.normal(size=(37, layout.n_params)) * 0.1).astype(np.float32)
    db.add_checkpoints(layout, rows, run="r", kind="training", zoo="z")
    local = db.evaluate(task=task_ref, batch=8)  # 5 batches, spread over the 2 workers
    want = _results(db, t.eval_set_name())
    remote = db.evaluate(task=task_ref, batch=8, force=True, workers=2)
    got = _results(db, t.eval_set_name())
    assert local.evaluated == remote.evaluated == 37
    assert len(want[0]) >= 2 * 37 and got == want
    n = db.sql(
        "SELECT count(*) AS n FROM metrics WHERE name = 'accuracy' AND eval_set_id = "
        "(SELECT id FROM eval_sets WHERE name = :e)",
        {"e": t.eval_set_name()},
    )[0]["n"]
    assert n == 37
    from wdb.query import engine

    started, real = [], engine._start
    monkeypatch.setattr(engine, "_start", lambda e: (started.append(e), real(e))[1])
    again = db.evaluate(task=task_ref, workers=2)  # all evaluated already: no cluster
    assert (again.evaluated, again.skipped, started) == (0, 37, [])


def test_chamfer_relation_and_an_engine_scope_on_two_workers(db):
    """``wdb analyze --workers 2``: one cluster serves every relation of the scope, and the
    Chamfer relation (split by target) and novelty give the in-process results to the bit."""
    from analyses import relations
    from wdb.query import engine
    from wdb.store.outputs import ensure_eval_set, write_outputs
    from wdb.store.spaces import Layout

    rng = np.random.default_rng(3)
    layout = Layout.from_arrays({"w": np.zeros(12, np.float32)})
    db.add_checkpoints(
        layout, rng.normal(size=(14, 12)).astype(np.float32), run="t", kind="training", zoo="z"
    )
    db.add_checkpoints(
        layout, rng.normal(size=(9, 12)).astype(np.float32), run="g", kind="generated", zoo="z"
    )
    ids = [c["checkpoint_id"] for c in db.checkpoints()]
    clouds = rng.normal(size=(len(ids), 256, 3)).astype(np.float32)
    clouds[ids.index(ids[-1])] = 0.5  # an empty mesh's cloud: left out
    eid = ensure_eval_set(db, "shapes:points", None, None, n_items=256)
    write_outputs(db, eid, "points", ids, clouds)
    targets, reference = "kind = 'generated'", "kind = 'training'"
    local = relations.shape_distances(db, targets, reference)
    local_nov = [(r["nearest_id"], r["min_l2"]) for r in query.novelty(db, targets, save=False)]
    with engine.scope("local:2"):
        with engine.client(engine.spec()) as a, engine.client(engine.spec()) as b:
            assert a is b and a is not None  # the scope's one cluster
        dist = relations.shape_distances(db, targets, reference)
        dist_nov = [(r["nearest_id"], r["min_l2"]) for r in query.novelty(db, targets, save=False)]
    assert engine.spec() == "local"  # the scope is gone with its cluster
    assert len(local) == 8 and dist == local
    assert dist_nov == local_nov
