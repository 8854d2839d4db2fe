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
        url = request.getfixturevalue("s3_store")
        server = request.getfixturevalue("s3_server")

        def landed() -> bool:
            return any("/c/" in k for k in server.keys(url))
    else:

        def landed() -> bool:
            return any((db_path / "weights.zarr").rglob("c/*"))

    want = make_zoo(zoo)
    wdb.open(db_path)  # schema exists before the kill (the migration is not under test here)
    env = {**os.environ, "WDB_PROGRESS": "0"}
    args = [sys.executable, "-c", KILLER, str(db_path), str(zoo), mode]
    if mode == "slow":  # kill from outside, at an arbitrary moment after bytes started to land
        proc = subprocess.Popen(args, env=env)
        deadline = time.monotonic() + 60
        while not landed() and time.monotonic() < deadline:
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
