"""The README runs as written: its tour, its shell lines and its SQL, on a fresh directory.

Each line of the tour's ``bash`` block is run as a command (comments stripped by ``shlex``), in
order, in an empty folder; interactive lines (``wdb shell``, ``duckdb``) get a statement on
standard input. Then each statement of the ``sql`` block must run through ``wdb sql`` and return
rows. A README edit that breaks a line fails here.
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

README = Path(__file__).resolve().parent.parent / "README.md"
BIN = Path(sys.executable).parent


def _blocks(lang: str, after: str) -> list[str]:
    text = README.read_text()
    text = text[text.index(after) :]
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


#: the tour's catalog: its own PostgreSQL database when the suite runs there (the per-test
#: catalog fixture is function-scoped, so a module's fixture must make its own)
_CATALOG: dict[str, str] = {}


def _run(line: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    argv = shlex.split(line, comments=True)
    exe = shutil.which(argv[0], path=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    assert exe, f"README names a program that the set-up does not install: {argv[0]}"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("WDB_DB", None)
    env.pop("WDB_CATALOG_URL", None)
    env.update(_CATALOG)
    return subprocess.run(
        [exe, *argv[1:]], cwd=cwd, env=env, input=stdin, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def toured(tmp_path_factory, request):
    """The tour, run line by line in an empty folder."""
    cwd = tmp_path_factory.mktemp("tour")
    server = name = None
    if ON_POSTGRES:
        server = request.getfixturevalue("pg_server")
        name = "t_" + os.urandom(6).hex()
        _CATALOG["WDB_CATALOG_URL"] = server.create(name)
    (tour,) = _blocks("bash", "## A tour")[:1]
    for line in filter(str.strip, tour.splitlines()):
        done = _run(line, cwd)
        assert done.returncode == 0, f"README line failed: {line}\n{done.stdout}\n{done.stderr}"
    yield cwd
    _CATALOG.clear()
    if server is not None:
        server.drop(name)


def test_tour_runs_and_does_what_it_says(toured):
    assert (toured / "w.safetensors").stat().st_size > 0
    runs = json.loads(_run("wdb ls runs --json", toured).stdout)
    names = {r["run"] for r in runs}
    assert "mnist-mlp-small-s0-0007" in names
    assert any(r["kind"] == "baseline" for r in runs)


def test_shell_lines_answer(toured):
    (shell,) = _blocks("bash", "## SQL, with DuckDB")[:1]
    for line in shell.strip().splitlines():
        if line.startswith("duckdb") and ON_POSTGRES:
            print("README's duckdb line skipped: the catalog is on PostgreSQL in this run")
            continue
        done = _run(line, toured, stdin="SELECT count(*) AS n FROM checkpoint_info;\n")
        assert done.returncode == 0, f"README line failed: {line}\n{done.stdout}\n{done.stderr}"
        counts = [int(n) for n in re.findall(r"\b\d+\b", done.stdout)]
        assert any(n >= 40 for n in counts), done.stdout  # 8 runs x 5 checkpoints, plus samples


def test_sql_examples_return_rows(toured):
    (sql,) = _blocks("sql", "## SQL, with DuckDB")[:1]
    statements = [s.strip() for s in sql.split(";") if s.strip()]
    assert len(statements) == 3
    for stmt in statements:
        done = _run(f"wdb sql --json -- {shlex.quote(stmt)}", toured)
        assert done.returncode == 0, f"README SQL failed: {stmt}\n{done.stderr}"
        assert json.loads(done.stdout), f"README SQL returned no rows: {stmt}"


def test_every_command_help_shows_an_example():
    from click.testing import CliRunner

    from wdb.cli.main import COMMANDS, cli

    for name in COMMANDS:
        out = CliRunner().invoke(cli, [name, "--help"]).output
        assert "Example: " in out and "wdb " in out.split("Example: ")[-1], name


#: --help examples that need more than the tour made (files of the user's, minutes of training):
#: checked to parse against the command's options, not run
_PARSE_ONLY = {"ingest", "ingest-outputs", "zoo", "analyze", "experiment", "reproduce", "demo"}


def test_every_help_example_runs_or_parses(toured, tmp_path, monkeypatch):
    """Each command's ``Example:`` line: run on the tour's database where the tour made what it
    needs, else parsed by the command (so a renamed option cannot hide in an epilog). Last in
    this module: tag, note and generate add to the tour's database."""
    from wdb.cli.main import EXAMPLES, cli

    monkeypatch.chdir(tmp_path)  # the paths the parse-only examples name, empty
    (tmp_path / "zoo").mkdir()
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "my_reader.py").touch()
    (tmp_path / "preds.npz").touch()
    for name, text in EXAMPLES.items():
        for line in (part.split("   (")[0].strip() for part in text.split("   |   ")):
            if name in _PARSE_ONLY:
                argv = shlex.split(line)[1:]
                while argv[0].startswith("--"):  # the group's own options (--db PATH)
                    argv = argv[2:]
                cmd = cli.get_command(None, argv[0])
                cmd.make_context(argv[0], argv[1:], resilient_parsing=False)
                continue
            if name == "init" or line.startswith("echo"):
                line = line.replace(" --db runs/.wdb", "")
                if line.startswith("echo"):
                    done = _run("wdb shell", toured, stdin="SELECT count(*) FROM runs;\n")
                else:
                    done = _run(line, toured)
            else:
                done = _run(line, toured)
            assert done.returncode == 0, f"--help example failed: {line}\n{done.stderr}"
