"""The Python API's listings (``search_runs`` / ``search_checkpoints`` with ``.df()`` /
``.pl()``) and neighbour queries from a run name, a checkpoint id or a state dict."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from wdb.errors import BadInput, NotFound, WdbError
from wdb.store.spaces import Layout

LAYOUT = Layout.from_arrays({"w": np.zeros((4, 3), np.float32), "b": np.zeros(4, np.float32)})


@pytest.fixture
def zoo(db):
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((12, 16)).astype(np.float32)
    a = db.add_checkpoints(
        LAYOUT,
        rows[:6],
        run="a",
        kind="training",
        zoo="z",
        metrics=[{"loss": 1.0 / (i + 1), "acc": i / 10} for i in range(6)],
        run_config={"lr": 0.1, "opt": {"name": "sgd", "momentum": 0.9}},
    )
    b = db.add_checkpoints(LAYOUT, rows[6:], run="b", kind="training", zoo="y")
    g = db.add_checkpoints(LAYOUT, rows[:1] + 0.001, kind="generated")
    return db, rows, a, b, g


def test_search_runs_flattens_config_tags_and_last_metrics(zoo):
    db, _, a, _, _ = zoo
    db.tag("a", best="yes")
    runs = db.search_runs()
    assert len(runs) == 3 and runs[0]["run"] == "a"  # a sequence of dicts
    df = runs.df()
    a_row = df[df["run"] == "a"].iloc[0]
    assert a_row["params.lr"] == 0.1 and a_row["params.opt.name"] == "sgd"
    assert a_row["params.opt.momentum"] == 0.9
    assert a_row["metrics.loss"] == pytest.approx(1 / 6)  # the last checkpoint's
    assert a_row["tags.best"] == "yes" and a_row["checkpoints"] == 6
    assert df[df["run"] == "b"]["params.lr"].isna().all()
    cols = list(df.columns)
    assert cols.index("tags.best") < cols.index("params.lr") < cols.index("metrics.acc")
    assert list(db.search_runs("zoo = 'y'").df()["run"]) == ["b"]
    assert list(db.search_runs("tags LIKE '%best=yes%'").df()["run"]) == ["a"]


def test_search_checkpoints_one_row_per_checkpoint(zoo):
    db, _, a, _, _ = zoo
    df = db.search_checkpoints("run = 'a' AND step >= 4").df()
    assert df["checkpoint_id"].tolist() == a[4:]
    assert df["metrics.loss"].tolist() == pytest.approx([1 / 5, 1 / 6])
    assert set(df["params.opt.name"]) == {"sgd"}
    # a metric wdb computed beats the reported one of the same name
    es = db.sql(
        "INSERT INTO eval_sets (name, task, split) VALUES ('test', 't', 'test') RETURNING id",
        write=True,
    )[0]["id"]
    db.add_metrics([{"checkpoint_id": a[5], "eval_set_id": es, "name": "loss", "value": 9.0}])
    assert db.search_checkpoints(f"checkpoint_id = {a[5]}")[0]["metrics.loss"] == 9.0
    assert len(db.search_checkpoints("kind = 'generated'")) == 1
    with pytest.raises(BadInput, match="where"):
        db.search_checkpoints("run = 'a'; DROP TABLE runs")


def test_pl_gives_polars_or_one_clear_line(zoo, monkeypatch):
    db = zoo[0]
    listing = db.search_runs()
    try:
        import polars  # noqa: F401
    except ImportError:
        pass
    else:
        frame = listing.pl()
        assert frame.height == 3 and "params.lr" in frame.columns
    monkeypatch.setitem(sys.modules, "polars", None)  # as if it were not installed
    with pytest.raises(WdbError, match=r"needs polars.*pip install polars"):
        listing.pl()


def test_nearest_by_run_checkpoint_id_and_state_dict(zoo):
    db, rows, a, _, _ = zoo
    by_run = db.nearest("a", step=2, k=3)
    by_id = db.nearest(a[2], k=3)
    assert by_run == by_id
    assert a[2] not in [r["checkpoint_id"] for r in by_id]  # the query itself is excluded
    # a state dict (torch, in another key order) of checkpoint a[2]: found at distance 0
    state = {"b": torch.tensor(rows[2][12:]), "w": torch.tensor(rows[2][:12].reshape(4, 3))}
    got = db.nearest(state, k=3)
    assert got[0]["checkpoint_id"] == a[2] and got[0]["distance"] == 0.0
    assert [r["checkpoint_id"] for r in got[1:]] == [r["checkpoint_id"] for r in by_id[:2]]
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.tensor(rows[2][:12].reshape(4, 3)))
    module.b = torch.nn.Parameter(torch.tensor(rows[2][12:]))
    assert db.nearest(module, k=1)[0]["checkpoint_id"] == a[2]
    with pytest.raises(NotFound, match="no weight space holds tensors like these"):
        db.nearest({"w": torch.zeros(5)})
    with pytest.raises(NotFound, match="checkpoint 999 not found"):
        db.nearest(999)
    with pytest.raises(BadInput, match="step applies to a run name"):
        db.nearest(a[2], step=1)


def test_novelty_by_selection_run_id_and_state_dict(zoo):
    db, rows, a, b, g = zoo
    by_sql = db.novelty("kind = 'generated'", save=False)
    assert by_sql[0]["nearest_id"] == a[0]
    by_run = db.novelty("b", save=False)
    assert [r["checkpoint_id"] for r in by_run] == b
    by_id = db.novelty(g[0], save=False)
    assert by_id[0]["min_l2"] == pytest.approx(by_sql[0]["min_l2"])
    state = {"w": rows[0][:12].reshape(4, 3) + 0.001, "b": rows[0][12:] + 0.001}
    (row,) = db.novelty(state, reference="run = 'a'")
    assert row["checkpoint_id"] is None and row["nearest_id"] == a[0]
    assert row["nearest_run"] == "a" and row["nearest_step"] == 0 and row["n_reference"] == 6
    assert row["min_l2"] == pytest.approx(0.001 * 4, rel=1e-3)
