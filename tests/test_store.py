"""The weight store and the Database API: layouts, bit-exact round trips, writes, reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import wdb
from tests.conftest import ON_POSTGRES
from wdb.errors import BadInput, NotFound
from wdb.store.spaces import Layout
from wdb.store.tensors import state_to_numpy


class BNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 3)


def _trained_state(dtype=torch.float32) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = BNNet()
    net.train()
    net.bn(torch.randn(8, 4, 5, 5))  # moves running stats and num_batches_tracked
    net.bn(torch.randn(8, 4, 5, 5))
    sd = net.state_dict()
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_state_dict_round_trip_is_bit_exact(db, dtype):
    sd = _trained_state(dtype)
    arrays, dtypes = state_to_numpy(sd)
    layout = Layout.from_arrays(arrays, dtypes)
    (cid,) = db.add_checkpoints(layout, layout.flatten(arrays)[None], run="r", kind="training")
    back = db.state_dict(cid)
    assert list(back) == list(sd)  # order kept, buffers kept
    for name, t in sd.items():
        assert back[name].dtype == t.dtype, name
        assert back[name].shape == t.shape, name
        assert torch.equal(back[name].view(-1), t.view(-1)), name
    assert int(back["bn.num_batches_tracked"]) == 2


def test_storage_dtype_follows_source():
    f16 = Layout.from_arrays({"w": np.zeros(3, np.float16)})
    mixed = Layout.from_arrays({"w": np.zeros(3, np.float32), "n": np.zeros((), np.int64)})
    f64 = Layout.from_arrays({"w": np.zeros(3, np.float64), "v": np.zeros(2, np.float32)})
    assert (f16.storage_dtype, mixed.storage_dtype, f64.storage_dtype) == (
        "float16",
        "float32",
        "float64",
    )
    assert f16.hash != Layout.from_arrays({"w": np.zeros(3, np.float32)}).hash


def test_integer_buffer_that_float32_cannot_hold_is_refused():
    layout = Layout.from_arrays({"w": np.zeros(2, np.float32), "n": np.zeros((), np.int64)})
    with pytest.raises(BadInput, match="not exactly representable"):
        layout.flatten({"w": np.zeros(2, np.float32), "n": np.array(2**24 + 1, dtype=np.int64)})


def test_weights_read_in_requested_order_and_streamed(db):
    layout = Layout.from_arrays({"w": np.zeros((4, 5), np.float32)})
    rows = np.random.default_rng(0).standard_normal((70, 20)).astype(np.float32)
    ids = db.add_checkpoints(layout, rows, run="r", kind="training")
    order = list(reversed(ids[::3]))
    np.testing.assert_array_equal(db.weights(order), rows[::3][::-1])
    sparse = [ids[0], ids[65]]
    np.testing.assert_array_equal(db.weights(sparse), rows[[0, 65]])
    got = np.concatenate([block for _, block in db.iter_weights(ids, batch=16)])
    np.testing.assert_array_equal(got, rows)


def test_generated_runs_get_their_own_names_and_rows_are_validated(db):
    layout = Layout.from_arrays({"w": np.zeros(6, np.float32)})
    ids = db.add_checkpoints(layout, np.ones((3, 6)), kind="generated")
    runs = {c["run"] for c in db.checkpoints(f"checkpoint_id IN ({','.join(map(str, ids))})")}
    assert len(runs) == 3 and all(r.startswith("gen_") for r in runs)
    with pytest.raises(BadInput, match="shape"):
        db.add_checkpoints(layout, np.ones((2, 5)))
    bad = np.ones((1, 6))
    bad[0, 2] = np.nan
    with pytest.raises(BadInput, match="NaN"):
        db.add_checkpoints(layout, bad)
    with pytest.raises(BadInput, match="kind"):
        db.add_checkpoints(layout, np.ones((1, 6)), kind="weird")


def test_rewriting_a_step_is_idempotent_and_conflicts_are_refused(db):
    layout = Layout.from_arrays({"w": np.zeros(4, np.float32)})
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    first = db.add_checkpoints(layout, rows, run="r", kind="training")
    again = db.add_checkpoints(layout, rows, run="r", kind="training")
    assert first == again
    assert len(db.checkpoints()) == 2
    with pytest.raises(BadInput, match="different content"):
        db.add_checkpoints(layout, rows + 1, run="r", kind="training")


def test_crash_between_bytes_and_catalog_leaves_reusable_rows(db, monkeypatch):
    """Bytes are written first; a failed catalog commit leaves rows that the next write reuses."""
    layout = Layout.from_arrays({"w": np.zeros(4, np.float32)})
    db.add_checkpoints(layout, np.arange(8.0).reshape(2, 4), run="a", kind="training")
    space = db.ensure_space(layout)

    real_begin = db.catalog.begin
    calls = {"n": 0}

    def flaky_begin():
        calls["n"] += 1
        if calls["n"] == 2:  # the second transaction of write_checkpoints is the catalog insert
            raise RuntimeError("simulated crash")
        return real_begin()

    monkeypatch.setattr(db.catalog, "begin", flaky_begin)
    with pytest.raises(RuntimeError):
        db.add_checkpoints(layout, 7.0 + np.arange(12.0).reshape(3, 4), run="b", kind="training")
    monkeypatch.setattr(db.catalog, "begin", real_begin)
    assert db.weights_store.n_rows(space.array_path) == 5  # orphaned bytes exist
    assert len(db.checkpoints()) == 2  # but no catalog row points at them
    ids = db.add_checkpoints(layout, 7.0 + np.arange(12.0).reshape(3, 4), run="b", kind="training")
    assert [c["row"] for c in db.checkpoints(f"checkpoint_id >= {ids[0]}")] == [2, 3, 4]
    assert db.weights_store.n_rows(space.array_path) == 5


def test_lookups_name_the_missing_thing(db):
    with pytest.raises(NotFound, match="run 'nope'"):
        db.run("nope")
    with pytest.raises(NotFound, match="space"):
        db.space("nope")


def test_database_location_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WDB_DB", str(tmp_path / "envdb"))
    db = wdb.open()
    assert db.path == tmp_path / "envdb"
    assert (tmp_path / "envdb").is_dir()
    if not ON_POSTGRES:  # a PostgreSQL catalog lives on its server
        assert (tmp_path / "envdb" / "catalog.duckdb").exists()
