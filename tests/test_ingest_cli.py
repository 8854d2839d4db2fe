"""End to end through the command line: ingest (exit 3 on a skipped file), export bit-exact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

WDB = Path(sys.executable).with_name("wdb")


def wdb_cli(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(WDB), "--db", str(db), *args], capture_output=True, text=True, timeout=120
    )


def test_cli_ingest_export_fsck(tmp_path: Path) -> None:
    zoo = tmp_path / "clizoo"
    want = {}
    for r in range(2):
        (zoo / f"run{r}").mkdir(parents=True)
        for s in range(2):
            net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
            sd = net.state_dict()
            sd["0.weight"] = sd["0.weight"].to(torch.bfloat16)
            sd["1.num_batches_tracked"] += 10 * r + s
            torch.save(sd, zoo / f"run{r}" / f"epoch{s}.pt")
            want[(f"run{r}", s)] = sd
    bad = dict(want[("run0", 0)])
    bad["0.bias"] = torch.full((4,), float("nan"))
    torch.save(bad, zoo / "run1" / "broken9.pt")
    db = tmp_path / "db"
    res = wdb_cli(db, "ingest", str(zoo), "--json")
    assert res.returncode == 3, res.stderr
    assert "broken9.pt" in res.stderr and "NaN" in res.stderr
    assert '"checkpoints_added": 4' in res.stdout
    out = tmp_path / "run1_1.pt"
    res = wdb_cli(db, "export", "run1", "--step", "1", "--format", "pt", "--out", str(out))
    assert res.returncode == 0, res.stderr
    got = torch.load(out, weights_only=True)
    assert list(got) == list(want[("run1", 1)])
    for k, v in want[("run1", 1)].items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    import wdb

    assert wdb.open(db).fsck().ok  # `wdb fsck` itself is the lead's CLI test
