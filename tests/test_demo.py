"""The CLI of the analyses and the demo pipeline's reuse / graceful degradation (fast parts only;
the full demo trains zoos and generators for minutes and is run by `make demo`)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from analyses import demo, synthetic
from tests.conftest import ON_POSTGRES
from wdb.cli.main import cli


def test_analyze_list_names_the_builtin_spec(tmp_path):
    res = CliRunner().invoke(cli, ["--db", str(tmp_path / "db"), "analyze", "--list", "--json"])
    assert res.exit_code == 0, res.output
    names = [r["name"] for r in json.loads(res.stdout)]
    assert "memorization" in names


def test_analyze_cli_materialises_tables_and_report(tmp_path):
    import wdb

    db = wdb.open(tmp_path / "db")
    synthetic.build(db, n_train=10, n_gen=6, n_base=5)
    out = tmp_path / "rep"
    res = CliRunner().invoke(
        cli,
        [
            "--db",
            str(tmp_path / "db"),
            "analyze",
            "memorization",
            "--method",
            "toygen",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    tables = {r["table"] for r in json.loads(res.stdout)}
    assert "a_memorization_toygen_min_l2_hist" in tables
    assert (out / "index.html").exists() and (out / "summary.md").exists()
    rec = json.loads((out / "memorization_toygen.json").read_text())
    # the toy space has no registered task: decision regions are skipped with the reason
    assert any(s["name"] == "boundary" and "task" in s["why"] for s in rec["skipped"])
    n = db.sql("SELECT count(*) AS n FROM a_memorization_toygen_novelty")[0]["n"]
    assert n == 10 + 6 + 5 * 4


def test_analyze_without_samples_says_so(tmp_path):
    import wdb

    res = CliRunner().invoke(cli, ["--db", str(tmp_path / "db"), "analyze", "memorization"])
    assert res.exit_code != 0
    if not ON_POSTGRES:  # a PostgreSQL catalog exists without the folder
        assert "no wdb database here" in res.output
    assert not (tmp_path / "db").exists()  # a read-only command never creates one
    wdb.open(tmp_path / "db")
    res = CliRunner().invoke(cli, ["--db", str(tmp_path / "db"), "analyze", "memorization"])
    assert res.exit_code != 0
    assert "no generator or baseline run with samples" in res.output


def test_demo_skips_a_missing_method_and_still_writes_the_report(tmp_path):
    import wdb

    db = wdb.open(tmp_path / "db")
    res = demo.demo(db, methods=["nosuch"], size="quick", out=tmp_path / "rep", quiet=True)
    assert res["outcome"]["nosuch"].startswith(
        "skipped: generator 'nosuch' unavailable: unknown generator"
    )
    assert res["outcome"]["experiment symmetry"].startswith("skipped")
    assert (tmp_path / "rep" / "summary.md").read_text().count("## Finding") == 6


def test_demo_baselines_are_reused_on_rerun(tmp_path):
    import wdb

    db = wdb.open(tmp_path / "db")
    synthetic.build(db, n_train=12, n_gen=4, n_base=4)
    plan = demo.plan("pdiff", "quick")
    log = demo.Log(quiet=True)
    sel = "zoo = 'toy' AND kind = 'training'"
    first = demo.ensure_baselines(db, "pdiff", plan, sel, gid=1, log=log)
    second = demo.ensure_baselines(db, "pdiff", plan, sel, gid=1, log=log)
    assert first == second and len(first) == 4  # noise σ1, σ2, average, gaussian
    methods = [
        r["method"]
        for r in db.sql(
            "SELECT method FROM generator_runs WHERE train_selection = :s ORDER BY id", {"s": sel}
        )
    ]
    assert methods == ["noise", "noise", "average", "gaussian"]
    cfg = json.loads(
        db.sql(f"SELECT config FROM generator_runs WHERE id = {first[0]}")[0]["config"]
    )
    assert cfg["sigma"] == 0.06 and cfg["select"] == "all"
