"""A SIGKILL during ingest, then a rerun: every checkpoint present, bytes intact, fsck clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import wdb

N_FILES = 24

# Runs in a subprocess: ingest in batches of 4 and SIGKILL itself at a chosen point of the
# second batch's commit (after its bytes are written, or inside its catalog transaction).
KILLER = textwrap.dedent(
    """
    import contextlib, os, signal, sys
    import wdb, wdb.ingest.pipeline
    from wdb.catalog.connect import Catalog
    from wdb.store.arrays import ArrayStore

    db_path, zoo, mode = sys.argv[1:4]
    wdb.ingest.pipeline.BATCH = 4
    state = {"writes": 0}
    orig_write, orig_begin = ArrayStore.write, Catalog.begin

    def write(self, path, start, rows):
        orig_write(self, path, start, rows)
        if path.startswith("spaces/"):
            state["writes"] += 1
            if mode == "slow" and state["writes"] == 1:  # tell the parent: bytes have landed
                open(db_path + ".landed", "w").close()
            if mode == "after_bytes" and state["writes"] == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    @contextlib.contextmanager
    def begin(self):
        with orig_begin(self) as conn:
            yield conn
            if mode == "in_transaction" and state["writes"] == 2:
                os.kill(os.getpid(), signal.SIGKILL)  # statements ran, commit did not

    ArrayStore.write, Catalog.begin = write, begin
    if mode == "slow":
        import time
        import ingest.folder
        orig_load = ingest.folder.read_checkpoint
        def slow(path):  # ~5 s in all: still running well after the first bytes land
            time.sleep(0.2)  # (files are read ahead of the writer, beside its commits)
            return orig_load(path)
        ingest.folder.read_checkpoint = slow
    wdb.open(db_path).ingest(zoo)
    """
)


def make_zoo(root: Path) -> dict[tuple[str, int], dict]:
    want = {}
    for r in range(N_FILES // 4):
        (root / f"run{r}").mkdir(parents=True)
        for s in range(4):
            g = torch.Generator().manual_seed(100 * r + s)
            sd = {"w": torch.randn(16, 32, generator=g), "b": torch.randn(16, generator=g)}
            torch.save(sd, root / f"run{r}" / f"step_{s}.pt")
            want[(f"run{r}", s)] = sd
    return want


def check_complete(db, want: dict) -> None:
    rows = db.checkpoints()
    assert len(rows) == len(want)
    for c in rows:
        got = db.state_dict(c)
        assert all(torch.equal(got[k], v) for k, v in want[(c["run"], c["step"])].items())


@pytest.mark.parametrize(
    "mode,store",
    [
        ("after_bytes", "local"),
        ("in_transaction", "local"),
        ("slow", "local"),
        ("after_bytes", "s3"),
        ("slow", "s3"),
    ],
)
def test_kill_then_rerun(tmp_path: Path, mode: str, store: str, request) -> None:
    """On the PostgreSQL run the ``s3`` cases are a PostgreSQL catalog plus the S3 emulator."""
    zoo, db_path = tmp_path / "zoo", tmp_path / "db"
    if store == "s3":
        request.getfixturevalue("s3_store")
    # The child touches this file right after its first weight bytes are written (to the store
    # under test): polling a local file, unlike listing the S3 emulator, cannot lag the ingest.
    marker = Path(str(db_path) + ".landed")

    want = make_zoo(zoo)
    wdb.open(db_path)  # schema exists before the kill (the migration is not under test here)
    env = {**os.environ, "WDB_PROGRESS": "0"}
    args = [sys.executable, "-c", KILLER, str(db_path), str(zoo), mode]
    if mode == "slow":  # kill from outside, at an arbitrary moment after bytes started to land
        proc = subprocess.Popen(args, env=env)
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
    else:
        rc = subprocess.run(args, env=env).returncode
    assert rc == -signal.SIGKILL
    db = wdb.open(db_path)
    before = db.fsck()
    assert before.ok, before.problems
    n_before = len(db.checkpoints())
    assert n_before < len(want)
    if mode != "slow":
        assert n_before == 4 and sum(before.unreferenced.values()) == 4  # batch 2's bytes
    rep = db.ingest(zoo)
    assert rep.ok() and rep.checkpoints_added == len(want) - n_before
    check_complete(db, want)
    after = db.fsck()
    assert after.ok and after.unreferenced == {}, (after.problems, after.unreferenced)


# A family in a wide space (lowered so that 4,500 parameters make five 1,024-column chunks):
# a run of six steps, a re-save, a frozen-layer and a full fine-tune, ingested in batches of 4,
# SIGKILLed inside a row's chunks, after a delta row's bytes, or inside the commit transaction.
FAMILY_KILLER = textwrap.dedent(
    """
    import contextlib, os, signal, sys
    import wdb, wdb.ingest.pipeline
    from wdb.catalog.connect import Catalog
    from wdb.store import arrays, family

    db_path, zoo, mode, at = sys.argv[1:5]
    at = int(at)
    arrays.WIDE, arrays.WIDE_COLS = 4096, 1024
    wdb.ingest.pipeline.BATCH = 4
    state = {"chunks": 0, "rows": 0}
    orig_set, orig_row, orig_begin = family._set_chunk, family.write_row, Catalog.begin

    def set_chunk(arr, row, c, blob):
        orig_set(arr, row, c, blob)
        state["chunks"] += 1
        if mode == "mid_row" and state["chunks"] == at:
            os.kill(os.getpid(), signal.SIGKILL)

    def write_row(*args, **kw):
        out = orig_row(*args, **kw)
        state["rows"] += 1
        if mode == "after_row" and state["rows"] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    @contextlib.contextmanager
    def begin(self):
        with orig_begin(self) as conn:
            yield conn
            if mode == "in_transaction" and state["rows"] >= at:
                os.kill(os.getpid(), signal.SIGKILL)  # statements ran, commit did not

    family._set_chunk, family.write_row, Catalog.begin = set_chunk, write_row, begin
    wdb.open(db_path).ingest(zoo)
    """
)
BIG, SMALL = 3000, 1500


def make_family(root: Path) -> dict[tuple[str, int], dict]:
    """Files of a family (no parent declared): ``base`` steps 0-5 (noise 1e-3 of scale a
    step), ``copy`` = base step 0, ``frozen`` = base step 5 with ``big`` frozen, ``full`` = base
    step 5 plus noise everywhere."""
    g = torch.Generator().manual_seed(7)
    sd = {
        "big": torch.randn(BIG, generator=g) * 0.02,
        "small": torch.randn(SMALL, generator=g) * 0.02,
    }
    want = {}
    for s in range(6):
        if s:
            sd = {k: v + torch.randn(v.shape, generator=g) * 2e-5 for k, v in sd.items()}
        want[("base", s)] = sd
    want[("copy", 0)] = {k: v.clone() for k, v in want[("base", 0)].items()}
    want[("frozen", 0)] = {"big": sd["big"].clone(), "small": sd["small"] + 6e-5}
    want[("full", 0)] = {k: v + torch.randn(v.shape, generator=g) * 6e-5 for k, v in sd.items()}
    for (run, step), state in want.items():
        (root / run).mkdir(parents=True, exist_ok=True)
        extra = {"note": "a re-save"} if run == "copy" else {}  # other file bytes, same row
        torch.save({**state, **extra}, root / run / f"step_{step}.pt")
    return want


def check_family_rows(db) -> int:
    """No catalog row points at a row no committed checkpoint holds: every ``family_rows`` entry
    belongs to a checkpoint's row, and its parent and every borrowed or residual chunk's source
    row is a committed checkpoint's row. Returns the number of delta rows."""
    from wdb.store.family import parse_tokens

    held = {(r["space_id"], r["row"]) for r in db.sql("SELECT space_id, row FROM checkpoints")}
    deltas = 0
    for f in db.sql("SELECT space_id, row, parent_row, delta_chunks FROM family_rows"):
        space, row = f["space_id"], f["row"]
        assert (space, row) in held, f"family row {row} belongs to no checkpoint"
        if f["parent_row"] is not None:
            deltas += 1
            assert (space, f["parent_row"]) in held, (
                f"row {row}: parent {f['parent_row']} unwritten"
            )
        for c, (_, src) in parse_tokens(f["delta_chunks"], row).items():
            assert (space, src) in held, f"row {row} chunk {c}: source row {src} unwritten"
    return deltas


@pytest.mark.parametrize(
    "mode,at",
    [
        ("mid_row", 8),  # inside batch 1's second row: nothing committed yet
        ("mid_row", 27),  # inside batch 2 (batch 1's four rows committed)
        ("after_row", 7),  # batch 2's delta rows written, not committed
        ("in_transaction", 7),  # batch 2's catalog statements ran, the commit did not
    ],
)
def test_kill_family_ingest_leaves_no_dangling_parent(
    tmp_path: Path, mode: str, at: int, monkeypatch
):
    from wdb.store import arrays

    monkeypatch.setattr(arrays, "WIDE", 4096)
    monkeypatch.setattr(arrays, "WIDE_COLS", 1024)
    zoo, db_path = tmp_path / "family", tmp_path / "db"
    want = make_family(zoo)
    wdb.open(db_path)
    env = {**os.environ, "WDB_PROGRESS": "0"}
    rc = subprocess.run(
        [sys.executable, "-c", FAMILY_KILLER, str(db_path), str(zoo), mode, str(at)], env=env
    ).returncode
    assert rc == -signal.SIGKILL
    db = wdb.open(db_path)
    assert db.fsck().ok
    check_family_rows(db)
    n_before = len(db.checkpoints())
    assert n_before == (0 if at == 8 else 4)
    for c in db.checkpoints():  # what was committed reads back bit-exactly
        got = db.state_dict(c)
        assert all(torch.equal(got[k], v) for k, v in want[(c["run"], c["step"])].items())
    rep = db.ingest(zoo)
    assert rep.ok() and rep.checkpoints_added == len(want) - n_before
    check_complete(db, want)
    assert check_family_rows(db) >= 4  # the family really is stored as deltas
    after = db.fsck()
    assert after.ok, after.problems
