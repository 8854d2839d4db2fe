"""Flax msgpack checkpoints (``flax.serialization.to_bytes``) read without Flax or JAX: the tree's
array leaves by path, bf16 kept, chunked giant arrays reassembled, and a stranger's bad bytes one
line each. The files are written here the way Flax writes them (msgpack extension 1: the triple
``(shape, dtype name, C bytes)``; 3: a numpy scalar; lists as maps keyed "0", "1", ...)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import wdb

WDB = Path(sys.executable).with_name("wdb")


def _ext(arr: np.ndarray, code: int = 1, dtype: str | None = None) -> msgpack.ExtType:
    triple = (list(arr.shape), dtype or arr.dtype.name, np.ascontiguousarray(arr).tobytes())
    return msgpack.ExtType(code, msgpack.packb(triple, use_bin_type=True))


def _pack(tree) -> bytes:
    def enc(x):
        if isinstance(x, dict):
            return {k: enc(v) for k, v in x.items()}
        if isinstance(x, list):
            return {str(i): enc(v) for i, v in enumerate(x)}
        if isinstance(x, np.ndarray):
            return _ext(x)
        return x

    return msgpack.packb(enc(tree), use_bin_type=True)


def _bf16_bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy().view(np.uint16)


def cli(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(WDB), "--db", str(db), *args], capture_output=True, text=True, timeout=300
    )


def test_flax_checkpoint_is_read_by_path_and_exports_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    emb = torch.randn(5, 2, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    big = rng.standard_normal((4, 3)).astype(np.float32)  # written in Flax's chunked form
    flat = big.reshape(-1)
    tree = {
        "params": {
            "Dense_0": {"kernel": kernel, "bias": bias},
            "Embed_0": {"embedding": _ext(_bf16_bits(emb), dtype="bfloat16")},
            "Big": {
                "__msgpack_chunked_array__": True,
                "shape": {"0": 4, "1": 3},
                "chunks": {"0": flat[:5], "1": flat[5:]},
            },
            "layers": [{"scale": np.ones(2, np.float32)}, {"scale": np.zeros(2, np.float32)}],
        },
        "step": 1200,
        "count": _ext(np.array(7, dtype=np.int32), code=3),
    }
    run = tmp_path / "zoo" / "flax-mlp"
    run.mkdir(parents=True)
    (run / "flax_model.msgpack").write_bytes(_pack(tree))
    db = tmp_path / "db"
    res = cli(db, "ingest", str(tmp_path / "zoo"), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["checkpoints_added"] == 1
    (ck,) = wdb.open(db).checkpoints()
    out = tmp_path / "back.safetensors"
    res = cli(db, "export", ck["run"], "--out", str(out))
    assert res.returncode == 0, res.stderr
    got = load_file(out)
    assert list(got) == [
        "params.Dense_0.kernel",
        "params.Dense_0.bias",
        "params.Embed_0.embedding",
        "params.Big",
        "params.layers.0.scale",
        "params.layers.1.scale",
        "count",
    ]
    assert np.array_equal(got["params.Dense_0.kernel"].numpy(), kernel)
    assert np.array_equal(got["params.Big"].numpy(), big)
    assert got["params.Embed_0.embedding"].dtype == torch.bfloat16
    assert torch.equal(got["params.Embed_0.embedding"].view(torch.int16), emb.view(torch.int16))
    assert got["count"].dtype == torch.int32 and int(got["count"]) == 7


@pytest.mark.parametrize(
    "name,payload,why",
    [
        ("cut", _pack({"w": np.ones(64, np.float32)})[:-9], "corrupt Flax msgpack"),
        (
            "short",
            msgpack.packb({"w": msgpack.ExtType(1, msgpack.packb(([8], "float32", b"\0" * 12)))}),
            "has 12 bytes",
        ),
        (
            "dtype",
            msgpack.packb({"w": msgpack.ExtType(1, msgpack.packb(([1], "object", b"\0" * 8)))}),
            "dtype 'object'",
        ),
        ("complex", msgpack.packb({"w": msgpack.ExtType(2, msgpack.packb((1.0, 2.0)))}), "complex"),
        ("empty", _pack({"params": {}}), "no tensors"),
    ],
)
def test_bad_flax_files_are_one_line_and_store_nothing(tmp_path, name, payload, why):
    (tmp_path / "zoo" / name).mkdir(parents=True)
    (tmp_path / "zoo" / name / "flax_model.msgpack").write_bytes(payload)
    db = tmp_path / "db"
    res = cli(db, "ingest", str(tmp_path / "zoo"))
    assert res.returncode == 3, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "flax_model.msgpack" in ln]
    assert len(lines) == 1 and why in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert wdb.open(db).checkpoints() == []
