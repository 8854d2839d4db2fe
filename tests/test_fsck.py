"""fsck: hash mismatches, missing bytes, orphans and duplicates are problems; unreferenced tail
rows are reclaimable and ``fix`` truncates them without touching committed checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import wdb
from tests.conftest import ON_POSTGRES
from wdb.store.spaces import Layout


def populate(path: Path) -> Path:
    db = wdb.open(path)
    layout = Layout.from_arrays({"w": np.zeros((4, 5), np.float32), "b": np.zeros(4, np.float32)})
    rows = np.random.default_rng(0).normal(size=(6, layout.n_params)).astype(np.float32)
    db.add_checkpoints(layout, rows, run="r", kind="training", metrics=[{"accuracy": 0.5}] * 6)
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path | None:
    """One populated database per module (migrations take most of a second), copied per test;
    on PostgreSQL the catalog is not in the folder, so each test builds its own."""
    if ON_POSTGRES:
        return None
    return populate(tmp_path_factory.mktemp("fsck") / "db")


@pytest.fixture
def db(template: Path | None, tmp_path: Path):
    if template is None:
        return wdb.open(populate(tmp_path / "db"))
    shutil.copytree(template, tmp_path / "db")
    return wdb.open(tmp_path / "db")


def test_clean_database(db) -> None:
    rep = db.fsck()
    assert rep.ok and rep.checked == 6 and rep.unreferenced == {} and rep.fixed == []


def test_corrupted_row_is_a_hash_mismatch(db) -> None:
    space = db.space(1)
    bad = db.weights([3])[0].copy()
    bad[7] = np.nextafter(bad[7], np.float32(np.inf))  # one ulp
    db.weights_store.write(space.array_path, db.checkpoints()[2]["row"], bad[None])
    rep = db.fsck()
    assert not rep.ok and len(rep.problems) == 1
    assert (
        "checkpoint 3 (run 'r' step 2" in rep.problems[0] and "sha256 mismatch" in rep.problems[0]
    )
    fixed = db.fsck(fix=True)
    assert not fixed.ok and len(db.checkpoints()) == 6  # never deleted


def test_corrupted_chunk_file_is_reported(db) -> None:
    from wdb.store.codec import RowDeltaCodec

    (space,) = db.spaces()
    arr = db.weights_store.array(db.space(space["id"]).array_path)
    assert isinstance(arr.compressors[0], RowDeltaCodec)  # fsck reads through the store's codec
    chunks = [p for p in (db.path / "weights.zarr").rglob("c/*/*") if p.is_file()]
    assert chunks
    blob = bytearray(chunks[0].read_bytes())
    blob[-1] ^= 0xFF  # one flipped byte in the last plane
    chunks[0].write_bytes(bytes(blob))
    assert not db.fsck().ok
    chunks[0].write_bytes(b"garbage")
    rep = db.fsck()
    assert not rep.ok and len(rep.problems) == 6
    assert all("unreadable" in p for p in rep.problems)


def test_row_past_array_end_is_missing_bytes(db) -> None:
    db.weights_store.truncate(db.space(1).array_path, 4)
    rep = db.fsck()
    assert not rep.ok and len(rep.problems) == 2
    assert all("past the array end (4 rows): missing bytes" in p for p in rep.problems)
    assert "step 4" in rep.problems[0] and "step 5" in rep.problems[1]


def test_unreferenced_tail_is_reclaimed_by_fix(db) -> None:
    space = db.space(1)
    db.weights_store.write(space.array_path, 6, np.ones((3, space.n_params), np.float32))
    rep = db.fsck()
    assert rep.ok and rep.unreferenced == {space.name: 3}
    rep = db.fsck(fix=True)
    assert rep.ok and rep.fixed and db.weights_store.n_rows(space.array_path) == 6
    assert db.fsck().unreferenced == {}
    assert len(db.checkpoints()) == 6


def test_orphans_and_unknown_references(db) -> None:
    db.sql("DELETE FROM checkpoints WHERE id = 6", write=True)
    db.sql(
        "INSERT INTO checkpoints (id, run_id, space_id, step, row, sha256) "
        "VALUES (100, 999, 1, 0, 5, 'x'), (101, 1, 77, 0, 0, 'y')",
        write=True,
    )
    rep = db.fsck()
    text = "\n".join(rep.problems)
    assert "checkpoint 100: references unknown run id 999" in text
    assert "checkpoint 101: references unknown space id 77" in text
    assert "metrics: 1 rows reference checkpoints that do not exist" in text
    assert "sha256 mismatch" in text  # checkpoint 100 claims row 5 with a wrong hash
    rep = db.fsck(fix=True)
    assert any("metrics: deleted 1" in f for f in rep.fixed)
    assert db.sql("SELECT count(*) AS n FROM checkpoints")[0]["n"] == 7
