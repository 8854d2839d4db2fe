"""Weights on object storage (``WDB_STORE_URL=s3://...``) against a local S3 emulator: ingest,
query, export bit-exactly and fsck with nothing of the Zarr stores in the local folder. On the
PostgreSQL run this is a PostgreSQL catalog plus S3 weights (nothing local but the FAISS index)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

import wdb

WDB = Path(sys.executable).with_name("wdb")


def cli(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(WDB), "--db", str(db), *args], capture_output=True, text=True, timeout=300
    )


def test_ingest_query_export_fsck_on_s3(tmp_path, s3_store, s3_server):
    zoo = tmp_path / "zoo"
    want = {}
    g = torch.Generator().manual_seed(0)
    for r in range(3):
        (zoo / f"run{r}").mkdir(parents=True)
        for s in range(3):
            sd = {"w": torch.randn(8, 5, generator=g), "b": torch.randn(8, generator=g)}
            torch.save(sd, zoo / f"run{r}" / f"step_{s}.pt")
            want[(f"run{r}", s)] = sd
    db = tmp_path / "db"
    res = cli(db, "ingest", str(zoo), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["checkpoints_added"] == 9
    assert not (db / "weights.zarr").exists()  # the bytes went to the bucket
    keys = s3_server.keys(s3_store)
    assert any(k.endswith("weights.zarr/spaces/1/zarr.json") for k in keys), keys
    out = tmp_path / "x.safetensors"
    res = cli(db, "export", "run1", "--step", "2", "--out", str(out))
    assert res.returncode == 0, res.stderr
    from safetensors.torch import load_file

    got = load_file(out)
    assert all(torch.equal(got[k], v) for k, v in want[("run1", 2)].items())
    res = cli(db, "query", "nearest", "--run", "run0", "--json")
    assert res.returncode == 0, res.stderr
    res = cli(db, "fsck")
    assert res.returncode == 0, res.stderr
    # the same store read back through the API, and a second ingest adds nothing
    d = wdb.open(db)
    assert d.store_url == s3_store and len(d.checkpoints()) == 9
    res = cli(db, "ingest", str(zoo), "--json")
    assert json.loads(res.stdout)[0]["checkpoints_added"] == 0
