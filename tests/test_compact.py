"""``wdb compact``: old-codec arrays become ``wdb.rowdelta`` arrays, bit for bit, and an
interrupted compact is finished (or undone) by the next one without losing a byte."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from zarr.codecs import BloscCodec

import wdb
from wdb.cli.main import cli
from wdb.store import arrays as store_mod
from wdb.store import compact as compact_mod
from wdb.store.codec import RowDeltaCodec
from wdb.store.spaces import Layout


@pytest.fixture
def old_db(tmp_path, monkeypatch):
    """A database whose weights were written with the codec before issue 14."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=3000) * 0.05
    rows = (base + np.cumsum(rng.normal(size=(80, 3000)) * 1e-4, axis=0)).astype(np.float32)
    layout = Layout.from_arrays({"w": np.zeros((30, 100), np.float32)})
    with monkeypatch.context() as m:
        m.setattr(
            store_mod,
            "_compressor",
            lambda dt: BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", typesize=4),
        )
        db = wdb.open(tmp_path / "db")
        db.add_checkpoints(layout, rows, run="r", kind="training")
    return wdb.open(tmp_path / "db"), rows


def _array(db):
    return db.weights_store.array(_path(db))


def _path(db) -> str:
    members = db.weights_store.group.members(max_depth=None)
    (path,) = [n for n, a in members if hasattr(a, "shape") and not n.endswith(compact_mod.NEW)]
    return path


def _stored(db) -> np.ndarray:
    ids = [c["checkpoint_id"] for c in sorted(db.checkpoints(), key=lambda c: c["step"])]
    return db.weights(ids)


def test_compact_reencodes_old_arrays_bit_exactly(old_db):
    db, rows = old_db
    arr = db.weights_store.group["spaces"]
    assert all(isinstance(a.compressors[0], BloscCodec) for _, a in arr.arrays())
    dry = db.compact(dry_run=True)
    assert len(dry.arrays) == 1 and dry.arrays[0]["bytes_after"] is None
    assert isinstance(_array(wdb.open(db.path)).compressors[0], BloscCodec)  # nothing changed

    report = db.compact()
    assert len(report.arrays) == 1
    assert report.bytes_after < 0.8 * report.bytes_before  # consecutive steps: deltas pay
    again = wdb.open(db.path)
    assert isinstance(_array(again).compressors[0], RowDeltaCodec)
    assert _stored(again).tobytes() == rows.tobytes()
    assert again.fsck().ok
    assert again.compact().arrays == []  # nothing left to do


def test_a_crash_before_the_swap_keeps_the_old_array_and_the_rerun_finishes(old_db, monkeypatch):
    db, rows = old_db
    with monkeypatch.context() as m:
        m.setattr(compact_mod, "_swap", lambda store, path: (_ for _ in ()).throw(OSError("kill")))
        with pytest.raises(OSError, match="kill"):
            db.compact()
    db = wdb.open(db.path)
    assert isinstance(_array(db).compressors[0], BloscCodec)
    assert _stored(db).tobytes() == rows.tobytes()
    fsck = db.fsck()
    assert not fsck.ok and any("interrupted `wdb compact`" in p for p in fsck.problems)
    report = db.compact()
    assert [r.split(":")[1].strip() for r in report.recovered] == [
        "finished the swap an interrupted compact began"
    ]
    db = wdb.open(db.path)
    assert isinstance(_array(db).compressors[0], RowDeltaCodec)
    assert _stored(db).tobytes() == rows.tobytes()
    assert db.fsck().ok


def test_a_crash_inside_the_swap_loses_nothing(old_db, monkeypatch):
    """The old array is already deleted when the move fails: the verified copy is the data."""
    from fsspec.implementations.local import LocalFileSystem

    db, rows = old_db
    with monkeypatch.context() as m:
        m.setattr(LocalFileSystem, "mv", lambda *a, **k: (_ for _ in ()).throw(OSError("kill")))
        with pytest.raises(OSError, match="kill"):
            db.compact()
    db = wdb.open(db.path)
    assert db.compact().recovered
    db = wdb.open(db.path)
    assert _stored(db).tobytes() == rows.tobytes()
    assert db.fsck().ok


def test_an_unverified_copy_is_removed_and_redone(old_db):
    db, rows = old_db
    path = _path(db)
    db.weights_store.create(path + compact_mod.NEW, 3000, "float32")  # a copy cut short
    report = db.compact()
    assert any("removed an unverified copy" in r for r in report.recovered)
    assert len(report.arrays) == 1
    db = wdb.open(db.path)
    assert _stored(db).tobytes() == rows.tobytes() and db.fsck().ok


def test_cli_compact_reports_bytes(old_db):
    db, _ = old_db
    result = CliRunner().invoke(cli, ["--db", str(db.path), "compact", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["codec_before"] == "BloscCodec" and row["rows"] == 80
    assert 0 < row["ratio"] < 0.8
    result = CliRunner().invoke(cli, ["--db", str(db.path), "compact"])
    assert result.exit_code == 0 and "already uses the current codec" in result.stderr


def test_compact_on_an_object_store(tmp_path, monkeypatch, s3_store):
    """On a bucket the swap is a copy (no rename): same result, bit for bit."""
    rng = np.random.default_rng(5)
    rows = (np.cumsum(rng.normal(size=(40, 500)) * 1e-4, axis=0) + 0.1).astype(np.float32)
    layout = Layout.from_arrays({"w": np.zeros(500, np.float32)})
    with monkeypatch.context() as m:
        m.setattr(
            store_mod,
            "_compressor",
            lambda dt: BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", typesize=4),
        )
        wdb.open(tmp_path / "db").add_checkpoints(layout, rows, run="r", kind="training")
    db = wdb.open(tmp_path / "db")
    assert db.weights_store.root.startswith("s3://")
    assert len(db.compact().arrays) == 1
    db = wdb.open(tmp_path / "db")
    assert isinstance(_array(db).compressors[0], RowDeltaCodec)
    assert _stored(db).tobytes() == rows.tobytes() and db.fsck().ok


def test_arrays_of_the_first_rowdelta_format_are_compacted(tmp_path, monkeypatch):
    """An array made when the codec wrote version 1 chunks records no ``format`` (read as 1):
    compact rewrites it, so that no version 1 chunk is left, and leaves current ones alone."""
    rng = np.random.default_rng(1)
    rows = rng.normal(size=3000) * 0.05 + np.cumsum(rng.normal(size=(40, 3000)) * 1e-4, 0)
    rows = rows.astype(np.float32)
    layout = Layout.from_arrays({"w": np.zeros((30, 100), np.float32)})
    with monkeypatch.context() as m:
        m.setattr(store_mod, "_compressor", lambda dt: RowDeltaCodec(level=1, format=1))
        db = wdb.open(tmp_path / "db")
        db.add_checkpoints(layout, rows, run="r", kind="training")
    db = wdb.open(tmp_path / "db")
    meta = json.loads((db.path / "weights.zarr" / _path(db) / "zarr.json").read_text())
    (config,) = [c["configuration"] for c in meta["codecs"] if c["name"] == "wdb.rowdelta"]
    config.pop("format")  # as the first format's arrays were written
    (db.path / "weights.zarr" / _path(db) / "zarr.json").write_text(json.dumps(meta))
    db = wdb.open(tmp_path / "db")
    assert _array(db).compressors[0].format == 1
    assert [a["codec_before"] for a in db.compact().arrays] == ["RowDeltaCodec (format 1)"]
    again = wdb.open(tmp_path / "db")
    assert _array(again).compressors[0] == RowDeltaCodec(level=1)
    assert _stored(again).tobytes() == rows.tobytes()
    assert again.compact().arrays == []
