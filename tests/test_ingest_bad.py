"""Bad input: every bad file is reported by name, no pickle code runs, strict commits nothing."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import wdb
from wdb.errors import BadInput


class Evil:
    """Unpickling this would create a marker file (run a shell command)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def mlp(seed: int, fan_in: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": torch.randn(4, fan_in, generator=g),
        "fc1.bias": torch.randn(4, generator=g),
    }


def make_bad_folder(root: Path, marker: Path) -> tuple[list[str], list[str]]:
    """(good file names, bad file names)."""
    root.mkdir(parents=True)
    # a run whose first step has other shapes than its later steps: the wrong-shape file comes
    # first in scan order, before the run's layout is known
    (root / "a_seq").mkdir()
    torch.save(mlp(9, fan_in=9), root / "a_seq" / "epoch_1.pt")
    torch.save(mlp(7), root / "a_seq" / "epoch_2.pt")
    torch.save(mlp(8), root / "a_seq" / "epoch_3.pt")
    good = ["a_seq/epoch_2.pt", "a_seq/epoch_3.pt"]
    for i in range(3):
        torch.save(mlp(i), root / f"good_{i}.pt")
        good.append(f"good_{i}.pt")
    torch.save({"w": Evil(marker), "fc1.bias": torch.zeros(4)}, root / "evil_torch.pt")
    with (root / "evil_pickle.pth").open("wb") as fh:
        pickle.dump({"fc1.weight": Evil(marker)}, fh)
    data = (root / "good_0.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "empty.bin").write_bytes(b"")
    nan = mlp(5)
    nan["fc1.weight"][1, 2] = float("nan")
    torch.save(nan, root / "nan.pt")
    inf = {k: v.half() for k, v in mlp(6).items()}
    inf["fc1.bias"][0] = float("inf")
    torch.save(inf, root / "inf_half.pt")
    # a non-tensor entry is metadata, not a reason to refuse the tensors
    torch.save({"fc1.weight": torch.zeros(4, 8), "note": "hello"}, root / "non_tensor.pt")
    good.append("non_tensor.pt")
    np.savez(root / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    # a stride-0 view: a few bytes on disk that would expand to a huge array in memory
    torch.save({"fc1.weight": torch.zeros(1, 8).expand(4096, 8)}, root / "broadcast.pt")
    bad = [
        "epoch_1.pt",
        "evil_torch.pt",
        "evil_pickle.pth",
        "truncated.pt",
        "empty.bin",
        "nan.pt",
        "inf_half.pt",
        "objects.npz",
        "broadcast.pt",
    ]
    return good, bad


def test_bad_files_are_reported_and_skipped(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    good, bad = make_bad_folder(tmp_path / "zoo", marker)
    db = wdb.open(tmp_path / "db")
    rep = db.ingest(tmp_path / "zoo")
    assert not marker.exists()
    assert not rep.ok() and rep.checkpoints_added == len(good)
    runs = sorted(c["run"] for c in db.checkpoints())
    assert runs == sorted(Path(g).parent.name if "/" in g else Path(g).stem for g in good)
    reasons = {Path(f).name: why for f, why in rep.skipped}
    assert sorted(reasons) == sorted(bad)
    assert reasons["epoch_1.pt"] == "shape mismatch: 'fc1.weight' is [4, 9], expected [4, 8]"
    assert "unpickle" in reasons["evil_torch.pt"] and "unpickle" in reasons["evil_pickle.pth"]
    assert "truncated" in reasons["truncated.pt"] and "truncated" in reasons["empty.bin"]
    assert reasons["nan.pt"] == "'fc1.weight' contains NaN values"
    assert reasons["inf_half.pt"] == "'fc1.bias' contains Inf values"
    (note,) = db.sql(
        "SELECT c.meta FROM checkpoints c JOIN checkpoint_info i ON i.checkpoint_id = c.id "
        "WHERE i.run = 'non_tensor'"
    )
    assert json.loads(note["meta"]) == {"note": "hello"}
    assert "pickle" in reasons["objects.npz"].lower()
    assert "broadcast view" in reasons["broadcast.pt"]
    # re-ingest: the same report, nothing new, still no code run
    again = db.ingest(tmp_path / "zoo")
    assert again.checkpoints_added == 0 and len(again.skipped) == len(bad)
    assert not marker.exists()


def test_strict_commits_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    _, bad = make_bad_folder(tmp_path / "zoo", marker)
    db = wdb.open(tmp_path / "db")
    with pytest.raises(BadInput) as err:
        db.ingest(tmp_path / "zoo", strict=True)
    file, _, why = str(err.value).partition(": ")
    assert Path(file).name in bad and why
    assert not marker.exists()
    assert db.sql("SELECT count(*) AS n FROM checkpoints")[0]["n"] == 0
    assert db.sql("SELECT count(*) AS n FROM runs")[0]["n"] == 0
    assert db.sql("SELECT count(*) AS n FROM spaces")[0]["n"] == 0


def test_strict_checks_conflicts_before_writing(tmp_path: Path) -> None:
    """A strict ingest whose *last* file conflicts with the catalog writes none of the others."""
    zoo = tmp_path / "zoo"
    (zoo / "run").mkdir(parents=True)
    for i in range(3):
        torch.save(mlp(i), zoo / "run" / f"step_{i}.pt")
    db = wdb.open(tmp_path / "db")
    only_last = tmp_path / "first" / "zoo"
    (only_last / "run").mkdir(parents=True)
    torch.save(mlp(99), only_last / "run" / "step_2.pt")
    assert db.ingest(only_last).checkpoints_added == 1
    with pytest.raises(BadInput, match="step_2.pt: run 'run' step 2 already stored"):
        db.ingest(zoo, strict=True)
    assert db.sql("SELECT count(*) AS n FROM checkpoints")[0]["n"] == 1
    rep = db.ingest(zoo)
    assert rep.checkpoints_added == 2 and len(rep.skipped) == 1


def test_strict_ok_and_small_buffer_rereads(tmp_path: Path, monkeypatch) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for i in range(4):
        torch.save(mlp(i), zoo / f"m{i}.pt")
    monkeypatch.setenv("WDB_INGEST_BUFFER_MB", "0")  # force the re-read path
    db = wdb.open(tmp_path / "db")
    rep = db.ingest(zoo, strict=True)
    assert rep.ok() and rep.checkpoints_added == 4
    for i in range(4):
        got = db.state_dict(db.checkpoint(f"m{i}"))
        assert all(torch.equal(got[k], v) for k, v in mlp(i).items())


def test_missing_manifest_files_and_bad_lines(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    torch.save(mlp(0), zoo / "a.pt")
    torch.save(mlp(1), zoo / "b.pt")
    (zoo / "manifest.jsonl").write_text(
        '{"file": "a.pt", "run": "r", "step": 0}\n'
        '{"file": "gone.pt", "run": "r", "step": 1}\n'
        "not json\n"
        '{"file": "b.pt", "run": "r", "step": 1, "kind": "weird"}\n'
    )
    db = wdb.open(tmp_path / "db")
    rep = db.ingest(zoo)
    reasons = [why for _, why in rep.skipped]
    assert rep.checkpoints_added == 1 and len(reasons) == 3
    assert any("listed in manifest.jsonl but missing" in r for r in reasons)
    assert any("invalid JSON" in r for r in reasons)
    assert any("kind must be one of" in r for r in reasons)
