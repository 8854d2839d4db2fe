"""``torch.distributed.checkpoint`` folders (``.metadata`` + ``__0_0.distcp``) read by the built-in
``dcp`` reader: model tensors bit-exact, training state left out and named, the step from the
folder or the checkpoint, and hostile metadata refused without running anything."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from wdb import plugins

ROOT = Path(__file__).resolve().parent.parent
WDB = Path(sys.executable).with_name("wdb")


@pytest.fixture(autouse=True)
def _dcp_reader():
    """The reader as installed (entry point ``dcp``), or registered in this process when the
    installed wdb predates it."""
    mine = "dcp" not in plugins.names("wdb.readers")
    if mine:
        plugins.register("wdb.readers", "dcp", importlib.import_module("ingest.dcp"))
    yield
    if mine:
        plugins.unregister("wdb.readers", "dcp")


def _save(state: dict, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group": a single-process save
        dcp.save(state, checkpoint_id=str(path))


def _model(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 2))
    net(torch.randn(4, 6))  # moves the running stats and num_batches_tracked
    sd = dict(net.state_dict())
    sd["2.weight"] = sd["2.weight"].to(torch.bfloat16)
    sd["0.weight"] = sd["0.weight"].to(torch.float8_e4m3fn)
    return sd


def _bundle(seed: int) -> dict:
    """What an FSDP training loop saves: model, optimizer, a step, other state."""
    sd = _model(seed)
    params = [torch.nn.Parameter(v.float().clone()) for v in sd.values() if v.is_floating_point()]
    opt = torch.optim.Adam(params)
    sum(p.sum() for p in params).backward()
    opt.step()
    return {"model": sd, "optimizer": opt.state_dict(), "step": 100 + seed, "extra": {"a": "b"}}


def _same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k].view(-1).view(torch.uint8), v.view(-1).view(torch.uint8)), k


def test_run_of_dcp_folders_bit_exact(db, tmp_path: Path, monkeypatch):
    import ingest.dcp

    monkeypatch.setattr(ingest.dcp, "BATCH_BYTES", 64)  # several reads per checkpoint
    runs = tmp_path / "outputs"
    for s in (1, 2):
        _save(_bundle(s), runs / "checkpoint" / f"step-{s * 10}")
    rep = db.ingest(runs)
    assert rep.format == "dcp"
    assert rep.ok() and rep.checkpoints_added == 2, rep
    for s in (1, 2):
        info = db.checkpoint("checkpoint", s * 10)
        _same(db.state_dict(info), _model(s))
    meta = db.sql("SELECT meta FROM checkpoints LIMIT 1")[0]["meta"]
    assert "optimizer" in str(meta) and "torch.distributed.checkpoint" in str(meta)
    assert db.fsck().ok


def test_torchtitan_layout_and_step_from_train_state(db, tmp_path: Path):
    # torchtitan: the model's tensors at the top level, beside optimizer and train_state
    sd = _model(3)
    folder = tmp_path / "final"
    _save(
        {**sd, "optimizer": _bundle(3)["optimizer"], "train_state": {"step": torch.tensor(42)}},
        folder,
    )
    rep = db.ingest(folder)
    assert rep.ok() and rep.checkpoints_added == 1, rep
    info = db.checkpoint("final")
    assert info["step"] == 42
    _same(db.state_dict(info), sd)


def test_hostile_metadata_is_refused_and_runs_nothing(db, tmp_path: Path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = tmp_path / "evil"
    _save({"model": _model(4)}, folder)
    (folder / ".metadata").write_bytes(pickle.dumps(Evil()))
    rep = db.ingest(folder)
    assert not rep.ok() and rep.checkpoints_added == 0
    ((source, why),) = rep.skipped
    assert "evil/.metadata: refused to unpickle (refused global pathlib" in why, why
    assert not marker.exists()
    # torch's own reader would have run it: the reason this reader parses .metadata itself
    from torch.distributed.checkpoint import FileSystemReader

    with pytest.raises(AttributeError):  # after the pickle's call has run
        FileSystemReader(str(folder)).read_metadata()
    assert marker.exists()


def test_metadata_pointing_outside_the_folder_is_refused(db, tmp_path: Path):
    import ingest.dcp

    folder = tmp_path / "ck"
    _save({"model": _model(5)}, folder)
    md = ingest.dcp.read_metadata(folder)
    info = next(iter(md.storage_data.values()))
    info.relative_path = "../outside.distcp"
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    rep = db.ingest(folder)
    ((_, why),) = rep.skipped
    assert "is not a .distcp file here" in why, why
    # a truncated data file: one line, nothing stored
    _save({"model": _model(5)}, folder)
    data = folder / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[:100])
    rep = db.ingest(folder)
    ((_, why),) = rep.skipped
    assert "__0_0.distcp: truncated" in why, why
    assert db.sql("SELECT count(*) AS n FROM checkpoints")[0]["n"] == 0


def test_cli_reads_a_dcp_folder(tmp_path: Path):
    folder = tmp_path / "ckpt" / "step-7"
    _save(_bundle(6), folder)
    db = tmp_path / "db"
    reader = str(ROOT / "ingest" / "dcp.py")  # the entry point, also before it is installed
    res = subprocess.run(
        [str(WDB), "--db", str(db), "ingest", str(folder), "--format", reader],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out = tmp_path / "back.safetensors"
    res = subprocess.run(
        [
            str(WDB),
            "--db",
            str(db),
            "export",
            "step-7",
            "--format",
            "safetensors",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    from safetensors.torch import load_file

    got = load_file(out)
    _same({k: got[k] for k in _model(6)}, _model(6))


def test_detect_leaves_mixed_folders_to_the_generic_reader(tmp_path: Path):
    import ingest.dcp

    _save({"model": _model(7)}, tmp_path / "runs" / "step-1")
    assert ingest.dcp.detect(tmp_path / "runs") and ingest.dcp.detect(tmp_path / "runs" / "step-1")
    torch.save(_model(7), tmp_path / "runs" / "other.pt")
    assert not ingest.dcp.detect(tmp_path / "runs")
    assert not ingest.dcp.detect(tmp_path / "runs" / "other.pt")
