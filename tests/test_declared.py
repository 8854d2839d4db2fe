"""Declared parents (``wdb.ingest.declared``): ``--base``, Hugging Face ``config.json``
``_name_or_path``, PEFT ``adapter_config.json``; files made here by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from wdb.errors import BadInput


def _model(folder, seed: int, config: dict | None = None, name: str = "model.safetensors"):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    save_file(
        {
            "a.weight": rng.standard_normal((8, 4)).astype(np.float32),
            "b.weight": rng.standard_normal(8).astype(np.float32),
        },
        str(folder / name),
    )
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))


def _edges(db) -> dict[str, tuple[str, str]]:
    return {
        r["child_run"]: (r["parent_run"], r["reason"])
        for r in db.sql("SELECT child_run, parent_run, reason FROM lineage_info")
    }


def test_hf_name_or_path_and_peft_base_link_to_stored_runs(db, tmp_path):
    _model(tmp_path / "a" / "base", 0, {"model_type": "x"})
    db.ingest(tmp_path / "a" / "base")
    # a fine-tune naming its base as a hub id whose last part is the stored run
    _model(tmp_path / "b" / "tuned", 1, {"_name_or_path": "org/base"})
    # a fine-tune naming a base the store lacks: no parent
    _model(tmp_path / "c" / "stranger", 2, {"_name_or_path": "org/elsewhere"})
    # a PEFT adapter naming its base by path: a run named after its folder
    lora = tmp_path / "d" / "my_lora"
    lora.mkdir(parents=True)
    save_file(
        {"lora_A.weight": np.ones((2, 4), np.float32)}, str(lora / "adapter_model.safetensors")
    )
    (lora / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tmp_path / "a" / "base"), "r": 2})
    )
    for sub in ("b", "c", "d"):
        db.ingest(tmp_path / sub)
    edges = _edges(db)
    assert edges["tuned"] == ("base", "declared")
    assert "stranger" not in edges
    assert edges["my_lora"] == ("base", "declared")
    assert "adapter_model" not in {r["name"] for r in db.sql("SELECT name FROM runs")}


def test_base_option_cli_and_api(db, tmp_path):
    from click.testing import CliRunner

    from wdb.cli.main import cli

    _model(tmp_path / "a" / "base", 0)
    db.ingest(tmp_path / "a" / "base")
    _model(tmp_path / "b" / "ft", 1)
    out = CliRunner().invoke(
        cli, ["--db", str(db.path), "ingest", str(tmp_path / "b" / "ft"), "--base", "base:0"]
    )
    assert out.exit_code == 0, out.output
    _model(tmp_path / "c" / "ft2", 2)
    db.ingest(tmp_path / "c" / "ft2", base="base")
    edges = _edges(db)
    assert edges["ft"] == ("base", "declared") and edges["ft2"] == ("base", "declared")
    _model(tmp_path / "e" / "ft3", 3)
    with pytest.raises(BadInput, match="no such run"):
        db.ingest(tmp_path / "e" / "ft3", base="nothere")
    assert "ft3" not in {r["name"] for r in db.sql("SELECT name FROM runs")}
