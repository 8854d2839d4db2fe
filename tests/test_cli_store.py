"""The store's CLI: listings, JSON/CSV output, read-only SQL, exports, errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from wdb.cli.main import cli
from wdb.store.spaces import Layout
from wdb.store.tensors import state_to_numpy


@pytest.fixture
def filled(db):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    states = []
    for _ in range(3):
        for p in net.parameters():
            p.data.add_(0.1 * torch.randn_like(p))
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    arrays = [state_to_numpy(s)[0] for s in states]
    layout = Layout.from_arrays(arrays[0])
    rows = np.stack([layout.flatten(a) for a in arrays])
    db.add_checkpoints(
        layout,
        rows,
        run="train_0001",
        kind="training",
        zoo="toy",
        metrics=[{"accuracy": 0.5 + 0.1 * i} for i in range(3)],
    )
    return db, states


def run(db, *args):
    result = CliRunner().invoke(cli, ["--db", str(db.path), *args])
    return result


def test_ls_checkpoints_json_has_the_public_keys(filled):
    db, _ = filled
    res = run(db, "ls", "checkpoints", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert len(data) == 3
    assert {"checkpoint_id", "run", "step", "kind", "space"} <= set(data[0])
    assert [d["step"] for d in data] == [0, 1, 2]


def test_ls_where_and_csv(filled):
    db, _ = filled
    res = run(db, "ls", "checkpoints", "--where", "step >= 1", "--csv")
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("checkpoint_id,run,step")
    assert len(lines) == 3
    res = run(db, "ls", "runs", "--json")
    assert json.loads(res.output)[0]["checkpoints"] == 3


def test_show_pivots_metrics(filled):
    db, _ = filled
    res = run(db, "show", "train_0001", "--json")
    data = json.loads(res.output)
    assert [round(d["accuracy"], 6) for d in data] == [0.5, 0.6, 0.7]


def test_sql_is_read_only_unless_write(filled):
    db, _ = filled
    res = run(db, "sql", "SELECT count(*) AS n FROM checkpoints", "--json")
    assert json.loads(res.output) == [{"n": 3}]
    res = run(db, "sql", "DELETE FROM checkpoints")
    assert res.exit_code != 0
    assert "read-only" in res.output.lower()
    assert len(db.checkpoints()) == 3
    res = run(db, "sql", "--write", "UPDATE runs SET zoo = 'renamed'")
    assert res.exit_code == 0, res.output
    assert db.runs()[0]["zoo"] == "renamed"


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_export_is_bit_identical(filled, tmp_path, fmt):
    db, states = filled
    out = tmp_path / f"x.{fmt}"
    res = run(db, "export", "train_0001", "--step", "1", "--format", fmt, "--out", str(out))
    assert res.exit_code == 0, res.output
    got = load_file(out) if fmt == "safetensors" else torch.load(out, weights_only=True)
    assert set(got) == set(states[1])
    for k, v in states[1].items():
        assert torch.equal(got[k], v)


def test_unknown_run_is_one_line_error(filled):
    db, _ = filled
    res = run(db, "export", "nope", "--out", "x.pt")
    assert res.exit_code == 1
    assert res.output.strip() == "error: run 'nope' not found (see `wdb ls runs`)"


def test_listing_does_not_import_torch_or_faiss(filled):
    db, _ = filled
    code = (
        "import sys; from wdb.cli.main import cli\n"
        "try:\n"
        f"    cli(['--db', {str(db.path)!r}, 'ls', 'checkpoints', '--json'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules and 'faiss' not in sys.modules, 'heavy import'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["run"] == "train_0001"
