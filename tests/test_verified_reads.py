"""Verified reads: a chunk file overwritten, truncated or deleted never reads back as wrong
bytes or fill values; each read fails in one line naming the checkpoint, run, step and `wdb
fsck`; ``--skip-damaged`` goes on and counts; ``fsck --fix`` restores from source or marks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import wdb
from wdb.cli.main import cli
from wdb.errors import DamagedChunk
from wdb.store.spaces import Layout

STEPS = 20  # two runs of 20 steps: rows 0..39, so chunk c/0/0 holds rows 0-31, c/1/0 rows 32-39


@pytest.fixture
def store(tmp_path: Path):
    """A database ingested from safetensors files (sources kept), and the files' tensors."""
    g = torch.Generator().manual_seed(0)
    states = {}
    for run in ("run_a", "run_b"):
        (tmp_path / "zoo" / run).mkdir(parents=True)
        for s in range(STEPS):
            st = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(3, generator=g)}
            save_file(st, str(tmp_path / "zoo" / run / f"step_{s}.safetensors"))
            states[(run, s)] = st
    db = wdb.open(tmp_path / "db")
    assert db.ingest(tmp_path / "zoo").checkpoints_added == 2 * STEPS
    return db, states


def chunk(db, key: str) -> Path:
    (space,) = db.spaces()
    return db.path / "weights.zarr" / db.space(space["id"]).array_path / key


def damage(path: Path, how: str, other: Path) -> None:
    if how == "garbage":
        path.write_bytes(b"\x02\x04" + bytes(range(200)))
    elif how == "other_chunk":  # valid codec bytes of another chunk: decodes, wrong values
        path.write_bytes(other.read_bytes())
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.unlink()


def cli_run(db, *args):
    return CliRunner().invoke(cli, ["--db", str(db.path), *args])


def damaged_ids(db) -> list[int]:
    return [c["checkpoint_id"] for c in db.checkpoints("run = 'run_b' AND step >= :s", {"s": 12})]


def one_line_error(res, cid: int, run: str, step: int) -> str:
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    line = lines[0]
    assert line.startswith("error: checkpoint ")
    assert f"checkpoint {cid} (run '{run}' step {step})" in line
    assert "wdb fsck" in line
    return line


@pytest.mark.parametrize("how", ["garbage", "other_chunk", "truncated", "deleted"])
def test_damaged_chunk_never_reads_back(store, tmp_path, how) -> None:
    db, states = store
    target = chunk(db, "c/1/0")  # rows 32..39: run_b steps 12..19
    damage(target, how, chunk(db, "c/0/0"))
    ids = damaged_ids(db)
    assert len(ids) == 8
    with pytest.raises(DamagedChunk) as err:
        db.weights(ids[:3])
    msg = str(err.value)
    assert "\n" not in msg and "wdb fsck" in msg
    assert f"checkpoint {ids[0]} (run 'run_b' step 12)" in msg
    assert set(err.value.checkpoint_ids) == set(ids[:3])
    if how == "deleted":
        assert "is missing" in msg
    for reader in (
        lambda: db.state_dict(ids[5]),
        lambda: list(db.iter_weights(ids)),
        lambda: db.weights(ids, cols=slice(0, 2)),
    ):
        with pytest.raises(DamagedChunk):
            reader()
    # the other chunk still reads, bit-exactly
    a = db.checkpoints("run = 'run_a'")
    got = db.weights([c["checkpoint_id"] for c in a])
    layout = db.space(a[0]["space_id"]).layout
    for c, row in zip(a, got, strict=True):
        want = layout.flatten({k: v.numpy() for k, v in states[("run_a", c["step"])].items()})
        assert row.tobytes() == want.tobytes()

    out = tmp_path / "x.safetensors"
    res = cli_run(db, "export", "run_b", "--step", "15", "--out", str(out))
    one_line_error(res, ids[3], "run_b", 15)
    assert not out.exists() and not list(tmp_path.glob(".x.safetensors*"))
    res = cli_run(db, "export", "run_b", "--step", "3", "--out", str(out))  # chunk 0: fine
    assert res.exit_code == 0, res.output
    assert torch.equal(load_file(out)["w"], states[("run_b", 3)]["w"])

    # as the query checkpoint, and as a reference
    res = cli_run(db, "query", "nearest", "--run", "run_b", "--step", "19", "--json")
    one_line_error(res, ids[7], "run_b", 19)
    res = cli_run(db, "query", "nearest", "--run", "run_a", "--step", "0", "--json")
    one_line_error(res, ids[0], "run_b", 12)
    res = cli_run(db, "query", "novelty", "--targets", "run = 'run_b'", "--json")
    one_line_error(res, ids[0], "run_b", 12)


def test_flipped_bits_never_read_back_wrong(store) -> None:
    """One bit flipped at each of 40 places of a chunk: every read of its rows either fails
    with DamagedChunk or returns exactly the stored bytes (a flip may land in the chunk's
    zero padding, or in a stream whose value zstd ignores)."""
    db, _ = store
    path = chunk(db, "c/1/0")
    ids = damaged_ids(db)
    want = db.weights(ids)
    blob = path.read_bytes()
    failed = 0
    for at in np.linspace(0, len(blob) - 1, 40).astype(int):
        bad = bytearray(blob)
        bad[at] ^= 1 << (at % 8)
        path.write_bytes(bytes(bad))
        try:
            got = db.weights(ids)
        except DamagedChunk as exc:
            assert "run 'run_b' step" in str(exc) and "wdb fsck" in str(exc)
            failed += 1
        else:
            assert got.tobytes() == want.tobytes(), f"wrong bytes read after a flip at {at}"
    path.write_bytes(blob)
    assert failed >= 20
    assert db.weights(ids).tobytes() == want.tobytes()


def test_skip_damaged_goes_on_and_counts(store) -> None:
    db, _ = store
    damage(chunk(db, "c/1/0"), "deleted", chunk(db, "c/0/0"))
    ids = set(damaged_ids(db))
    res = cli_run(
        db, "query", "nearest", "--run", "run_a", "--step", "0", "--k", "50", "--skip-damaged"
    )
    assert res.exit_code == 0, res.output
    assert "skipped 8 damaged checkpoints" in res.output
    rows = json.loads(
        cli_run(
            db,
            "query",
            "nearest",
            "--run",
            "run_a",
            "--step",
            "0",
            "--k",
            "50",
            "--skip-damaged",
            "--json",
        ).stdout
    )
    assert len(rows) == 2 * STEPS - 1 - 8 and not ids & {r["checkpoint_id"] for r in rows}
    # the query checkpoint itself cannot be skipped
    res = cli_run(db, "query", "nearest", "--run", "run_b", "--step", "13", "--skip-damaged")
    assert res.exit_code != 0 and "wdb fsck" in res.output
    res = cli_run(
        db,
        "query",
        "novelty",
        "--targets",
        "run = 'run_b'",
        "--skip-damaged",
        "--json",
        "--no-save",
    )
    assert res.exit_code == 0, res.output
    assert "skipped 8 damaged checkpoints" in res.stderr
    rows = json.loads(res.stdout)
    assert len(rows) == STEPS - 8 and not ids & {r["checkpoint_id"] for r in rows}
    assert not ids & {r["nearest_id"] for r in rows}


def test_fsck_fix_restores_from_source(store) -> None:
    db, states = store
    damage(chunk(db, "c/1/0"), "garbage", chunk(db, "c/0/0"))
    rep = db.fsck()
    assert len(rep.problems) == 8
    rep = db.fsck(fix=True)
    assert rep.ok, rep.problems
    assert sum("restored from" in f for f in rep.fixed) == 8
    ids = damaged_ids(db)
    layout = db.space(1).layout
    for cid, row in zip(ids, db.weights(ids), strict=True):
        step = db.checkpoints("checkpoint_id = :i", {"i": cid})[0]["step"]
        want = layout.flatten({k: v.numpy() for k, v in states[("run_b", step)].items()})
        assert row.tobytes() == want.tobytes()
    assert db.fsck().ok


def test_fsck_fix_marks_what_it_cannot_restore(store, tmp_path) -> None:
    db, _ = store
    damage(chunk(db, "c/1/0"), "deleted", chunk(db, "c/0/0"))
    (tmp_path / "zoo" / "run_b" / "step_12.safetensors").unlink()  # source gone
    changed = tmp_path / "zoo" / "run_b" / "step_13.safetensors"
    save_file({"w": torch.zeros(3, 4), "b": torch.zeros(3)}, str(changed))  # source changed
    rep = db.fsck(fix=True)
    assert not rep.ok and len(rep.problems) == 2
    assert sum("restored from" in f for f in rep.fixed) == 6
    assert any("cannot be read" in p for p in rep.problems)
    assert any("no longer hashes" in p for p in rep.problems)
    marked = db.checkpoints("damaged IS NOT NULL")
    assert [(c["run"], c["step"]) for c in marked] == [("run_b", 12), ("run_b", 13)]
    with pytest.raises(DamagedChunk, match="marked damaged"):
        db.weights([marked[0]["checkpoint_id"]])
    db.weights(damaged_ids(db)[2:])  # the restored six read
    res = cli_run(
        db, "query", "nearest", "--run", "run_a", "--step", "0", "--k", "3", "--skip-damaged"
    )
    assert res.exit_code == 0 and "skipped 2 damaged checkpoints" in res.output


def test_column_slices_check_only_the_blocks_they_read(db) -> None:
    """A space two column blocks wide (10,000 > 8,192 columns): a slice inside the intact
    block reads; a slice in the damaged one fails; whole rows fail."""
    layout = Layout.from_arrays({"w": np.zeros(10_000, np.float32)})
    rows = np.random.default_rng(0).normal(size=(3, layout.n_params)).astype(np.float32)
    ids = db.add_checkpoints(layout, rows, run="wide", kind="training")
    path = db.path / "weights.zarr" / db.space(layout.hash[:12]).array_path
    damage(path / "c" / "0" / "1", "other_chunk", path / "c" / "0" / "0")
    np.testing.assert_array_equal(db.weights(ids, cols=slice(10, 20)), rows[:, 10:20])
    np.testing.assert_array_equal(db.weights(ids, cols=np.array([5, 8000])), rows[:, [5, 8000]])
    for cols in (slice(9000, 9010), np.array([5, 9000]), None):
        with pytest.raises(DamagedChunk, match="run 'wide' step 0"):
            db.weights(ids, cols=cols)


def test_slices_hash_2048_column_blocks_and_mix_with_older_widths(db) -> None:
    """New rows of a space wider than a chunk are hashed per 2,048 columns (a slice hashes
    the 2,048-column blocks it falls in, not the 8,192-column chunk width); rows hashed per
    chunk width by an earlier wdb share the array and are still checked."""
    from wdb.store.verify import chunk_hashes

    layout = Layout.from_arrays({"w": np.zeros(20_000, np.float32)})
    rows = np.random.default_rng(2).normal(size=(4, layout.n_params)).astype(np.float32)
    ids = db.add_checkpoints(layout, rows, run="fine", kind="training")
    texts = [r["chunk_hashes"] for r in db.sql("SELECT chunk_hashes FROM checkpoints ORDER BY id")]
    assert all(t.startswith("2048:") and len(t) == 5 + 32 * 10 for t in texts)
    old = chunk_hashes(rows[1], 8192)  # what rows written before this change hold
    db.sql(f"UPDATE checkpoints SET chunk_hashes = '{old}' WHERE id = {ids[1]}", write=True)
    db = wdb.open(db.path)  # no cached hashes
    for cols in (slice(100, 200), slice(4000, 4200), np.array([7, 12_000, 19_999]), None):
        want = rows if cols is None else rows[:, cols]
        np.testing.assert_array_equal(db.weights(ids, cols=cols), want)
    path = db.space(layout.hash[:12]).array_path
    for i in (0, 1):  # one bit of column 5000 (block 2 of 2,048, chunk 0 of 8,192) flipped
        bad = rows[i].copy()
        bad[5000] = np.nextafter(bad[5000], np.float32(1))
        db.weights_store.write(path, i, bad[None])
    db = wdb.open(db.path)
    np.testing.assert_array_equal(db.weights([ids[0]], cols=slice(100, 200)), rows[:1, 100:200])
    with pytest.raises(DamagedChunk, match="run 'fine' step 0"):
        db.weights([ids[0]], cols=slice(4900, 5100))
    with pytest.raises(DamagedChunk, match="run 'fine' step 1"):  # its block is the chunk
        db.weights([ids[1]], cols=slice(100, 200))


def test_rows_from_before_block_hashes_fall_back_to_sha256(db) -> None:
    layout = Layout.from_arrays({"w": np.zeros(6, np.float32)})
    rows = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    ids = db.add_checkpoints(layout, rows, run="old", kind="training")
    db.sql("UPDATE checkpoints SET chunk_hashes = NULL", write=True)
    db = wdb.open(db.path)  # no cached hashes
    np.testing.assert_array_equal(db.weights(ids), rows)
    bad = rows[2].copy()
    bad[0] = np.nextafter(bad[0], np.float32(1))
    db.weights_store.write(db.space(1).array_path, 2, bad[None])
    with pytest.raises(DamagedChunk, match="run 'old' step 2"):
        db.weights([ids[2]])
    rep = db.fsck()
    assert len(rep.problems) == 1 and "recorded block hashes of 3 rows" in rep.notes[0]
    assert db.sql("SELECT count(*) AS n FROM checkpoints WHERE chunk_hashes IS NULL")[0]["n"] == 1


# -- every chunk kind: row, wide row, delta, shared, sharded -----------------------------------
HOWS = ("garbage", "other_chunk", "truncated", "deleted")


@pytest.fixture
def small_wide(monkeypatch):
    """Wide spaces made small (as tests/test_family.py does): 4,096 parameters or more are one
    row per chunk, in 1,024-column chunks."""
    from wdb.store import arrays

    monkeypatch.setattr(arrays, "WIDE", 4096)
    monkeypatch.setattr(arrays, "WIDE_COLS", 1024)


def sweep(db, want: dict[int, bytes]) -> dict[str, int]:
    """Damage each chunk file of the (one) space in each way, one at a time, and read every
    checkpoint of ``want`` (id -> its bytes) alone. A read either returns exactly its bytes or
    fails with DamagedChunk naming a checkpoint whose stored row holds the damaged chunk and
    `wdb fsck`; a read of a row holding it must fail unless the damage left its bytes as they
    were. Returns the counts (reads, failed, silent wrong reads: always 0)."""
    ck = {c["checkpoint_id"]: c for c in db.checkpoints()}
    (space,) = {ck[i]["space_id"] for i in want}
    path = db.space(space).array_path
    root = db.path / "weights.zarr" / path / "c"
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert len(files) >= 2
    last = max(int(p.name) for p in files)
    files = [p for p in files if int(p.name) in (0, last)]  # first and edge column chunk
    owners: dict[int, set[int]] = {}
    for cid, c in ck.items():
        owners.setdefault(c["row"], set()).add(cid)
    rpc = int(db.weights_store.array(path).chunks[0])
    counts = {"reads": 0, "failed": 0, "wrong": 0}
    for target in files:
        blob = target.read_bytes()
        g = int(target.relative_to(root).parts[0])
        hit = set().union(*(owners.get(r, set()) for r in range(g * rpc, (g + 1) * rpc)))
        other = files[0] if target != files[0] else files[1]
        for how in HOWS:
            damage(target, how, other)
            db = wdb.Database(db.path)  # a fresh process's view: nothing cached
            db.weights_store.family.deltas(path, np.array([max(owners)]))
            with db.catalog.reading():  # one catalog connection for the trial's reads
                got_all = {}
                for cid in want:
                    try:
                        got_all[cid] = db.weights([cid])[0].tobytes()
                    except DamagedChunk as exc:
                        got_all[cid] = exc
            for cid, expected in want.items():
                counts["reads"] += 1
                got = got_all[cid]
                if isinstance(got, DamagedChunk):
                    exc = got
                    counts["failed"] += 1
                    msg = str(exc)
                    assert "\n" not in msg and "wdb fsck" in msg, msg
                    assert any(f"checkpoint {h} (" in msg for h in hit), (target, how, msg)
                    assert cid in exc.checkpoint_ids, (cid, exc.checkpoint_ids)
                else:
                    if got != expected:
                        counts["wrong"] += 1
                    elif cid in hit and how in ("garbage", "truncated"):
                        raise AssertionError(f"{target} {how}: checkpoint {cid} read")
            target.write_bytes(blob)
    assert counts["wrong"] == 0, counts
    assert counts["failed"] >= len(files) * 2, counts  # garbage and truncation always fail
    assert counts["reads"] == len(files) * len(HOWS) * len(want)
    for cid, expected in want.items():  # all restored: every row reads again
        assert db.weights([cid])[0].tobytes() == expected
    return counts


def test_sweep_rows_of_a_zoo_space(store) -> None:
    db, _ = store
    ids = [c["checkpoint_id"] for c in db.checkpoints()]
    want = {i: r.tobytes() for i, r in zip(ids, db.weights(ids), strict=True)}
    sweep(db, want)


def test_sweep_wide_rows(db, small_wide) -> None:
    """One row per chunk, 5 column chunks per row; independent rows (no deltas)."""
    layout = Layout.from_arrays({"a": np.zeros(3000, np.float32), "b": np.zeros(1500, np.float32)})
    rows = np.random.default_rng(2).normal(size=(3, layout.n_params)).astype(np.float32)
    ids = db.add_checkpoints(layout, rows, run="wide", kind="training")
    assert db.weights_store.array(db.space(layout.hash[:12]).array_path).chunks == (1, 1024)
    sweep(db, {i: r.tobytes() for i, r in zip(ids, rows, strict=True)})


def _family_rows() -> dict[str, np.ndarray]:
    """A run of 3 steps (each a delta of the one before), a fine-tune of its last step and an
    exact re-save of step 0 (a shared row)."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal(4500) * 0.02).astype(np.float32)
    out = {"run:0": w}
    for s in (1, 2):
        w = (w + rng.standard_normal(w.size).astype(np.float32) * 2e-5).astype(np.float32)
        out[f"run:{s}"] = w
    out["tune:0"] = (w + rng.standard_normal(w.size).astype(np.float32) * 6e-5).astype(np.float32)
    out["copy:0"] = out["run:0"].copy()
    return out


def test_sweep_delta_and_shared_rows(db, small_wide) -> None:
    """A damaged parent chunk fails the reads of its children (naming the parent), a damaged
    delta chunk fails the delta row's read; a damaged shared row fails both checkpoints on it.
    Never wrong bytes."""
    from wdb.store.write import NewCheckpoint

    layout = Layout.from_arrays({"a": np.zeros(3000, np.float32), "b": np.zeros(1500, np.float32)})
    space = db.ensure_space(layout)
    rows, ids = _family_rows(), {}
    for key, row in rows.items():
        run, step = key.split(":")
        res = db.write_checkpoints(space, [NewCheckpoint(run=run, step=int(step), row=row)])
        ids[key] = (res.added + res.existing)[0]
    ck = {c["checkpoint_id"]: c for c in db.checkpoints()}
    assert ck[ids["copy:0"]]["row"] == ck[ids["run:0"]]["row"]  # shared
    deltas = db.sql("SELECT row FROM family_rows WHERE parent_row IS NOT NULL")
    assert len(deltas) >= 3  # run:1, run:2 and tune:0 are stored as deltas
    counts = sweep(db, {ids[k]: rows[k].tobytes() for k in rows})
    assert counts["wrong"] == 0

    # the parent's first chunk damaged: a child two links down fails, naming a damaged one
    root = db.path / "weights.zarr" / space.array_path / "c"
    row0 = ck[ids["run:0"]]["row"]
    damage(root / str(row0) / "0", "garbage", root / str(row0) / "1")
    fresh = wdb.Database(db.path)
    for key in ("run:2", "copy:0", "run:0"):
        with pytest.raises(DamagedChunk, match="wdb fsck") as err:
            fresh.weights([ids[key]])
        assert ids[key] in err.value.checkpoint_ids
        assert f"checkpoint {ids['run:0']} (" in str(err.value) or (
            f"checkpoint {ids['copy:0']} (" in str(err.value)
        )
    res = cli_run(fresh, "export", "run", "--step", "2", "--out", str(db.path / "x.safetensors"))
    assert res.exit_code != 0 and "wdb fsck" in res.output
    assert not (db.path / "x.safetensors").exists()


def test_sweep_sharded_ingest(tmp_path, small_wide) -> None:
    """Checkpoints ingested from a safetensors index and its shards (streamed into a wide
    space, tensor by tensor)."""
    g = torch.Generator().manual_seed(4)
    want = {}
    for run in ("shard_a", "shard_b"):
        src = tmp_path / "zoo" / run
        src.mkdir(parents=True)
        parts = {
            "model-00001-of-00002.safetensors": {"emb": torch.randn(40, 64, generator=g)},
            "model-00002-of-00002.safetensors": {
                "head.w": torch.randn(30, 64, generator=g),
                "head.b": torch.randn(30, generator=g),
            },
        }
        weight_map = {}
        for name, tensors in parts.items():
            save_file(tensors, str(src / name))
            weight_map.update(dict.fromkeys(tensors, name))
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (src / "model.safetensors.index.json").write_text(json.dumps(index))
        want[run] = {k: v for p in parts.values() for k, v in p.items()}
    db = wdb.open(tmp_path / "db")
    assert db.ingest(tmp_path / "zoo").checkpoints_added == 2
    cks = db.checkpoints()
    space = db.space(cks[0]["space_id"])
    assert space.n_params == 40 * 64 + 30 * 64 + 30 >= 4096
    assert db.weights_store.array(space.array_path).chunks == (1, 1024)
    expected = {}
    for c in cks:
        state = db.state_dict(c["checkpoint_id"])
        assert set(state) == set(want[c["run"]])
        for k, v in want[c["run"]].items():
            assert torch.equal(state[k], v), k
        expected[c["checkpoint_id"]] = db.weights([c["checkpoint_id"]])[0].tobytes()
    sweep(db, expected)
