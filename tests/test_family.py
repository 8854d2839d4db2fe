"""Families of checkpoints: shared rows, deltas against a parent, lineage (wdb.store.family).

Wide spaces are made small: the one-row-per-chunk threshold and chunk width are lowered so a
4,500-parameter space has five 1,024-column chunks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wdb.store import arrays, family
from wdb.store.spaces import Layout
from wdb.store.write import NewCheckpoint

BIG, SMALL = 3000, 1500


@pytest.fixture(autouse=True)
def _small_wide(monkeypatch):
    monkeypatch.setattr(arrays, "WIDE", 4096)
    monkeypatch.setattr(arrays, "WIDE_COLS", 1024)


def _layout() -> Layout:
    return Layout.from_arrays(
        {"big": np.zeros(BIG, np.float32), "small": np.zeros(SMALL, np.float32)}
    )


def _family(seed: int = 0) -> dict[str, np.ndarray]:
    """A run of 4 steps, a re-save of step 0, a frozen-big fine-tune and a full fine-tune of
    step 3 (noise relative to the weights' scale 0.02)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(BIG + SMALL) * 0.02).astype(np.float32)
    out = {"run:0": w}
    for s in range(1, 4):
        w = (w + rng.standard_normal(w.size).astype(np.float32) * 2e-5).astype(np.float32)
        out[f"run:{s}"] = w
    frozen = w.copy()
    frozen[BIG:] += rng.standard_normal(SMALL).astype(np.float32) * 6e-5
    out["frozen:0"] = frozen
    out["full:0"] = (w + rng.standard_normal(w.size).astype(np.float32) * 6e-5).astype(np.float32)
    out["copy:0"] = out["run:0"].copy()
    return out


def _ingest(db, rows: dict[str, np.ndarray], base: dict[str, str] | None = None) -> dict[str, int]:
    space = db.ensure_space(_layout())
    ids = {}
    for key, row in rows.items():
        run, step = key.split(":")
        it = NewCheckpoint(run=run, step=int(step), row=row, base=(base or {}).get(run))
        res = db.write_checkpoints(space, [it])
        ids[key] = (res.added + res.existing)[0]
    return ids


def _lineage(db) -> dict[int, dict]:
    return {r["child_id"]: r for r in db.sql("SELECT * FROM lineage_info")}


def test_exact_resave_costs_no_bytes_and_reads_back(db):
    rows = _family()
    ids = _ingest(db, rows)
    space = db.ensure_space(_layout())
    ck = {c["checkpoint_id"]: c for c in db.checkpoints()}
    assert ck[ids["copy:0"]]["row"] == ck[ids["run:0"]]["row"]
    assert db.weights_store.n_rows(space.array_path) == len(rows) - 1
    for key, cid in ids.items():
        assert db.weights([cid])[0].tobytes() == rows[key].tobytes(), key
    lin = _lineage(db)[ids["copy:0"]]
    assert (lin["parent_id"], lin["reason"], lin["distance"]) == (ids["run:0"], "found", 0.0)
    assert db.fsck().ok


def test_small_space_shares_equal_rows(db):
    layout = Layout.from_arrays({"w": np.zeros(6, np.float32)})
    rows = np.arange(12, dtype=np.float32).reshape(2, 6)
    db.add_checkpoints(layout, rows, run="a", kind="training")
    ids = db.add_checkpoints(layout, rows, run="b", kind="training")
    space = db.ensure_space(layout)
    assert db.weights_store.n_rows(space.array_path) == 2
    np.testing.assert_array_equal(db.weights(ids), rows)
    report = db.fsck(fix=True)
    assert report.ok and not report.unreferenced


def test_deltas_parents_and_lineage(db):
    rows = _family()
    ids = _ingest(db, rows)
    lin = _lineage(db)
    for s in (1, 2, 3):
        assert lin[ids[f"run:{s}"]]["parent_id"] == ids[f"run:{s - 1}"]
        assert lin[ids[f"run:{s}"]]["reason"] == "previous_step"
    for key in ("frozen:0", "full:0"):  # no parent declared: found by sketch
        assert lin[ids[key]]["parent_id"] == ids["run:3"], key
        assert lin[ids[key]]["reason"] == "found" and lin[ids[key]]["bytes_saved"] > 0
    assert ids["run:0"] not in lin
    fam = db.sql("SELECT * FROM family_rows WHERE parent_row IS NOT NULL")
    assert fam and max(f["depth"] for f in fam) <= family.MAX_DEPTH
    # the frozen tensor's chunks are XOR zeros: the whole row far below its own size
    space = db.ensure_space(_layout())
    stored = db.weights_store.array(space.array_path).nbytes_stored()
    raw = sum(r.nbytes for r in rows.values())
    assert stored < 0.8 * raw
    for key, cid in ids.items():
        assert db.weights([cid])[0].tobytes() == rows[key].tobytes(), key
    assert db.fsck().ok


def test_declared_base_wins_over_the_nearest(db):
    rows = _family()
    ids = _ingest(db, {k: rows[k] for k in ("run:0", "run:1", "run:2", "run:3")})
    more = _ingest(db, {"tuned:0": rows["full:0"]}, base={"tuned": "run:1"})
    lin = _lineage(db)[more["tuned:0"]]
    assert (lin["parent_id"], lin["reason"]) == (ids["run:1"], "declared")
    assert db.weights([more["tuned:0"]])[0].tobytes() == rows["full:0"].tobytes()


def test_every_delta_is_one_link_from_a_key_row(db):
    """A run of 7 steps: each step's residual is against step 0 (the key row), never against
    the step before, so a read decodes two rows at most; lineage still says previous_step."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal(BIG + SMALL) * 0.02).astype(np.float32)
    rows = {}
    for s in range(7):
        rows[f"long:{s}"] = w
        w = (w + rng.standard_normal(w.size).astype(np.float32) * 2e-5).astype(np.float32)
    ids = _ingest(db, rows)
    fam = db.sql("SELECT row, parent_row, depth FROM family_rows ORDER BY row")
    assert [f["depth"] for f in fam] == [0, 1, 1, 1, 1, 1, 1]
    assert {f["parent_row"] for f in fam[1:]} == {fam[0]["row"]}
    lin = _lineage(db)
    assert len(lin) == 6 and all(r["reason"] == "previous_step" for r in lin.values())
    for key, cid in ids.items():
        assert db.weights([cid])[0].tobytes() == rows[key].tobytes()


def test_equal_chunks_of_a_delta_parent_are_borrowed_not_written(db):
    """A frozen-big fine-tune of a delta row: its big chunks equal the parent's, so they are
    not written; they point at the parent's residuals (``c@R``, against the same key row)."""
    rows = _family()
    ids = _ingest(db, {k: rows[k] for k in ("run:0", "run:1", "run:2", "run:3", "frozen:0")})
    space = db.ensure_space(_layout())
    ck = {c["checkpoint_id"]: c["row"] for c in db.checkpoints()}
    fam = {f["row"]: f for f in db.sql("SELECT * FROM family_rows")}
    frozen = fam[ck[ids["frozen:0"]]]
    toks = family.parse_tokens(frozen["delta_chunks"], frozen["row"])
    big_chunks = range(BIG // 1024)  # chunks wholly inside the frozen tensor
    assert all(toks[c] == ("x", ck[ids["run:3"]]) for c in big_chunks)
    assert frozen["parent_row"] == ck[ids["run:0"]] and frozen["depth"] == 1
    import fsspec

    arr = db.weights_store.array(space.array_path)
    fs, root = fsspec.core.url_to_fs(db.weights_store.root)
    assert not fs.exists(f"{root}/{family._chunk_key(arr, frozen['row'], 0)}")
    fresh = type(db)(db.path)
    for key, cid in ids.items():
        assert fresh.weights([cid])[0].tobytes() == rows[key].tobytes(), key
    # removing the parent keeps the chunks the child borrows
    db.rm(f"checkpoint_id = {ids['run:3']}", what="checkpoints", yes=True)
    assert db.fsck(fix=True).ok
    assert type(db)(db.path).weights([ids["frozen:0"]])[0].tobytes() == rows["frozen:0"].tobytes()


def _first_delta_chunk(db, whose: str) -> tuple:
    """Ingest steps 0 and 1 of the family (1 a delta on 0); return (rows, ids, fs, key) with
    ``key`` the stored chunk, of the delta row (``whose='row'``) or of its parent
    (``'parent_row'``), at the delta's first residual chunk."""
    import fsspec

    rows = _family()
    ids = _ingest(db, {k: rows[k] for k in ("run:0", "run:1")})
    space = db.ensure_space(_layout())
    arr = db.weights_store.array(space.array_path)
    fam = db.sql("SELECT * FROM family_rows WHERE parent_row IS NOT NULL")[0]
    c = int(fam["delta_chunks"].split(",")[0])
    fs, root = fsspec.core.url_to_fs(db.weights_store.root)
    return rows, ids, fs, f"{root}/{family._chunk_key(arr, int(fam[whose]), c)}"


def test_missing_parent_is_an_error_naming_both(db):
    rows, ids, fs, key = _first_delta_chunk(db, "parent_row")
    fs.rm(key)
    fresh = type(db)(db.path)  # a new reader: nothing cached
    with pytest.raises(family.DamagedFamily) as err:
        fresh.weights([ids["run:1"]])
    msg = str(err.value)
    assert f"checkpoint {ids['run:1']} (run 'run' step 1)" in msg
    assert f"checkpoint {ids['run:0']} (run 'run' step 0)" in msg
    assert not fresh.fsck().ok


def test_crash_before_the_catalog_leaves_no_family_rows(db, monkeypatch):
    rows = _family()
    _ingest(db, {"run:0": rows["run:0"]})
    from wdb.store import write

    def crash(*_a, **_k):  # inside the catalog transaction, after the bytes: it rolls back
        raise RuntimeError("simulated crash")

    with monkeypatch.context() as m:
        m.setattr(write, "_record_family", crash)
        with pytest.raises(RuntimeError):
            _ingest(db, {"run:1": rows["run:1"]})
    space = db.ensure_space(_layout())
    assert db.weights_store.n_rows(space.array_path) == 2  # the delta row's bytes exist
    assert len(db.sql("SELECT * FROM family_rows")) == 1
    assert len(db.sql("SELECT * FROM lineage")) == 0
    report = db.fsck(fix=True)
    assert report.ok and report.fixed  # the unreferenced delta row is reclaimed
    ids = _ingest(db, {"run:1": rows["run:1"]})
    assert db.weights([ids["run:1"]])[0].tobytes() == rows["run:1"].tobytes()


def test_query_lineage_cli(db, tmp_path):
    rows = _family()
    ids = _ingest(db, rows)
    from click.testing import CliRunner

    from wdb.cli.main import cli

    out = CliRunner().invoke(
        cli, ["--db", str(db.path), "query", "lineage", "--run", "full", "--json"]
    )
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    edges = [(r["child_id"], r["parent_id"], r["reason"], r["generation"]) for r in got]
    chain = [(ids[f"run:{s}"], ids[f"run:{s - 1}"], "previous_step", s) for s in (1, 2, 3)]
    assert edges == [*chain, (ids["full:0"], ids["run:3"], "found", 4)]


def test_rm_keeps_a_delta_childs_parent_and_reclaims_the_rest(db):
    """Removing a parent's checkpoint never frees bytes its delta children decode through;
    removing the children too frees them, and the store stays consistent (fsck clean)."""
    rows = _family()
    ids = _ingest(db, rows)
    before = {k: db.weights([i])[0].copy() for k, i in ids.items()}
    db.rm("run = 'run'", what="checkpoints", yes=True)  # run:1..3 are deltas on run:0
    db.rm("checkpoint_id = :i".replace(":i", str(ids["run:0"])), what="checkpoints", yes=True)
    for key in ("frozen:0", "full:0", "copy:0"):
        got = db.weights([ids[key]])[0]
        assert got.tobytes() == before[key].tobytes(), key
    assert db.fsck().ok
    db.rm("kind = 'training'", what="checkpoints", yes=True)
    assert db.checkpoints() == []
    assert db.sql("SELECT count(*) AS n FROM family_rows")[0]["n"] == 0
    assert db.fsck().ok


def test_a_folder_of_torch_files_goes_in_streamed_and_reads_back_exactly(db, tmp_path):
    """``db.ingest(folder)``: files are loaded ahead of the writer by a reading thread, a wide
    row goes to the store as a stream of its tensors (no flattened copy), hashed once, and
    re-checked by xxh3 as it is written; the family's parents are found and every row reads
    back bit-exactly, through the chunk-by-chunk delta reader."""
    import torch

    from wdb.ingest import pool
    from wdb.store.write import RowStream

    rows = _family()
    order = {"run": "a_run", "copy": "b_copy", "frozen": "c_frozen", "full": "d_full"}
    rows = {f"{order[k.split(':')[0]]}:{k.split(':')[1]}": v for k, v in rows.items()}
    for key, row in rows.items():  # one folder per run, read in name order: parents first
        run, step = key.split(":")
        (tmp_path / "src" / run).mkdir(parents=True, exist_ok=True)
        state = {"big": torch.from_numpy(row[:BIG].copy()), "small": torch.from_numpy(row[BIG:])}
        state["saved_by"] = run  # the copy: the same tensors, not the same bytes
        torch.save(state, tmp_path / "src" / run / f"step_{step}.pt")
    loaded = pool.read_ahead((f, None) for f in _found(tmp_path / "src"))
    got = next(iter(loaded))[1]
    assert got[0] == "ok" and isinstance(got[2], RowStream) and got[2].xxh3
    report = db.ingest(tmp_path / "src", zoo="fam")
    src = {k: str(tmp_path / "src" / k.split(":")[0] / f"step_{k.split(':')[1]}.pt") for k in rows}
    assert report.ok() and report.checkpoints_added == len(rows) and not report.duplicates
    by_source = {c["source"]: c for c in db.checkpoints()}
    assert by_source[src["b_copy:0"]]["row"] == by_source[src["a_run:0"]]["row"]  # shared
    ids = {k: by_source[src[k]]["checkpoint_id"] for k in rows}
    lin = _lineage(db)
    for child, parent in [
        ("d_full:0", "a_run:3"),
        ("c_frozen:0", "a_run:3"),
        ("a_run:2", "a_run:1"),
    ]:
        assert lin[ids[child]]["parent_id"] == ids[parent], child
    fresh = type(db)(db.path)
    for key, cid in ids.items():
        assert fresh.weights([cid])[0].tobytes() == rows[key].tobytes(), key
    assert db.fsck().ok


def _found(folder):
    from wdb.ingest.pipeline import _Ingest
    from wdb.ingest.start import begin

    return begin(_Ingest, None, folder, "fam", "training", None, False, None, False)[1]


def test_a_damaged_chunk_of_a_delta_row_itself_is_named_as_that_chunk(db):
    """A delta row's own residual that does not decode is that checkpoint's damaged chunk
    (``DamagedChunk``), not its parent's fault; its parent still reads."""
    from wdb.errors import DamagedChunk

    rows, ids, fs, path = _first_delta_chunk(db, "row")
    blob = fs.cat_file(path)
    fs.pipe_file(path, blob[:10] + bytes(len(blob) - 10))
    fresh = type(db)(db.path)
    with pytest.raises(DamagedChunk) as err:
        fresh.weights([ids["run:1"]])
    assert f"checkpoint {ids['run:1']}" in str(err.value)
    assert not isinstance(err.value, family.DamagedFamily)
    assert fresh.weights([ids["run:0"]])[0].tobytes() == rows["run:0"].tobytes()


def test_a_scan_keeps_the_key_rows_chunks_and_reads_the_same(db, monkeypatch):
    """During a scan (``Plan.keep``) a delta row's residual is decoded alone and XORed with
    its key row's chunk decoded once and kept: the same bits and distances as the oracle, and
    the key's stored chunks are decoded once for all its delta rows, not once per row."""
    from wdb.query.scan import knn, plan, rows_of
    from wdb.store import widechunk

    rows = _family()
    ids = _ingest(db, rows)
    fresh = type(db)(db.path)  # nothing cached
    ck = {c["checkpoint_id"]: c for c in fresh.checkpoints()}
    space = fresh.ensure_space(_layout())
    order = sorted({ck[i]["row"] for i in ids.values()})
    calls = []
    real = widechunk.decode_row_chunk

    def counting(blob, out, key=None, onto=False):
        calls.append(key is not None)
        return real(blob, out, key, onto)

    monkeypatch.setattr(widechunk, "decode_row_chunk", counting)
    refs = rows_of(fresh, space.array_path, np.array(order))
    p = plan(len(order), 1, BIG + SMALL, 4, 3, 1 << 20)
    assert p.keep == (1 << 20) // 8 and p.whole_rows
    q = rows["full:0"][None] + np.float32(1e-3)
    got_ids, got_d, _ = knn(refs, np.array(order), q, np.array([-1]), 3, 1 << 20, p)
    by_row = {ck[i]["row"]: rows[k] for k, i in ids.items()}
    d = {r: float(np.linalg.norm(by_row[r].astype(np.float64) - q[0])) for r in order}
    want = sorted(order, key=lambda r: (d[r], r))[:3]
    assert got_ids[0].tolist() == want
    np.testing.assert_allclose(got_d[0], [d[r] for r in want], rtol=1e-12)
    # 5 delta rows x 5 chunks, every residual decoded alone; row 0's 5 chunks decoded once for
    # the kept copy (row 0 read as a reference itself is a plain row: Zarr's read)
    assert calls.count(True) == 0 and calls.count(False) == 5 * 5 + 5
    calls.clear()  # outside a scan nothing is kept: each delta chunk decodes its key with it
    assert fresh.weights([ids["run:1"]])[0].tobytes() == rows["run:1"].tobytes()
    assert calls == [True] * 5


def test_a_column_block_of_a_delta_row_decodes_only_its_chunks(db, monkeypatch):
    """A scan's column block of delta rows decodes the chunks the columns fall in, not the
    whole row once per block; the values equal the whole rows' and are verified."""
    from wdb.store import widechunk

    rows = _family()
    _ingest(db, rows)
    space = db.ensure_space(_layout())
    full = type(db)(db.path).weights_store.read(space.array_path, np.arange(6))
    calls = []
    real = widechunk.decode_row_chunk

    def counting(blob, out, key=None):
        calls.append(1)
        return real(blob, out, key)

    monkeypatch.setattr(widechunk, "decode_row_chunk", counting)
    for cs, chunks in [(slice(0, 1024), 1), (slice(1000, 3000), 3), (slice(4400, 4500), 1)]:
        calls.clear()
        got = type(db)(db.path).weights_store.read(space.array_path, np.arange(6), cs)
        assert got.tobytes() == full[:, cs].tobytes(), cs
        assert len(calls) == 5 * chunks  # 5 delta rows: a call per chunk (its key's with it)
