"""float8 tensors (``float8_e4m3fn``, ``float8_e5m2``, as in FP8 releases) stored bit-exactly:
widened to float32 through a one-to-one table, exported back to the same dtype and bytes, and
queried on their float values. Runs on DuckDB and (``WDB_TEST_CATALOG=postgresql``) PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from wdb.errors import BadInput
from wdb.store.tensors import FLOAT8, float8_narrow, float8_widen

WDB = Path(sys.executable).with_name("wdb")
F8 = [torch.float8_e4m3fn, torch.float8_e5m2]


def _name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


@pytest.mark.parametrize("dt", F8)
def test_table_is_one_to_one_and_matches_torch(dt):
    bits = np.arange(256, dtype=np.uint8)
    wide = float8_widen(bits, _name(dt))
    assert np.unique(wide.view(np.uint32)).size == 256  # every pattern its own float32
    assert np.array_equal(float8_narrow(wide, _name(dt)), bits)
    ref = torch.from_numpy(bits).view(dt).float().numpy()
    finite = np.isfinite(ref)
    assert finite.sum() >= 248
    # the same values as torch's conversion (signed zeros and infinities included)
    assert np.array_equal(wide[finite].view(np.uint32), ref[finite].view(np.uint32))
    assert np.array_equal(np.isnan(wide), np.isnan(ref))
    assert np.array_equal(np.isinf(wide), np.isinf(ref))
    # through float64 (a space holding a float64 tensor) and back: still the same bits
    assert np.array_equal(float8_narrow(wide.astype(np.float64), _name(dt)), bits)


def test_value_that_is_not_float8_is_refused():
    with pytest.raises(BadInput, match="'w' holds values that are not float8_e4m3fn"):
        float8_narrow(np.array([0.5, 0.3], np.float32), "float8_e4m3fn", "w")
    assert set(FLOAT8) == {"float8_e4m3fn", "float8_e5m2"}


def _fp8_state(seed: int, shift: float = 0.0) -> dict[str, torch.Tensor]:
    """An FP8 release's shape of state dict: float8 weights, float32 scales, a bf16 norm."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 8, generator=g) + shift
    return {
        "layer.weight": w.to(torch.float8_e4m3fn),
        "layer.weight_scale_inv": torch.rand(1, generator=g),
        "head.weight": (torch.randn(4, 16, generator=g) + shift).to(torch.float8_e5m2),
        "norm.weight": torch.ones(16).to(torch.bfloat16),
    }


def _same_bits(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype, k
        assert got[k].shape == v.shape, k
        assert torch.equal(got[k].view(torch.uint8), v.view(torch.uint8)), k


def _cli(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(WDB), "--db", str(db), *args], capture_output=True, text=True, timeout=120
    )


def test_torch_save_and_safetensors_round_trip_bit_exact(db, tmp_path: Path):
    zoo = tmp_path / "fp8"
    zoo.mkdir()
    pt, st = _fp8_state(0), _fp8_state(1)
    # every finite float8 pattern once, so no bit pattern is left untried
    bits = torch.arange(256, dtype=torch.uint8)
    e4 = bits[torch.isfinite(bits.view(torch.float8_e4m3fn).float())]
    pt["all.e4m3"] = e4.view(torch.float8_e4m3fn)
    e5 = bits[torch.isfinite(bits.view(torch.float8_e5m2).float())]
    st["all.e5m2"] = e5.view(torch.float8_e5m2)
    torch.save(pt, zoo / "pt_run.pt")
    save_file(st, zoo / "st_run.safetensors")
    rep = db.ingest(zoo)
    assert rep.ok() and rep.checkpoints_added == 2, rep
    for run, want in (("pt_run", pt), ("st_run", st)):
        info = db.checkpoint(run)
        layout = db.space(info["space"]).layout
        assert layout.storage_dtype == "float32"
        assert {e.name: e.dtype for e in layout.entries}["layer.weight"] == "float8_e4m3fn"
        _same_bits(db.state_dict(info), want)
    # export through the command line, both formats, back to the same dtypes and bytes
    out_pt, out_st = tmp_path / "back.pt", tmp_path / "back.safetensors"
    res = _cli(db.path, "export", "pt_run", "--format", "pt", "--out", str(out_pt))
    assert res.returncode == 0, res.stderr
    _same_bits(torch.load(out_pt, weights_only=True), pt)
    res = _cli(db.path, "export", "st_run", "--format", "safetensors", "--out", str(out_st))
    assert res.returncode == 0, res.stderr
    _same_bits(load_file(out_st), st)
    head = json.loads(
        out_st.read_bytes()[8 : 8 + int.from_bytes(out_st.read_bytes()[:8], "little")]
    )
    assert head["layer.weight"]["dtype"] == "F8_E4M3" and head["all.e5m2"]["dtype"] == "F8_E5M2"
    # the stored row holds the float values: what nearest and scans compute on
    row = db.weights([db.checkpoint("st_run")["checkpoint_id"]])[0]
    e = db.space(db.checkpoint("st_run")["space"]).layout.entry("layer.weight")
    assert np.array_equal(row[e.offset : e.stop], st["layer.weight"].float().numpy().ravel())
    assert db.fsck().ok


def test_sharded_safetensors_of_float8(db, tmp_path: Path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    state = _fp8_state(2)
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[:2],
        "model-00002-of-00002.safetensors": names[2:],
    }
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, folder / file)
        weight_map.update({k: file for k in keys})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    rep = db.ingest(folder)
    assert rep.ok() and rep.checkpoints_added == 1, rep
    (run,) = [r["name"] for r in db.sql("SELECT name FROM runs")]
    _same_bits(db.state_dict(db.checkpoint(run)), state)


def test_nearest_over_float8_runs_on_float_values(db, tmp_path: Path):
    zoo = tmp_path / "fp8zoo"
    zoo.mkdir()
    # three bases far apart, each with a near copy: nearest pairs them on float values
    for i, shift in enumerate((0.0, 3.0, -3.0)):
        base = _fp8_state(10 + i, shift)
        torch.save(base, zoo / f"base{i}.pt")
        near = dict(base)
        near["layer.weight"] = (base["layer.weight"].float() * 1.05).to(torch.float8_e4m3fn)
        torch.save(near, zoo / f"near{i}.pt")
    rep = db.ingest(zoo)
    assert rep.ok() and rep.checkpoints_added == 6, rep
    for i in range(3):
        got = db.nearest(run=f"near{i}", k=1, among="run LIKE 'base%'")
        assert [r["run"] for r in got] == [f"base{i}"], got
