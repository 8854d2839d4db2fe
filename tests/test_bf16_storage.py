"""bf16 spaces store 2-byte bit patterns (``wdb.store.tensors``): reads give float32 values,
exports the files' bits, hashes, deltas and verification work on the bits, and a float32 row
written into such a space is rounded as torch rounds. Mixed bf16/float32 models keep float32
rows, and readers outside the ingest still give widened values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from wdb.errors import BadInput, DamagedChunk
from wdb.files import checkpoint
from wdb.files.checkpoint import read_checkpoint
from wdb.store.arrays import WIDE


def _bf16(n: int, g: torch.Generator, scale: float = 0.05) -> torch.Tensor:
    return (torch.randn(n, generator=g) * scale).to(torch.bfloat16)


def _same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype, k
        assert torch.equal(got[k].view(torch.uint8), v.contiguous().view(torch.uint8)), k


@pytest.fixture
def zoo(tmp_path: Path) -> tuple[Path, dict]:
    """A small bf16 run (torch.save), a wide bf16 run (safetensors, 3 steps of one model),
    and a mixed bf16/float32 model."""
    g = torch.Generator().manual_seed(7)
    files: dict[str, dict] = {}
    for step in range(3):
        files[f"small/step_{step}.pt"] = {"w": _bf16(60, g).view(6, 10), "b": _bf16(6, g)}
    big = {"emb": _bf16(WIDE - 4096, g), "head": _bf16(4096, g)}
    for step in range(3):
        if step:
            big = {
                k: (v.float() + _bf16(v.numel(), g, 1e-3).float()).to(torch.bfloat16)
                for k, v in big.items()
            }
        files[f"wide/step_{step}.safetensors"] = big
    files["mixed/step_0.pt"] = {"w": _bf16(12, g).view(3, 4), "b": torch.randn(3, generator=g)}
    for key, state in files.items():
        path = tmp_path / "zoo" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        if key.endswith(".pt"):
            torch.save(state, path)
        else:
            save_file(state, str(path))
    return tmp_path / "zoo", files


def _space(db, run: str):
    info = db.checkpoint(run, 0)
    return db.space(int(info["space_id"]))


def test_a_bf16_model_is_stored_as_its_bits_and_read_as_values(db, zoo) -> None:
    root, files = zoo
    rep = db.ingest(root)
    assert rep.checkpoints_added == 7, rep
    small, wide, mixed = (_space(db, r) for r in ("small", "wide", "mixed"))
    assert (small.layout.storage_dtype, wide.layout.storage_dtype) == ("bfloat16", "bfloat16")
    assert mixed.layout.storage_dtype == "float32"  # a float32 tensor: float32 rows
    dtypes = {s["name"]: s["dtype"] for s in db.spaces()}
    assert dtypes[small.name] == dtypes[wide.name] == "bfloat16"
    for space in (small, wide):
        arr = db.weights_store.array(space.array_path)
        assert arr.dtype == np.uint16 and arr.attrs["values"] == "bfloat16"
    # reads give the values (float32), exports the files' bits
    for run, n in (("small", 3), ("wide", 3), ("mixed", 1)):
        for step in range(n):
            key = f"{run}/step_{step}." + ("safetensors" if run == "wide" else "pt")
            want = files[key]
            info = db.checkpoint(run, step)
            row = db.weights([info["checkpoint_id"]])[0]
            assert row.dtype == np.float32
            flat = torch.cat([v.reshape(-1).float() for v in want.values()]).numpy()
            assert row.tobytes() == flat.tobytes(), key
            _same(db.state_dict(info), want)
    # the wide run's later steps are deltas against step 0, on the bits
    lineage = db.sql("SELECT child_step, reason FROM lineage_info WHERE child_run = 'wide'")
    assert sorted((r["child_step"], r["reason"]) for r in lineage) == [
        (1, "previous_step"),
        (2, "previous_step"),
    ]
    # two bytes a value, less what the codec and the deltas save
    stored = sum(
        f.stat().st_size
        for f in (db.path / "weights.zarr" / wide.array_path).rglob("*")
        if f.is_file() and f.name != "zarr.json"
    )
    assert stored < 3 * WIDE * 2
    assert db.fsck().ok
    assert db.ingest(root).checkpoints_added == 0  # the same bits: nothing new


def test_export_of_a_bf16_space_gives_the_files_bits(db, zoo, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from wdb.cli.main import cli

    root, files = zoo
    db.ingest(root / "wide")
    for fmt, suffix in (("safetensors", "safetensors"), ("pt", "pt")):
        out = tmp_path / f"w2.{suffix}"
        res = CliRunner().invoke(
            cli,
            [
                "--db",
                str(db.path),
                "export",
                "wide",
                "--step",
                "2",
                "--format",
                fmt,
                "--out",
                str(out),
            ],
        )
        assert res.exit_code == 0, res.output
        got = load_file(out) if fmt == "safetensors" else torch.load(out, weights_only=True)
        _same(got, files["wide/step_2.safetensors"])
    # what the export wrote: the stored bits, not values widened and narrowed back
    first = next(iter(db.iter_tensors(db.checkpoint("wide", 2), bits=True)))[1]
    assert first.dtype == np.uint16


def test_float32_rows_written_into_a_bf16_space_are_rounded_as_torch_rounds(db, zoo) -> None:
    root, _ = zoo
    db.ingest(root / "small")
    space = _space(db, "small")
    rows = np.random.default_rng(3).normal(0, 0.1, (4, space.n_params)).astype(np.float32)
    ids = db.add_checkpoints(space, rows, run="gen", kind="generated")
    want = torch.from_numpy(rows).to(torch.bfloat16).float().numpy()
    assert db.weights(ids).tobytes() == want.tobytes()
    assert db.fsck().ok


def test_a_damaged_chunk_of_a_bf16_space_is_an_error_and_fsck_restores_it(db, zoo) -> None:
    root, files = zoo
    db.ingest(root / "small")
    space = _space(db, "small")
    (chunk,) = [
        f
        for f in (db.path / "weights.zarr" / space.array_path).rglob("*")
        if f.is_file() and f.name == "0"
    ]
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    info = db.checkpoint("small", 1)
    with pytest.raises(DamagedChunk):
        db.weights([info["checkpoint_id"]])
    assert not db.fsck().ok
    rep = db.fsck(fix=True)  # the source files are still there: their bits restored
    assert rep.ok and sum("restored from" in f for f in rep.fixed) == 3, rep
    for step in range(3):
        _same(db.state_dict(db.checkpoint("small", step)), files[f"small/step_{step}.pt"])


def test_nearest_in_a_bf16_space_is_exact_on_the_values(db, zoo) -> None:
    root, files = zoo
    db.ingest(root / "small")
    got = db.nearest("small", step=2, k=2)
    q = torch.cat([v.reshape(-1).double() for v in files["small/step_2.pt"].values()])
    want = []
    for step in (0, 1):
        r = torch.cat([v.reshape(-1).double() for v in files[f"small/step_{step}.pt"].values()])
        want.append((float(torch.linalg.norm(q - r)), step))
    want.sort()
    assert [r["step"] for r in got] == [s for _, s in want]
    assert [r["distance"] for r in got] == pytest.approx([d for d, _ in want], rel=1e-12)


def test_readers_outside_the_ingest_still_widen_bf16(zoo, monkeypatch) -> None:
    """The reader contract (``wdb.plugin.read_checkpoint``): bf16 tensors as float32 values."""
    root, files = zoo
    got = read_checkpoint(root / "small" / "step_0.pt")
    assert got.arrays["w"].dtype == np.float32
    assert np.array_equal(got.arrays["w"], files["small/step_0.pt"]["w"].float().numpy())
    monkeypatch.setattr(checkpoint, "STREAM_MIN_BYTES", 0)
    streamed = read_checkpoint(root / "wide" / "step_0.safetensors")
    seg = next(iter(streamed.stream()))
    assert streamed.layout.storage_dtype == "bfloat16" and seg.dtype == np.uint16
    assert np.array_equal(
        seg, files["wide/step_0.safetensors"]["emb"].view(torch.int16).numpy().view(np.uint16)
    )
    arrays, dtypes = checkpoint.load_file(root / "wide" / "step_0.safetensors")
    assert dtypes["head"] == "bfloat16" and arrays["head"].dtype == np.float32
    assert np.array_equal(arrays["head"], files["wide/step_0.safetensors"]["head"].float().numpy())


@pytest.mark.parametrize(
    "value, kind", [(float("nan"), "NaN"), (-float("nan"), "NaN"), (-float("inf"), "Inf")]
)
def test_a_bf16_file_holding_nan_is_refused_in_one_line(db, tmp_path: Path, value, kind) -> None:
    (tmp_path / "zoo" / "bad").mkdir(parents=True)
    w = torch.zeros(8, dtype=torch.bfloat16)
    w[3] = value
    torch.save({"w": w}, tmp_path / "zoo" / "bad" / "step_0.pt")
    with pytest.raises(BadInput, match=f"'w' contains {kind}"):
        db.ingest(tmp_path / "zoo", strict=True)


def test_a_bf16_state_dict_is_searched_and_logged_as_values(db, zoo) -> None:
    import wdb

    root, files = zoo
    db.ingest(root / "small")
    state = files["small/step_1.pt"]
    (top,) = db.nearest(state, k=1)
    assert (top["run"], top["step"], top["distance"]) == ("small", 1, 0.0)
    bad = {k: v.clone() for k, v in state.items()}
    bad["b"][0] = float("inf")
    with pytest.raises(BadInput, match="NaN or Inf"):
        wdb.log_checkpoint(bad, run="logged", step=0, db=db)
    wdb.log_checkpoint(state, run="logged", step=0, db=db)
    assert _space(db, "logged").id == _space(db, "small").id
    _same(db.state_dict(db.checkpoint("logged", 0)), state)
