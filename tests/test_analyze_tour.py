"""`wdb analyze` on the README tour's database: it analyses what there is and says what is missing.

The state is the tour's (the commands of tests/test_readme.py, up to `generate noise`): a small
mnist-mlp zoo, evaluated, then 100 noise samples that are not evaluated yet. No generator has
run, so the noise baseline is analysed in its place, marked as a baseline, and every empty column,
figure group and selection names the command that fills it. Then the command the error message
suggests for a generator is run as printed, and the next analysis is of that generator.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ON_POSTGRES

BIN = Path(sys.executable).parent

TOUR = [
    "wdb init",
    "wdb zoo train mnist-mlp --out zoo/ --size small",
    "wdb ingest zoo/",
    "wdb evaluate",
    "wdb generate noise --train \"zoo = 'zoo' AND kind = 'training'\" --set sigma=0.05",
]


@pytest.fixture(scope="module")
def tour(tmp_path_factory, request):
    """The tour's database, on PostgreSQL when the suite runs there (one database, made here:
    the per-test catalog fixture is function-scoped)."""
    cwd = tmp_path_factory.mktemp("analyze-tour")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", WDB_PROGRESS="0")
    env.pop("WDB_DB", None)
    env.pop("WDB_CATALOG_URL", None)
    server = name = None
    if ON_POSTGRES:
        server = request.getfixturevalue("pg_server")
        name = "t_" + os.urandom(6).hex()
        env["WDB_CATALOG_URL"] = server.create(name)

    def run(line: str) -> subprocess.CompletedProcess:
        argv = shlex.split(line)
        exe = shutil.which(argv[0], path=env["PATH"])
        return subprocess.run(
            [exe, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
        )

    for line in TOUR:
        done = run(line)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
    yield cwd, run
    if server is not None:
        server.drop(name)


def _notes(stderr: str) -> list[str]:
    return [ln[len("note: ") :] for ln in stderr.splitlines() if ln.startswith("note: ")]


def test_baselines_are_analysed_when_no_generator_ran_and_gaps_say_what_to_run(tour):
    cwd, run = tour
    done = run("wdb analyze memorization --out rep1 --json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert {r["method"] for r in rows} == {"noise"}
    assert {r["samples"] for r in rows} == {"baseline"}  # marked as a baseline in the table
    notes = _notes(done.stderr)
    text = "\n".join(notes)
    # why the baseline stands in, and the commands that give a generator's samples
    assert "analysed in their place" in text
    assert "wdb generate pdiff --train \"zoo = 'zoo' AND kind = 'training'\"" in text
    # the samples are not evaluated: accuracy and max IoU are empty, and the note says so
    assert re.search(r"generated: 100 of 100 have no accuracy.*`wdb evaluate`", text), text
    # the accuracy-novelty figure lacks the samples and the other noise levels, each explained
    lacks = [n for n in notes if "figure accuracy_novelty lacks" in n]
    assert any("lacks generated" in n and "wdb evaluate" in n for n in lacks), lacks
    assert any("lacks noise_1" in n and "wdb generate noise" in n for n in lacks), lacks

    html = (cwd / "rep1" / "index.html").read_text()
    assert "noise (a baseline, analysed as if it were a generator)" in html
    assert "noise σ=0.05 samples (baseline)" in html  # the group's label in figure legends
    assert "not shown: generated" in html and "wdb evaluate" in html
    summary = (cwd / "rep1" / "summary.md").read_text()
    assert "baselines analysed on their own (not part of any finding): noise" in summary
    rec = json.loads((cwd / "rep1" / "memorization_noise.json").read_text())
    assert rec["context"]["baseline"] is True
    assert rec["selection_counts"]["generated"] == 100
    # the novelty table's empty columns are exactly the unevaluated samples'
    out = run(
        'wdb sql --json "SELECT selection, count(*) AS n, count(accuracy) AS acc '
        'FROM a_memorization_noise_novelty GROUP BY selection ORDER BY selection"'
    )
    got = {r["selection"]: (r["n"], r["acc"]) for r in json.loads(out.stdout)}
    assert got["generated"] == (100, 0) and got["training"][0] == got["training"][1] > 0


def test_the_suggested_generator_command_runs_and_is_analysed_next(tour):
    cwd, run = tour
    done = run("wdb analyze memorization --method pdiff --out rep2")
    assert done.returncode != 0
    line = done.stderr.strip().splitlines()[-1]
    assert "no finished generator run of method 'pdiff'" in line
    cmd = re.search(r"`(wdb generate pdiff [^`]+)`", line)
    assert cmd, line
    for step in (cmd.group(1), "wdb evaluate"):
        made = run(step)
        assert made.returncode == 0, f"{step}\n{made.stderr}"
    done = run("wdb analyze memorization --out rep2 --json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert {(r["method"], r["samples"]) for r in rows} == {("pdiff", "generated")}
    text = "\n".join(_notes(done.stderr))
    assert "have no accuracy" not in text  # everything is evaluated now
    rec = json.loads((cwd / "rep2" / "memorization_pdiff.json").read_text())
    assert rec["context"]["baseline"] is False
    assert rec["selection_counts"]["noise_1"] == 100  # the tour's noise run is its comparison
    assert "noise_2" in rec["empty_selections"]
    assert "sigma=" in rec["empty_selections"]["noise_2"]


def test_nothing_to_analyse_names_the_first_step(tmp_path):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("WDB_DB", None)
    wdb = shutil.which("wdb", path=env["PATH"])
    assert subprocess.run([wdb, "init"], cwd=tmp_path, env=env).returncode == 0
    done = subprocess.run(
        [wdb, "analyze", "memorization"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "no generator or baseline run with samples" in done.stderr
    assert "wdb zoo train mnist-mlp" in done.stderr
