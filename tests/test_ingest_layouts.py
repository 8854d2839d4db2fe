"""Checkpoints as researchers have them: Hugging Face shards (safetensors and .bin), Trainer
folders, Lightning ``.ckpt``, bundles with metadata, mixed architectures in one folder.

Each layout is built with the real library where it is light (transformers' ``save_pretrained``
on a tiny config, ``huggingface_hub``'s shard splitter), ingested through the CLI, and exported
back bit-exactly; a re-ingest adds nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import wdb

WDB = Path(sys.executable).with_name("wdb")
transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install -e '.[test]')"
)


def cli(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(WDB), "--db", str(db), *args], capture_output=True, text=True, timeout=300
    )


def ingest_json(db: Path, folder: Path, *extra: str) -> tuple[dict, subprocess.CompletedProcess]:
    res = cli(db, "ingest", str(folder), "--json", *extra)
    return (json.loads(res.stdout)[0] if res.stdout.strip() else {}), res


def tiny_bert(seed: int = 0, dtype: torch.dtype = torch.float32):
    cfg = transformers.BertConfig(
        vocab_size=99,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    return transformers.BertModel(cfg).to(dtype)


def shard_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded set, read straight from its files (the ground truth)."""
    out = {}
    for f in sorted(folder.iterdir()):
        if f.suffix == ".safetensors":
            out.update(load_file(f))
        elif f.suffix == ".bin":
            out.update(torch.load(f, weights_only=True))
    return out


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(
            got[k].view(torch.uint8) if v.dtype != torch.bool else got[k],
            (v.view(torch.uint8) if v.dtype != torch.bool else v),
        ), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sharded_safetensors_is_one_checkpoint_and_exports_back(tmp_path, dtype):
    src = tmp_path / "zoo" / "tiny-bert"
    size = "15KB" if dtype == torch.float32 else "7KB"  # two or more shards either way
    tiny_bert(dtype=dtype).save_pretrained(src, max_shard_size=size)
    shards = sorted(src.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and (src / "model.safetensors.index.json").is_file()
    want = shard_tensors(src)
    db = tmp_path / "db"
    rep, res = ingest_json(db, tmp_path / "zoo")
    assert res.returncode == 0, res.stderr
    assert rep["checkpoints_added"] == 1 and rep["runs_added"] == 1, rep
    (ck,) = wdb.open(db).checkpoints()
    assert ck["run"] == "tiny-bert" and ck["step"] == 0
    # one file, bit-exact, then the sharded form it came from
    res = cli(db, "export", "tiny-bert", "--out", str(tmp_path / "one.safetensors"))
    assert res.returncode == 0, res.stderr
    assert_same(load_file(tmp_path / "one.safetensors"), want)
    out = tmp_path / "back"
    res = cli(db, "export", "tiny-bert", "--out", str(out), "--max-shard-size", size)
    assert res.returncode == 0, res.stderr
    assert len(list(out.glob("model-*-of-*.safetensors"))) == len(shards)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(want)
    assert_same(shard_tensors(out), want)
    (out / "config.json").write_text((src / "config.json").read_text())
    back = transformers.BertModel.from_pretrained(out)  # the library reads it like its own
    assert_same({k: v for k, v in back.state_dict().items() if k in want}, want)
    # re-ingest adds nothing
    rep, res = ingest_json(db, tmp_path / "zoo")
    assert res.returncode == 0 and rep["checkpoints_added"] == 0 and rep["already_stored"] == 1


def test_sharded_bin_and_shards_without_their_index(tmp_path):
    from huggingface_hub import split_torch_state_dict_into_shards

    state = tiny_bert(seed=1).state_dict()
    src = tmp_path / "zoo" / "legacy"
    src.mkdir(parents=True)
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="pytorch_model{suffix}.bin", max_shard_size="12KB"
    )
    for name, keys in split.filename_to_tensors.items():
        torch.save({k: state[k].clone() for k in keys}, src / name)
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    lost = tmp_path / "zoo" / "lost"
    lost.mkdir()
    for f in list(src.glob("pytorch_model-*.bin"))[:2]:
        (lost / f.name).write_bytes(f.read_bytes())
    db = tmp_path / "db"
    rep, res = ingest_json(db, tmp_path / "zoo")
    assert res.returncode == 3 and rep["checkpoints_added"] == 1, (rep, res.stderr)
    skipped = [ln for ln in res.stderr.splitlines() if ln.startswith("skipped")]
    assert len(skipped) == 1 and "without its index" in skipped[0] and "lost" in skipped[0]
    res = cli(db, "export", "legacy", "--format", "pt", "--out", str(tmp_path / "x.pt"))
    assert res.returncode == 0, res.stderr
    assert_same(torch.load(tmp_path / "x.pt", weights_only=True), dict(state))
    out = tmp_path / "binback"
    res = cli(
        db, "export", "legacy", "--format", "pt", "--out", str(out), "--max-shard-size", "12KB"
    )
    assert res.returncode == 0, res.stderr
    assert (out / "pytorch_model.bin.index.json").is_file()
    assert_same(shard_tensors(out), dict(state))


def test_trainer_folder_is_one_run_with_steps_metrics_and_companions(tmp_path):
    out = tmp_path / "trainer-out"
    want = {}
    history = []
    for step in (2, 4):
        ck = out / f"checkpoint-{step}"
        model = tiny_bert(seed=step)
        model.save_pretrained(ck)
        want[step] = load_file(ck / "model.safetensors")
        history += [
            {"epoch": step / 2, "loss": 1.0 / step, "step": step},
            {
                "epoch": step / 2,
                "eval_loss": 2.0 / step,
                "eval_accuracy": 0.5 + step / 10,
                "step": step,
            },
        ]
        state = {"global_step": step, "log_history": list(history)}
        (ck / "trainer_state.json").write_text(json.dumps(state))
        torch.save({"state": {}, "param_groups": []}, ck / "optimizer.pt")
        torch.save({"last_epoch": step}, ck / "scheduler.pt")
        torch.save({"python": [1, 2, 3]}, ck / "rng_state.pth")
        torch.save({"learning_rate": 1e-3}, ck / "training_args.bin")
    db = tmp_path / "db"
    rep, res = ingest_json(db, out)
    assert res.returncode == 0, res.stderr
    assert "skipped" not in res.stderr
    assert rep["runs_added"] == 1 and rep["checkpoints_added"] == 2
    assert rep["companion_files_not_stored"] == 8
    d = wdb.open(db)
    assert [(c["run"], c["step"]) for c in d.checkpoints()] == [
        ("trainer-out", 2),
        ("trainer-out", 4),
    ]
    rows = d.sql(
        "SELECT c.step, m.name, m.value FROM metrics m JOIN checkpoint_info c "
        "ON c.checkpoint_id = m.checkpoint_id WHERE m.name IN ('eval_loss', 'eval_accuracy') "
        "ORDER BY c.step, m.name"
    )
    assert [(r["step"], r["name"], round(r["value"], 6)) for r in rows] == [
        (2, "eval_accuracy", 0.7),
        (2, "eval_loss", 1.0),
        (4, "eval_accuracy", 0.9),
        (4, "eval_loss", 0.5),
    ]
    for step in (2, 4):
        res = cli(db, "export", "trainer-out", "--step", str(step), "--out", str(tmp_path / "e.st"))
        assert res.returncode == 0, res.stderr
        assert_same(load_file(tmp_path / "e.st"), want[step])
    rep, res = ingest_json(db, out)
    assert res.returncode == 0 and rep["checkpoints_added"] == 0 and rep["already_stored"] == 2


def test_lightning_ckpt_and_bundles_keep_weights_and_metadata(tmp_path):
    zoo = tmp_path / "zoo"
    ckdir = zoo / "lightning_logs" / "version_0" / "checkpoints"
    ckdir.mkdir(parents=True)
    nets = {}
    for epoch, step in ((0, 10), (1, 20)):
        torch.manual_seed(step)
        sd = torch.nn.Linear(4, 3).state_dict()
        nets[step] = sd
        torch.save(
            {
                "epoch": epoch,
                "global_step": step,
                "pytorch-lightning_version": "2.4.0",
                "state_dict": {f"model.{k}": v for k, v in sd.items()},
                "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3, 4)}}}],
                "lr_schedulers": [],
                "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": epoch}}}},
            },
            ckdir / f"epoch={epoch}-step={step}.ckpt",
        )
    # resemblyzer-style: the weights under 'model_state' with a step beside them; and a plain
    # state dict with a non-tensor entry
    torch.save({"model_state": nets[10], "step": 1000}, zoo / "encoder.pt")
    torch.save({**nets[20], "note": "fine-tuned", "lr": 0.5}, zoo / "tagged.pt")
    torch.save({"w": torch.zeros(2, dtype=torch.complex64)}, zoo / "complex.pt")
    db = tmp_path / "db"
    rep, res = ingest_json(db, zoo)
    assert res.returncode == 3, res.stderr
    skipped = [ln for ln in res.stderr.splitlines() if ln.startswith("skipped")]
    assert len(skipped) == 1 and "complex.pt" in skipped[0] and "complex tensor" in skipped[0]
    d = wdb.open(db)
    got = {(c["run"], c["step"]) for c in d.checkpoints()}
    assert got == {
        ("lightning_logs/version_0", 10),
        ("lightning_logs/version_0", 20),
        ("encoder", 1000),
        ("tagged", 0),
    }
    meta = {
        (r["run"], r["step"]): json.loads(r["meta"])
        for r in d.sql(
            "SELECT i.run, i.step, c.meta FROM checkpoints c "
            "JOIN checkpoint_info i ON i.checkpoint_id = c.id"
        )
    }
    light = meta[("lightning_logs/version_0", 20)]
    assert light["epoch"] == 1 and light["pytorch-lightning_version"] == "2.4.0"
    assert "optimizer_states" in light["not_stored"]
    assert meta[("tagged", 0)] == {"note": "fine-tuned", "lr": 0.5}
    (epoch,) = d.sql(
        "SELECT m.value FROM metrics m JOIN checkpoint_info c ON c.checkpoint_id = m.checkpoint_id "
        "WHERE c.run = 'lightning_logs/version_0' AND c.step = 20 AND m.name = 'epoch'"
    )
    assert epoch["value"] == 1.0
    res = cli(
        db,
        "export",
        "lightning_logs/version_0",
        "--step",
        "20",
        "--format",
        "pt",
        "--out",
        str(tmp_path / "l.pt"),
    )
    assert res.returncode == 0, res.stderr
    assert_same(
        torch.load(tmp_path / "l.pt", weights_only=True),
        {f"model.{k}": v for k, v in nets[20].items()},
    )


def test_mixed_architectures_get_one_space_each(tmp_path):
    """lpips-like: the same tensor names with other shapes per architecture, one file each."""
    zoo = tmp_path / "lpips"
    zoo.mkdir()
    widths = {
        "alex": (64, 192, 384, 256, 256),
        "vgg": (64, 128, 256, 512, 512),
        "squeeze": (64, 128, 256, 384, 384),
    }
    for arch, chans in widths.items():
        sd = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(chans)}
        torch.save(sd, zoo / f"{arch}.pth")
    db = tmp_path / "db"
    rep, res = ingest_json(db, zoo)
    assert res.returncode == 0, res.stderr
    assert rep["checkpoints_added"] == 3 and len(rep["spaces"].split(", ")) == 3
    spaces = {c["run"]: c["space"] for c in wdb.open(db).checkpoints()}
    assert len(set(spaces.values())) == 3


def test_bad_shards_are_one_line_each_and_nothing_is_written(tmp_path):
    zoo = tmp_path / "zoo"
    for name in ("nan-model", "cut-model"):
        tiny_bert(seed=3).save_pretrained(zoo / name, max_shard_size="15KB")
    last = sorted((zoo / "nan-model").glob("model-*.safetensors"))[-1]
    tensors = load_file(last)
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    from safetensors.torch import save_file

    save_file(tensors, str(last), metadata={"format": "pt"})
    cut = sorted((zoo / "cut-model").glob("model-*.safetensors"))[-1]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    db = tmp_path / "db"
    rep, res = ingest_json(db, zoo)
    assert res.returncode == 3 and rep["checkpoints_added"] == 0, res.stderr
    skipped = sorted(ln for ln in res.stderr.splitlines() if ln.startswith("skipped"))
    assert len(skipped) == 2
    assert "cut-model" in skipped[0] and "truncated" in skipped[0]
    assert "nan-model" in skipped[1] and f"'{key}' contains NaN values" in skipped[1]
    assert wdb.open(db).sql("SELECT count(*) AS n FROM checkpoints")[0]["n"] == 0
