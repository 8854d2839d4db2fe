"""Folders as their owners meant them: collections vs runs by one step rule, every weight file
accounted for, ``--dry-run``, identical files stored once, hostile manifests and file names, and
the formats beyond torch/safetensors (ONNX, TorchScript, GGUF, Keras) made by their real
libraries, ingested and exported back bit-exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import wdb
from wdb.files.names import step_token

WDB = Path(sys.executable).with_name("wdb")


def cli(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(WDB), "--db", str(db), *args], capture_output=True, text=True, timeout=300
    )


def ingest_json(db: Path, folder: Path, *extra: str) -> tuple[dict, subprocess.CompletedProcess]:
    res = cli(db, "ingest", str(folder), "--json", *extra)
    return (json.loads(res.stdout)[0] if res.stdout.strip() else {}), res


def exported(db: Path, tmp: Path, run: str, step: int = 0) -> dict[str, torch.Tensor]:
    out = tmp / f"export-{abs(hash((run, step)))}.safetensors"
    res = cli(db, "export", run, "--step", str(step), "--format", "safetensors", "--out", str(out))
    assert res.returncode == 0, res.stderr
    return load_file(out)


def same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        v = torch.as_tensor(v)
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k


STEP_NAMES = [
    # (name, step): collections of models, names with numbers that are not steps
    ("alex.pth", None),
    ("squeeze.pth", None),
    ("vgg.pth", None),
    ("full.pth", None),
    ("tiny.pth", None),
    ("onet.pt", None),
    ("pnet.pt", None),
    ("rnet.pt", None),
    ("model_16k.safetensors", None),
    ("v0.1", None),
    ("op15", None),
    ("resnet50", None),
    ("llama-7b", None),
    ("fp16", None),
    ("model_best.pth.tar", None),
    ("lin_0.pt", None),
    ("timestep_5.pt", None),
    ("model.safetensors", None),
    ("last.ckpt", None),
    # step tokens and bare numbers
    ("epoch_012.pt", 12),
    ("step_12", 12),
    ("epoch=3-step=20.ckpt", 20),
    ("epoch=1-step=20.ckpt", 20),
    ("epoch=3", 3),
    ("iter-500", 500),
    ("checkpoint-2000", 2000),
    ("checkpoint-7.pth.tar", 7),
    ("ckpt_7", 7),
    ("7.pt", 7),
    ("global_step100", 100),
]


@pytest.mark.parametrize(("name", "step"), STEP_NAMES)
def test_step_rule_on_real_names(name: str, step: int | None) -> None:
    assert step_token(name) == step


def lin(seed: int, fan_in: int = 3, fan_out: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "weight": torch.randn(fan_out, fan_in, generator=g),
        "bias": torch.randn(fan_out, generator=g),
    }


def make_tree(root: Path) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
    """A downloaded-looking tree; returns what each (run, step) must export as."""
    want = {}
    lp = root / "lpips" / "v0.1"
    lp.mkdir(parents=True)
    for i, (arch, width) in enumerate((("alex", 4), ("squeeze", 5), ("vgg", 6))):
        sd = lin(i, fan_in=width)  # the same tensor names, other shapes
        torch.save(sd, lp / f"{arch}.pth")
        want[(f"lpips/v0.1/{arch}", 0)] = sd
    # a wheel's data/ copy of one of them: stored once
    (root / "share").mkdir()
    shutil.copy(lp / "alex.pth", root / "share" / "alex.pth")
    det = root / "mtcnn"
    det.mkdir()
    for i, stage in enumerate(("onet", "pnet", "rnet")):
        sd = lin(10 + i)
        torch.save(sd, det / f"{stage}.pt", _use_new_zipfile_serialization=(stage != "pnet"))
        want[(f"mtcnn/{stage}", 0)] = sd
    sd = {"w": torch.randn(4, 4).half()}
    save_file(sd, root / "model_16k.safetensors")
    want[("model_16k", 0)] = sd
    run = root / "train"
    run.mkdir()
    for step in (12, 500):
        sd = lin(step)
        torch.save(sd, run / f"step_{step}.pt")
        want[("train", step)] = sd
    # timm-style: a torch zip named .pth.tar
    sd = lin(77)
    (root / "timm").mkdir()
    torch.save({"state_dict": sd, "epoch": 7}, root / "timm" / "checkpoint-7.pth.tar")
    want[("timm", 7)] = sd
    return want


def test_collections_runs_duplicates_and_accounting(tmp_path: Path) -> None:
    tree = tmp_path / "downloads"
    want = make_tree(tree)
    # recognised but not read: an HDF5 file that is not Keras weights
    import h5py

    with h5py.File(tree / "measurements.h5", "w") as h5:
        h5["x"] = np.arange(4.0)
    (tree / "readme.txt").write_text("not weights, never opened")
    db = tmp_path / "db"
    rep, res = ingest_json(db, tree)
    assert res.returncode == 0, res.stderr
    assert rep["checkpoints_added"] == len(want) and rep["skipped"] == 0, (rep, res.stderr)
    assert rep["same_bytes_not_stored_again"] == 1 and rep["not_stored"] == 1
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("not stored")]
    assert len(notes) == 2
    assert any(
        "share/alex.pth" in n and "same bytes as" in n and "v0.1/alex.pth" in n for n in notes
    )
    assert any("measurements.h5" in n and "HDF5" in n for n in notes)
    d = wdb.open(db)
    assert {(c["run"], c["step"]) for c in d.checkpoints()} == set(want)
    for (run, step), sd in want.items():
        same(exported(db, tmp_path, run, step), sd)
    # a rerun: nothing new, the same notes, exit 0
    rep, res = ingest_json(db, tree)
    assert res.returncode == 0 and rep["checkpoints_added"] == 0
    assert rep["already_stored"] == len(want)


def test_layouts_never_share_a_run(tmp_path: Path) -> None:
    root = tmp_path / "out"
    (root / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": lin(1), "global_step": 5}, root / "checkpoints" / "last.ckpt")
    torch.save(lin(2, fan_in=7), root / "step_5.pt")
    db = tmp_path / "db"
    rep, res = ingest_json(db, tmp_path)
    assert res.returncode == 0, res.stderr
    got = {(c["run"], c["step"]) for c in wdb.open(db).checkpoints()}
    assert got == {("out", 5), ("out#steps", 5)}


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    tree = tmp_path / "downloads"
    want = make_tree(tree)
    db = tmp_path / "db"
    first = tmp_path / "first"
    first.mkdir()
    torch.save(lin(12), first / "step_12.pt")
    assert ingest_json(db, first)[1].returncode == 0

    def state() -> tuple:
        d = wdb.open(db)
        counts = tuple(
            d.sql(f"SELECT count(*) AS n FROM {t}")[0]["n"]
            for t in ("checkpoints", "runs", "spaces", "metrics")
        )
        files = sorted(
            (str(p.relative_to(db)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in db.rglob("*")
            if p.is_file() and p.suffix not in (".wal", ".lock")
        )
        return counts, files

    before = state()
    res = cli(db, "ingest", str(tree), "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert state() == before
    by_file = {Path(r["file"]).relative_to(tree).as_posix(): r for r in rows}
    assert by_file["lpips/v0.1/vgg.pth"]["run"] == "lpips/v0.1/vgg"
    assert by_file["lpips/v0.1/vgg.pth"]["action"] == "store"
    assert "2 tensors" in by_file["lpips/v0.1/vgg.pth"]["layout"]
    assert by_file["share/alex.pth"]["action"] == "same bytes"
    assert by_file["timm/checkpoint-7.pth.tar"]["step"] == 7
    assert by_file["train/step_500.pt"]["step"] == 500
    stores = [r for r in rows if r["action"] == "store"]
    assert len(stores) == len(want)
    # the table form names each file too
    res = cli(db, "ingest", str(tree), "--dry-run")
    assert res.returncode == 0 and "vgg.pth" in res.stdout and state() == before
    # without a database, nothing is created
    res = cli(tmp_path / "nodb", "ingest", str(first), "--dry-run", "--json")
    # (on PostgreSQL the catalog is the server's, which holds 'first' already)
    on_pg = os.environ.get("WDB_TEST_CATALOG") == "postgresql"
    want_action = "already stored" if on_pg else "store"
    assert res.returncode == 0 and json.loads(res.stdout)[0]["action"] == want_action, res.stderr
    assert not (tmp_path / "nodb").exists()


def test_manifest_confined_to_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    torch.save(lin(1), outside / "secret.pt")
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    torch.save(lin(2), zoo / "ok.pt")
    os.symlink(outside / "secret.pt", zoo / "link.pt")
    (zoo / "manifest.jsonl").write_text(
        '{"file": "../outside/secret.pt", "run": "a", "step": 0}\n'
        '{"file": "link.pt", "run": "b", "step": 0}\n'
        '{"file": "ok.pt", "run": "c", "step": 0}\n'
    )
    db = tmp_path / "db"
    rep, res = ingest_json(db, zoo)
    assert res.returncode == 3 and rep["checkpoints_added"] == 1, res.stderr
    skipped = [ln for ln in res.stderr.splitlines() if ln.startswith("skipped")]
    assert len(skipped) == 2 and all("outside the folder" in s for s in skipped)
    assert [c["run"] for c in wdb.open(db).checkpoints()] == ["c"]
    # allowed: both lines name the same outside file, which is stored once (run 'a')
    rep, res = ingest_json(db, zoo, "--allow-outside")
    assert res.returncode == 0 and rep["checkpoints_added"] == 1, res.stderr
    assert rep["same_bytes_not_stored_again"] == 1
    assert sorted(c["run"] for c in wdb.open(db).checkpoints()) == ["a", "c"]


def test_non_utf8_file_name_is_ingested(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    bad = os.fsdecode(b"caf\xe9.pt")
    torch.save(lin(1), zoo / bad)
    torch.save(lin(2), zoo / "plain.pt")
    db = tmp_path / "db"
    rep, res = ingest_json(db, zoo)
    assert res.returncode == 0 and rep["checkpoints_added"] == 2, res.stderr
    runs = sorted(c["run"] for c in wdb.open(db).checkpoints())
    assert runs == ["caf\\xe9", "plain"]
    same(exported(db, tmp_path, "caf\\xe9"), lin(1))


# -- formats made by their own libraries ---------------------------------------------------------


def test_torchscript_parameters_without_running_code(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    net[1].running_mean.normal_()
    net.half()
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    torch.jit.script(net).save(str(zoo / "net.jit"))
    torch.jit.trace(torch.nn.Linear(2, 2).eval(), torch.zeros(1, 2)).save(str(zoo / "traced.pt"))
    db = tmp_path / "db"
    rep, res = ingest_json(db, zoo)
    assert res.returncode == 0 and rep["checkpoints_added"] == 2, res.stderr
    for name, run in (("net.jit", "net"), ("traced.pt", "traced")):
        ref = torch.jit.load(str(zoo / name)).state_dict()
        same(exported(db, tmp_path, run), dict(ref))


def _onnx_model(folder: Path):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[test]')")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w32 = rng.normal(size=(4, 3)).astype(np.float32)
    w16 = rng.normal(size=(4,)).astype(np.float16)
    bf_bits = (rng.normal(size=(2, 4)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    bf = helper.make_tensor("bf", TensorProto.BFLOAT16, [2, 4], bf_bits.tobytes(), raw=True)
    shape = numpy_helper.from_array(np.array([1, 12], dtype=np.int64), "shape")
    inits = [numpy_helper.from_array(w32, "w32"), numpy_helper.from_array(w16, "w16"), bf, shape]
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["w32", "shape"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12])],
        initializer=inits,
    )
    model = helper.make_model(graph)
    want = {
        "w32": torch.from_numpy(w32),
        "w16": torch.from_numpy(w16),
        "bf": torch.from_numpy(bf_bits.astype(np.int16)).view(torch.bfloat16),
        "shape": torch.tensor([1, 12]),
    }
    onnx.save(model, str(folder / "plain.onnx"))
    onnx.save(
        model,
        str(folder / "external.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="external.onnx.data",
        size_threshold=0,
    )
    return want


def test_onnx_initializers_bit_exact_with_external_data(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    want = _onnx_model(zoo)
    assert (zoo / "external.onnx.data").stat().st_size > 0
    db = tmp_path / "db"
    rep, res = ingest_json(db, zoo)
    assert res.returncode == 0, res.stderr
    assert rep["checkpoints_added"] == 2 and rep["skipped"] == 0, (rep, res.stderr)
    for run in ("plain", "external"):
        same(exported(db, tmp_path, run), want)


def test_gguf_floats_as_themselves_quantized_as_bytes(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf", reason="gguf is not installed (pip install -e '.[test]')")
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    rng = np.random.default_rng(1)
    f32 = rng.normal(size=(3, 5)).astype(np.float32)
    f16 = rng.normal(size=(8,)).astype(np.float16)
    q8 = gguf.quants.quantize(
        rng.normal(size=(2, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0
    )
    w = gguf.GGUFWriter(str(zoo / "tiny.gguf"), "llama")
    w.add_tensor("f32", f32)
    w.add_tensor("f16", f16)
    w.add_tensor("q8", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    db = tmp_path / "db"
    rep, res = ingest_json(db, zoo)
    assert res.returncode == 0 and rep["checkpoints_added"] == 1, res.stderr
    got = exported(db, tmp_path, "tiny")
    same(
        got,
        {
            "f32": torch.from_numpy(f32),
            "f16": torch.from_numpy(f16),
            "q8": torch.from_numpy(np.ascontiguousarray(q8).view(np.uint8).reshape(-1)),
        },
    )
    (meta,) = wdb.open(db).sql("SELECT meta FROM checkpoints")
    assert json.loads(meta["meta"])["gguf_types"]["q8"]["type"] == "Q8_0"


def test_keras_weights_h5_by_layer_paths(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py", reason="h5py is not installed (pip install -e '.[test]')")
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    rng = np.random.default_rng(2)
    want = {
        "layers/dense/vars/0": rng.normal(size=(3, 2)).astype(np.float32),
        "layers/dense/vars/1": rng.normal(size=(2,)).astype(np.float32),
    }
    # the layout Keras 3's save_weights writes (keras itself is not a test dependency)
    with h5py.File(zoo / "model.weights.h5", "w") as h5:
        for name, arr in want.items():
            h5.create_dataset(name, data=arr)
        h5.create_group("optimizer")
    with h5py.File(zoo / "other.h5", "w") as h5:
        h5.create_dataset("x", data=np.zeros(3))
    db = tmp_path / "db"
    rep, res = ingest_json(db, zoo)
    assert res.returncode == 0 and rep["checkpoints_added"] == 1 and rep["not_stored"] == 1, (
        rep,
        res.stderr,
    )
    same(exported(db, tmp_path, "model"), {k: torch.from_numpy(v) for k, v in want.items()})


def test_same_bytes_groups_by_size_and_leaves_a_file_read_many_times_alone(tmp_path: Path) -> None:
    from wdb.ingest.readers import Found
    from wdb.ingest.survey import same_bytes

    for name, data in (("a", b"x" * 10), ("b", b"y" * 10), ("b2", b"y" * 10), ("c", b"z" * 11)):
        (tmp_path / f"{name}.pt").write_bytes(data)
    src = {n: str(tmp_path / f"{n}.pt") for n in ("a", "b", "b2", "c")}
    found = [
        Found(src["a"], "rows", 0, lambda: None),  # one file, two checkpoints (a reader's choice)
        Found(src["a"], "rows", 1, lambda: None),
        Found(src["b"], "b", 0, lambda: None),
        Found(src["b2"], "b2", 0, lambda: None),
        Found(src["c"], "c", 0, lambda: None),
    ]
    kept, dups = same_bytes(found)
    assert [f.source for f in kept] == [src["a"], src["a"], src["b"], src["c"]]
    assert dups == [(src["b2"], src["b"])]
