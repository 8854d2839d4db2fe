"""A store written by an earlier wdb keeps opening and reading bit-exactly.

``tests/data/store_f3bd864/store.tar.gz`` was written by wdb at commit f3bd864 (before the
package layout moved and before any format change of this line of work) from the files made by
``make_zoo.py`` beside it, which the archive also holds as ``zoo/``. Every later format change
must keep this test passing (an upgrade in ``wdb init``/open, or a reader for the old format).

``tests/data/store_62a2249/store.tar.gz`` is a family of wide (1,048,576-parameter) checkpoints
written by wdb at commit 62a2249 (before the changes since): a key row, delta rows against the
previous step, a found and a declared parent, a re-save sharing its row (``make_family.py``
beside it says how).

``tests/data/store_c07b2c4/store.tar.gz`` holds bfloat16 checkpoints (a wide family and a small
space) written by wdb at commit c07b2c4, the last version that stored bf16 rows widened to
float32 (``make_bf16.py`` beside it says how).
"""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import wdb
from wdb.cli.main import cli

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "store_f3bd864" / "store.tar.gz"
FAMILY = DATA / "store_62a2249"
BF16 = DATA / "store_c07b2c4"


def _extract(archive: Path, into: Path, monkeypatch) -> Path:
    # the fixture's catalog is the DuckDB file inside it, whatever catalog the suite runs on
    monkeypatch.delenv("WDB_CATALOG_URL", raising=False)
    monkeypatch.delenv("WDB_STORE_URL", raising=False)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


@pytest.fixture
def old_store(tmp_path, monkeypatch):
    return _extract(FIXTURE, tmp_path, monkeypatch)


def _wdb(store: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--db", str(store), *args])
    assert result.exit_code == 0, result.output
    return result.output


def _same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype, k
        assert torch.equal(got[k].view(torch.uint8), v.contiguous().view(torch.uint8)), k


def test_old_store_opens_verifies_and_exports_bit_exactly(old_store):
    store = old_store / "store"
    _wdb(store, "fsck")
    for step in range(3):
        out = old_store / f"a{step}.safetensors"
        _wdb(
            store,
            "export",
            "run_a",
            "--step",
            str(step),
            "--format",
            "safetensors",
            "--out",
            str(out),
        )
        want = torch.load(old_store / f"zoo/run_a/epoch_{step}.pt", weights_only=True)
        _same(load_file(out), want)
    out = old_store / "b.safetensors"
    _wdb(store, "export", "run_b", "--step", "7", "--format", "safetensors", "--out", str(out))
    _same(load_file(out), load_file(old_store / "zoo/run_b/step_7.safetensors"))
    # today's query path (selection keys as numpy columns, the byte-bounded scan) on the old
    # store: the neighbours and distances numpy gives over the source files
    got = json.loads(
        _wdb(store, "query", "nearest", "--run", "run_a", "--step", "0", "--among",
             "run = 'run_a'", "--k", "2", "--json")
    )  # fmt: skip
    flat = [
        torch.cat([t.double().flatten() for _, t in sorted(torch.load(
            old_store / f"zoo/run_a/epoch_{s}.pt", weights_only=True).items())])
        for s in range(3)
    ]  # fmt: skip
    want = sorted((float((flat[s] - flat[0]).norm()), s) for s in (1, 2))
    assert [r["step"] for r in got] == [s for _, s in want]
    assert [r["distance"] for r in got] == pytest.approx([d for d, _ in want], rel=1e-12)


def _made_by(script: Path) -> dict:
    """The files a fixture's script makes (its ``family()``), regenerated in memory."""
    spec = importlib.util.spec_from_file_location(script.stem, script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.family()


def test_old_family_store_reads_its_deltas_bit_exactly(tmp_path, monkeypatch):
    store = _extract(FAMILY / "store.tar.gz", tmp_path, monkeypatch) / "store"
    _wdb(store, "fsck")
    db = wdb.open(store)
    lineage = {
        (r["child_run"], r["reason"], r["parent_run"], r["parent_step"])
        for r in db.sql("SELECT * FROM lineage_info")
    }
    assert lineage == {
        ("run", "previous_step", "run", 0),
        ("run", "previous_step", "run", 1),
        ("resave", "found", "run", 0),
        ("tuned", "found", "run", 2),
        ("frozen", "declared", "run", 2),
    }
    assert db.sql("SELECT count(*) AS n FROM family_rows WHERE parent_row IS NOT NULL")[0]["n"] == 4
    for key, want in _made_by(FAMILY / "make_family.py").items():
        run, step = key.split("/step_")
        out = tmp_path / f"{run}_{step}.safetensors"
        _wdb(store, "export", run, "--step", step, "--format", "safetensors", "--out", str(out))
        got = load_file(out)
        assert set(got) == set(want), key
        for name, arr in want.items():
            assert got[name].numpy().tobytes() == arr.tobytes(), (key, name)


def test_todays_ingest_sketches_rows_as_the_old_version_did(tmp_path, monkeypatch):
    """Sketches (what a found parent is matched by) are stored per row; the old store's, made by
    62a2249, must equal what today's ingest (the hashing pass, then the write) stores for the
    same files, or a new checkpoint would be matched against old rows on a different scale."""
    from safetensors.numpy import save_file

    old = wdb.open(_extract(FAMILY / "store.tar.gz", tmp_path, monkeypatch) / "store")
    zoo = tmp_path / "zoo"
    for key, tensors in _made_by(FAMILY / "make_family.py").items():
        (zoo / key).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(zoo / f"{key}.safetensors"))
    new = wdb.open(tmp_path / "new")
    new.init()
    for run in ("run", "tuned"):
        new.ingest(zoo / run)
    sql = (
        "SELECT r.name AS run, c.step, f.sketch FROM checkpoints c JOIN runs r ON r.id = c.run_id "
        "JOIN family_rows f ON f.space_id = c.space_id AND f.row = c.row WHERE r.name IN ('run', 'tuned')"
    )
    sketches = [
        {(x["run"], x["step"]): bytes(x["sketch"]) for x in db.sql(sql)} for db in (old, new)
    ]
    assert len(sketches[0]) == 4 and sketches[0] == sketches[1]


def test_old_bf16_store_reads_bit_exactly(tmp_path, monkeypatch):
    """Rows stored widened to float32 by c07b2c4 export as the files' bf16 tensors, bit for bit."""
    store = _extract(BF16 / "store.tar.gz", tmp_path, monkeypatch) / "store"
    _wdb(store, "fsck")
    db = wdb.open(store)
    assert {r["dtype"] for r in db.spaces()} == {"float32"}
    for key, want in _made_by(BF16 / "make_bf16.py").items():
        run, step = key.split("/step_")
        out = tmp_path / f"{run}_{step}.safetensors"
        _wdb(store, "export", run, "--step", step, "--format", "safetensors", "--out", str(out))
        _same(load_file(out), want)
        got = db.state_dict(db.checkpoint(run, int(step)))
        _same(got, want)


def test_bf16_checkpoints_ingested_today_join_the_old_spaces(tmp_path, monkeypatch):
    """The same architecture ingested (or logged) today goes into the old store's space (rows
    as that space stores them), its parent found among the old rows; a re-save shares the old
    row."""
    store = _extract(BF16 / "store.tar.gz", tmp_path, monkeypatch) / "store"
    monkeypatch.setenv("WDB_INGEST_BUFFER_MB", "0")  # strict: each file read again to write
    files = _made_by(BF16 / "make_bf16.py")
    zoo = tmp_path / "zoo"
    for run, key in (("again", "run/step_1"), ("copy", "tuned/step_0"), ("small2", "small/step_2")):
        (zoo / run).mkdir(parents=True)
        tensors = files[key]
        if run == "again":  # a fine-tune of run step 1: a parent to find
            tensors = {k: v.clone() for k, v in tensors.items()}
            tensors["small"][::97] += 1 / 1024
        torch.save(tensors, zoo / run / "step_0.pt")
        _wdb(store, "ingest", "--strict", str(zoo / run))
    db = wdb.open(store)
    wdb.log_checkpoint(files["small/step_0"], run="logged", step=0, db=db)
    _wdb(store, "fsck")
    spaces = db.spaces()
    assert [(s["dtype"], s["checkpoints"]) for s in spaces] == [("float32", 5), ("float32", 5)]
    lineage = {
        (r["child_run"], r["reason"], r["parent_run"], r["parent_step"])
        for r in db.sql("SELECT * FROM lineage_info WHERE child_run IN ('again', 'copy')")
    }
    assert lineage == {("again", "found", "run", 1), ("copy", "found", "tuned", 0)}
    shared = db.sql(
        "SELECT count(DISTINCT row) AS n FROM checkpoints c JOIN runs r ON r.id = c.run_id "
        "WHERE r.name IN ('copy', 'tuned')"
    )
    assert shared[0]["n"] == 1
    for run, key in (("copy", "tuned/step_0"), ("small2", "small/step_2")):
        _same(db.state_dict(db.checkpoint(run, 0)), files[key])
    # fsck --fix restores a damaged old float32 row from its source file (read today: bf16)
    (chunk,) = [
        f
        for f in (store / "weights.zarr" / db.space(2).array_path).rglob("*")
        if f.is_file() and f.name == "0"
    ]
    chunk.write_bytes(b"\x02\x04" + bytes(range(200)))
    rep = db.fsck(fix=True)
    # (the old rows' source files are not in the archive: those are marked damaged instead)
    restored = f"checkpoint 9 (run 'small2' step 0, space 'small'): restored from {zoo}/small2"
    assert any(f.startswith(restored) for f in rep.fixed), rep
    _same(db.state_dict(db.checkpoint("small2", 0)), files["small/step_2"])
