"""Many writers on one database (DuckDB, and PostgreSQL on the PostgreSQL run): two ingests and a generate at once all land, each
checkpoint exactly once, and ``wdb fsck`` is clean; a writer that waits too long for another's
lock says whose lock it waited for and fails in one line, having written nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import wdb

WDB = Path(sys.executable).with_name("wdb")


def make_zoo(root: Path, runs: int, steps: int, seed: int) -> int:
    g = torch.Generator().manual_seed(seed)
    for r in range(runs):
        (root / f"{root.name}_r{r}").mkdir(parents=True)
        for s in range(steps):
            sd = {"w": torch.randn(8, 6, generator=g), "b": torch.randn(8, generator=g)}
            torch.save(sd, root / f"{root.name}_r{r}" / f"step_{s}.pt")
    return runs * steps


def start(db: Path, *args: str, wait: str = "60") -> subprocess.Popen:
    env = {**os.environ, "WDB_INGEST_BATCH": "8"}  # many small batches: the writers interleave
    return subprocess.Popen(
        [str(WDB), "--db", str(db), "--wait", wait, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_ingests_and_a_generate_at_once(tmp_path):
    db = tmp_path / "db"
    n_base = make_zoo(tmp_path / "base", 4, 2, seed=0)
    assert (
        subprocess.run([str(WDB), "--db", str(db), "ingest", str(tmp_path / "base")]).returncode
        == 0
    )
    n_a = make_zoo(tmp_path / "zooa", 6, 8, seed=1)
    n_b = make_zoo(tmp_path / "zoob", 6, 8, seed=2)
    procs = [
        start(db, "ingest", str(tmp_path / "zooa")),
        start(db, "ingest", str(tmp_path / "zoob")),
        start(
            db, "generate", "noise", "--train", "zoo = 'base'", "--n", "24", "--set", "sigma=0.1"
        ),
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    d = wdb.open(db)
    counts = {
        (r["zoo"], r["kind"]): r["n"]
        for r in d.sql("SELECT zoo, kind, count(*) AS n FROM checkpoint_info GROUP BY zoo, kind")
    }
    assert counts[("zooa", "training")] == n_a and counts[("zoob", "training")] == n_b
    assert counts[("base", "training")] == n_base
    assert sum(n for (z, k), n in counts.items() if k != "training") == 24
    (dup,) = d.sql(
        "SELECT count(*) AS n FROM (SELECT run_id, step, space_id FROM checkpoints "
        "GROUP BY run_id, step, space_id HAVING count(*) > 1) AS d"
    )
    (rows,) = d.sql("SELECT count(DISTINCT row) AS n, count(*) AS m FROM checkpoints")
    assert dup["n"] == 0 and rows["n"] == rows["m"]  # no two checkpoints share stored bytes
    fsck = subprocess.run([str(WDB), "--db", str(db), "fsck"], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr


def test_a_writer_waits_a_bounded_time_and_names_the_holder(tmp_path):
    db_path = tmp_path / "db"
    make_zoo(tmp_path / "zoo", 2, 2, seed=3)
    d = wdb.open(db_path)
    with d.write_lock():  # this test process holds the lock: the CLI must wait, then give up
        p = start(db_path, "ingest", str(tmp_path / "zoo"), wait="1")
        _, err = p.communicate(timeout=120)
    assert p.returncode != 0
    assert f"waiting for the write lock held by pid {os.getpid()}" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and "more than 1 s" in last
    assert d.sql("SELECT count(*) AS n FROM checkpoints")[0]["n"] == 0
    # once the lock is free the same command goes through
    p = start(db_path, "ingest", str(tmp_path / "zoo"), wait="1")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "waiting" not in err
