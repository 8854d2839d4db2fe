"""A big single ``.safetensors`` file is read tensor by tensor (``checkpoint.STREAM_MIN_BYTES``):
the same layout, space, row and hash as the whole-file read, exported back bit-exactly. The
threshold is lowered so that small files take the streamed path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from wdb.errors import BadInput
from wdb.files import checkpoint
from wdb.files.checkpoint import read_checkpoint
from wdb.ingest.pool import flat_row


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {  # names out of order, mixed dtypes: the layout's order is the file's offsets'
        "z.weight": torch.randn(7, 5, generator=g),
        "a.bias": torch.randn(5, generator=g).to(torch.bfloat16),
        "m.emb": torch.randn(3, 4, generator=g).to(torch.float8_e4m3fn),
        "count": torch.arange(3, dtype=torch.int64),
    }


def test_streamed_read_is_the_whole_read(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_state(), str(path), metadata={"format": "pt"})
    whole = read_checkpoint(path)
    assert whole.stream is None
    monkeypatch.setattr(checkpoint, "STREAM_MIN_BYTES", 0)
    streamed = read_checkpoint(path)
    assert streamed.stream is not None and streamed.arrays == {}
    lay_w, row_w = flat_row(whole, {})
    assert streamed.layout.hash == lay_w.hash
    assert [e.name for e in streamed.layout.entries] == list(load_file(str(path)))
    assert streamed.materialise().tobytes() == row_w.tobytes()


def test_streamed_ingest_exports_back_and_dedupes(db, tmp_path: Path, monkeypatch) -> None:
    state = _state()
    run = tmp_path / "zoo" / "big"
    run.mkdir(parents=True)
    save_file(state, str(run / "model.safetensors"))
    monkeypatch.setattr(checkpoint, "STREAM_MIN_BYTES", 0)
    rep = db.ingest(tmp_path / "zoo")
    assert rep.checkpoints_added == 1, rep
    (ck,) = db.checkpoints()
    out = db.state_dict(ck)
    assert list(out) == list(load_file(str(run / "model.safetensors")))
    for k, v in state.items():
        got = out[k]
        assert got.dtype == v.dtype and torch.equal(got.view(torch.uint8), v.view(torch.uint8)), k
    monkeypatch.setattr(checkpoint, "STREAM_MIN_BYTES", 1 << 62)  # the whole read: same row
    assert db.ingest(tmp_path / "zoo").checkpoints_added == 0


def test_a_truncated_big_file_is_refused_in_one_line(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_state(), str(path))
    path.write_bytes(path.read_bytes()[:-9])
    monkeypatch.setattr(checkpoint, "STREAM_MIN_BYTES", 0)
    with pytest.raises(BadInput, match="corrupt safetensors file"):
        read_checkpoint(path)
