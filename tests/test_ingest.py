"""Ingest of every supported layout: bit-exact round trips, idempotence, metrics and configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wdb.errors import BadInput
from wdb.files.checkpoint import load_file
from wdb.files.torch import fast_torch_load
from wdb.ingest.pipeline import IngestReport


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (so -0.0 vs 0.0 or a rounded bf16 would fail)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    )


def assert_same_state(got: dict, want: dict, ordered: bool = True) -> None:
    assert list(got) == list(want) if ordered else sorted(got) == sorted(want)
    for k in want:
        assert same_bits(got[k], want[k]), k


def mixed_state(seed: int) -> dict[str, torch.Tensor]:
    """fp32 + fp16 + bf16 tensors, BatchNorm buffers (num_batches_tracked int64), a transposed
    (non-contiguous) tensor and a -0.0."""
    g = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm1d(5)
    bn.running_mean.normal_(generator=g)
    bn.num_batches_tracked += 7 + seed
    sd = {
        "fc1.weight": torch.randn(5, 6, generator=g),
        "fc1.bias": torch.randn(5, generator=g).half(),
        "emb": torch.randn(3, 4, generator=g).to(torch.bfloat16),
        "proj": torch.randn(4, 3, generator=g).t(),
    }
    sd["fc1.weight"][0, 0] = -0.0
    sd.update({f"bn.{k}": v.clone() for k, v in bn.state_dict().items()})
    return sd


def total_rows(db) -> int:
    return sum(
        db.weights_store.n_rows(s["array_path"]) for s in db.sql("SELECT array_path FROM spaces")
    )


def test_loader_matches_torch_load(tmp_path: Path) -> None:
    sd = mixed_state(0)
    sd["param"] = torch.nn.Parameter(torch.ones(2))
    torch.save(sd, tmp_path / "x.pt")
    arrays, dtypes = load_file(tmp_path / "x.pt")
    assert isinstance(fast_torch_load(tmp_path / "x.pt"), dict)  # the fast path read it
    ref = torch.load(tmp_path / "x.pt", weights_only=True)
    assert list(arrays) == list(ref)
    for k, v in ref.items():
        assert dtypes[k] == str(v.dtype).removeprefix("torch.")
        assert np.array_equal(
            arrays[k], v.detach().float().numpy() if k == "emb" else v.detach().numpy()
        )


def test_folder_with_manifest_roundtrip_and_reingest(db, tmp_path: Path) -> None:
    zoo = tmp_path / "myzoo"
    lines, sources = [], {}
    for r in range(3):
        (zoo / f"r{r}").mkdir(parents=True)
        for e in range(2):
            sd = mixed_state(10 * r + e)
            rel = f"r{r}/epoch_{e}.pt"
            torch.save(sd, zoo / rel)
            sources[(f"train_{r}", e)] = sd
            rec = {"file": rel, "run": f"train_{r}", "epoch": e, "accuracy": 0.5 + r / 10}
            rec.update({"loss": 1.0 - e / 10, "config": {"seed": r}, "split": "train"})
            if r == 2:
                rec["kind"] = "baseline"
            lines.append(json.dumps(rec))
    (zoo / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    rep = db.ingest(zoo)
    assert isinstance(rep, IngestReport) and rep.ok()
    assert (rep.format, rep.runs_added, rep.checkpoints_added) == ("folder", 3, 6)
    assert rep.spaces == ["myzoo"] and rep.bytes_written > 0 and len(rep.checkpoint_ids) == 6
    for c in db.checkpoints():
        assert_same_state(db.state_dict(c["checkpoint_id"]), sources[(c["run"], c["step"])])
        assert c["zoo"] == "myzoo" and c["split"] == "train"
    runs = {r["run"]: r for r in db.runs()}
    assert json.loads(runs["train_1"]["config"]) == {"seed": 1}
    assert runs["train_2"]["kind"] == "baseline" and runs["train_0"]["kind"] == "training"
    acc = db.sql(
        "SELECT m.value FROM metrics m JOIN checkpoint_info c ON c.checkpoint_id = m.checkpoint_id "
        "JOIN eval_sets e ON e.id = m.eval_set_id "
        "WHERE c.run = 'train_1' AND c.step = 1 AND m.name = 'accuracy' AND e.name = 'reported:myzoo'"
    )
    assert acc == [{"value": pytest.approx(0.6)}]
    rows_before = total_rows(db)
    again = db.ingest(zoo)
    assert again.ok() and again.checkpoints_added == 0 and again.runs_added == 0
    assert again.checkpoints_existing == 6 and sorted(again.checkpoint_ids) == sorted(
        rep.checkpoint_ids
    )
    assert total_rows(db) == rows_before
    assert db.sql("SELECT count(*) AS n FROM checkpoints")[0]["n"] == 6
    assert db.sql("SELECT count(*) AS n FROM metrics")[0]["n"] == 12


def test_folder_files_safetensors_npz_and_csv_manifest(db, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    zoo = tmp_path / "files"
    zoo.mkdir()
    half = {"w": torch.randn(4, 3).half(), "b": torch.randn(4).half()}
    save_file(half, zoo / "a.safetensors")
    bf = {"w": torch.randn(4, 3).to(torch.bfloat16), "b": torch.randn(4).to(torch.bfloat16)}
    save_file(bf, zoo / "b.safetensors")
    npz = {"w": np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)}
    np.savez(zoo / "c.npz", **npz)
    np.savez(zoo / "d.npz", w=npz["w"] + 1)
    (zoo / "manifest.csv").write_text("file,run,step,accuracy,note\nc.npz,npz_run,3,0.25,hello\n")
    rep = db.ingest(zoo)
    assert rep.ok() and rep.checkpoints_added == 4 and len(rep.spaces) == 3
    half_space = db.space(db.checkpoint("a")["space"])
    assert half_space.layout.storage_dtype == "float16"
    # safetensors files store tensors sorted by name: that order is the file's order
    assert_same_state(db.state_dict(db.checkpoint("a")), half, ordered=False)
    assert_same_state(db.state_dict(db.checkpoint("b")), bf, ordered=False)
    c = db.checkpoint("npz_run")
    assert c["step"] == 3
    assert np.array_equal(db.state_dict(c)["w"].numpy(), npz["w"])
    names = {r["name"] for r in db.sql("SELECT name FROM metrics")}
    assert names == {"accuracy"}


def test_modelzoo_layout(db, tmp_path: Path) -> None:
    zoo = tmp_path / "zoo_mnist"
    want = {}
    for r, fmt in enumerate(("{:06d}", "{}")):
        run = zoo / f"NN_tune_trainable_{r:05d}_seed={r}"
        run.mkdir(parents=True)
        (run / "params.json").write_text(json.dumps({"seed": r, "lr": 1e-3}))
        lines = []
        for epoch in (0, 1, 2):
            net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
            torch.manual_seed(100 * r + epoch)
            for p in net.parameters():
                p.data.normal_()
            sd = net.state_dict()
            cdir = run / f"checkpoint_{fmt.format(epoch)}"
            cdir.mkdir()
            torch.save({"model": sd, "optimizer": {"lr": 0.1}}, cdir / "checkpoints")
            want[(run.name, epoch)] = sd
            lines.append(
                json.dumps(
                    {
                        "epoch": epoch,
                        "test_acc": 0.1 * epoch + r / 100,
                        "test_loss": 2.0 - epoch,
                        "timestamp": 12345,
                    }
                )
            )
        (run / "result.json").write_text("\n".join(lines) + "\n")
    rep = db.ingest(zoo)
    assert rep.ok() and rep.format == "modelzoo" and rep.checkpoints_added == 6
    for c in db.checkpoints():
        assert_same_state(db.state_dict(c), want[(c["run"], c["step"])])
    run = db.run("NN_tune_trainable_00001_seed=1")
    assert json.loads(run["config"]) == {"seed": 1, "lr": 1e-3}
    ck = db.checkpoint("NN_tune_trainable_00001_seed=1", 2)["checkpoint_id"]
    got = {
        r["name"]: r["value"]
        for r in db.sql("SELECT name, value FROM metrics WHERE checkpoint_id = :c", {"c": ck})
    }
    assert got["accuracy"] == pytest.approx(0.21) and got["test_acc"] == pytest.approx(0.21)
    assert got["loss"] == pytest.approx(0.0) and "timestamp" not in got
    assert db.ingest(zoo).checkpoints_added == 0


def test_flat_layout_with_error_sets(db, tmp_path: Path) -> None:
    from wdb.store.outputs import error_masks, eval_set
    from wdb.store.spaces import Layout

    src = {"fc.weight": np.zeros((3, 4), np.float32), "fc.bias": np.zeros(3, np.float32)}
    layout = Layout.from_arrays(src)
    (tmp_path / "layout.json").write_text(layout.to_json())
    flat = tmp_path / "evalcode"
    flat.mkdir()
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, layout.n_params)).astype(np.float32)
    errs = rng.random((5, 20)) < 0.3
    np.save(flat / "pdiff_weights.npy", w)
    np.save(flat / "pdiff_accs.npy", np.linspace(0.5, 0.9, 5))
    np.save(flat / "pdiff_incorrect_indices.npy", errs)
    np.save(flat / "train_weights.npy", w[:2] + 1)
    np.save(flat / "train_incorrect_indices.npy", errs[:2])
    with pytest.raises(BadInput, match="needs a layout"):
        db.ingest(flat)
    rep = db.ingest(flat, space=str(tmp_path / "layout.json"), kind="generated", zoo="paper")
    assert rep.ok() and rep.format == "flat" and rep.checkpoints_added == 7
    assert rep.spaces == ["paper"]
    ids = [db.checkpoint(f"pdiff_{i:05d}")["checkpoint_id"] for i in range(5)]
    assert np.array_equal(db.weights(ids), w)
    assert db.state_dict(ids[0])["fc.weight"].shape == (3, 4)
    # one eval set per zoo: training and generated error sets are comparable
    es = eval_set(db, "flat:paper")
    assert es["n_items"] == 20
    assert np.array_equal(error_masks(db, ids, es["id"]), errs)
    train_ids = [db.checkpoint(f"train_{i:05d}")["checkpoint_id"] for i in range(2)]
    assert np.array_equal(error_masks(db, train_ids, es["id"]), errs[:2])
    acc = db.sql("SELECT value FROM metrics WHERE checkpoint_id = :c", {"c": ids[4]})
    assert acc[0]["value"] == pytest.approx(0.9)
    assert {r["kind"] for r in db.runs()} == {"generated"}
    # the same again, naming the space instead of the layout file: nothing new
    again = db.ingest(flat, space="paper", kind="generated", zoo="paper")
    assert again.checkpoints_added == 0 and again.checkpoints_existing == 7 and again.ok()
    assert db.outputs_store.n_rows(f"errors/{es['id']}") == 7


def test_pdiff_partial_state_dicts(db, tmp_path: Path) -> None:
    folder = tmp_path / "pdiff_cifar"
    folder.mkdir()
    full = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).state_dict()
    partial = [k for k in full if k.startswith("1.")]
    want = {}
    for i in range(4):
        sd = {k: full[k] + (i if full[k].is_floating_point() else 0) for k in partial}
        torch.save(sd, folder / f"p_data_{i}.pth")
        want[i] = sd
    rep = db.ingest(folder)
    assert rep.ok() and rep.format == "pdiff" and rep.runs_added == 1
    sp = db.space(rep.spaces[0])
    assert list(sp.layout.names) == partial
    for i in range(4):
        assert_same_state(db.state_dict(db.checkpoint("pdiff_cifar", i)), want[i])
    # other names need --format pdiff; one run, steps from the names
    other = tmp_path / "other"
    other.mkdir()
    for i in (3, 5):
        torch.save(want[0], other / f"sample{i}.pth")
    rep = db.ingest(other, format="pdiff", zoo="pd2")
    assert rep.ok() and [c["step"] for c in db.checkpoints("run = 'pd2'")] == [3, 5]


def test_two_architectures_two_spaces(db, tmp_path: Path) -> None:
    zoo = tmp_path / "mixed"
    zoo.mkdir()
    for i in range(2):
        torch.save(torch.nn.Linear(3, 2).state_dict(), zoo / f"lin_{i}.pt")
        torch.save(torch.nn.Conv1d(1, 2, 3).state_dict(), zoo / f"conv_{i}.pt")
    rep = db.ingest(zoo)
    assert rep.ok() and rep.checkpoints_added == 4 and len(rep.spaces) == 2
    assert rep.spaces[0] == "mixed" and rep.spaces[1].startswith("mixed-")


def test_run_names_are_not_merged_across_zoos(db, tmp_path: Path) -> None:
    for name in ("zooA", "zooB"):
        (tmp_path / name).mkdir()
        torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / name / "model.pt")
    assert db.ingest(tmp_path / "zooA").checkpoints_added == 1
    rep = db.ingest(tmp_path / "zooB")
    assert rep.checkpoints_added == 0 and len(rep.skipped) == 1
    assert "already exists in zoo 'zooA'" in rep.skipped[0][1]
    # a changed file under the same run and step is a conflict, not an overwrite
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "zooA" / "model.pt")
    rep = db.ingest(tmp_path / "zooA")
    assert rep.skipped and "different content" in rep.skipped[0][1]
    assert db.sql("SELECT count(*) AS n FROM checkpoints")[0]["n"] == 1


def test_space_option_forces_the_layout(db, tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.mkdir()
    torch.save(torch.nn.Linear(3, 2).state_dict(), first / "a.pt")
    assert db.ingest(first, space="lin32").spaces == ["lin32"]
    second = tmp_path / "second"
    second.mkdir()
    torch.save(torch.nn.Linear(3, 2).state_dict(), second / "good.pt")
    torch.save(torch.nn.Linear(4, 2).state_dict(), second / "wide.pt")
    torch.save({"other": torch.zeros(2)}, second / "other.pt")
    rep = db.ingest(second, space="lin32")
    assert rep.checkpoints_added == 1 and rep.spaces == ["lin32"]
    reasons = {Path(f).name: why for f, why in rep.skipped}
    assert reasons == {
        "wide.pt": "shape mismatch: 'weight' is [2, 4], expected [2, 3]",
        "other.pt": "tensor names differ from the layout given with --space",
    }


def test_modelzoo_single_run_folder_with_ray_iterations(db, tmp_path: Path) -> None:
    run = tmp_path / "one_run"
    run.mkdir()
    (run / "params.json").write_text('{"seed": 7}')
    lines = []
    for it in (1, 2):
        (run / f"checkpoint_{it:06d}").mkdir()
        torch.save(torch.nn.Linear(2, 2).state_dict(), run / f"checkpoint_{it:06d}" / "checkpoints")
        lines.append(json.dumps({"training_iteration": it, "test_acc": 50.0 + it, "pid": 3}))
    (run / "result.json").write_text("\n".join(lines))
    rep = db.ingest(run)
    assert rep.ok() and rep.format == "modelzoo" and rep.checkpoints_added == 2
    acc = db.sql(
        "SELECT c.step, m.value FROM metrics m JOIN checkpoint_info c "
        "ON c.checkpoint_id = m.checkpoint_id WHERE m.name = 'accuracy' ORDER BY c.step"
    )
    assert [(r["step"], r["value"]) for r in acc] == [(1, 0.51), (2, 0.52)]
    assert not db.sql("SELECT * FROM metrics WHERE name = 'pid'")
