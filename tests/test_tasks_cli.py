"""The CLI of tasks: ``wdb zoo list|train`` and ``wdb evaluate``."""

from __future__ import annotations

import json

from click.testing import CliRunner

from wdb.cli.main import cli


def test_zoo_train_ingest_evaluate_cli(tmp_path):
    runner = CliRunner()
    db = str(tmp_path / "db")
    res = runner.invoke(cli, ["zoo", "list", "--json"])
    assert res.exit_code == 0, res.output
    listed = {r["task"]: r for r in json.loads(res.output)}
    assert listed["mnist-mlp"]["params"] == 7960 and listed["mnist-bn"]["params"] == 512

    out = tmp_path / "zoo"
    res = runner.invoke(
        cli, ["zoo", "train", "mnist-mlp", "--out", str(out), "--size", "small", "--runs", "3"]
    )
    assert res.exit_code == 0, res.output
    assert str(out) in res.output and "wdb ingest" in res.output
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 3 * 5

    assert runner.invoke(cli, ["--db", db, "ingest", str(out)]).exit_code == 0
    res = runner.invoke(cli, ["--db", db, "evaluate", "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.output)
    assert row["task"] == "mnist-mlp" and row["evaluated"] == 15 and row["skipped"] == 0
    assert 0.1 < row["mean_accuracy"] <= 1
    res = runner.invoke(cli, ["--db", db, "evaluate", "--json", "--where", "step = 0"])
    (row,) = json.loads(res.output)
    assert row["evaluated"] == 0 and row["skipped"] == 3

    res = runner.invoke(cli, ["--db", db, "evaluate", "--task", "nope"])
    assert res.exit_code != 0 and "'nope' is not one of mnist-bn" in res.output
    res = runner.invoke(cli, ["zoo", "train", "mnist-mlp", "--out", str(out), "--size", "huge"])
    assert res.exit_code != 0
