"""``wdb shell``: statements from a pipe run as they arrive, read-only, while an ingest lands
between them (the shell holds no lock while it waits); the interactive prompt completes names
and keeps a history."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import wdb
from wdb.cli import shell as shell_mod

WDB = Path(sys.executable).with_name("wdb")


def make_zoo(root: Path, runs: int, steps: int, seed: int) -> int:
    g = torch.Generator().manual_seed(seed)
    for r in range(runs):
        (root / f"{root.name}_r{r}").mkdir(parents=True)
        for s in range(steps):
            sd = {"w": torch.randn(4, 3, generator=g)}
            torch.save(sd, root / f"{root.name}_r{r}" / f"step_{s}.pt")
    return runs * steps


def ingest(db: Path, zoo: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(WDB), "--db", str(db), "--wait", "10", "ingest", str(zoo)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_shell_on_a_pipe_runs_statements_while_an_ingest_lands(tmp_path):
    db = tmp_path / "db"
    n = make_zoo(tmp_path / "zoo", 2, 2, seed=0)
    assert ingest(db, tmp_path / "zoo").returncode == 0
    sh = subprocess.Popen(
        [str(WDB), "--db", str(db), "--wait", "10", "shell", "--csv"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # a statement split over two lines, with a ';' inside a string
        sh.stdin.write("SELECT count(*) AS n, 'a;b' AS s\nFROM checkpoint_info;\n")
        sh.stdin.flush()
        assert [sh.stdout.readline().strip() for _ in range(2)] == ["n,s", f"{n},a;b"]
        # the shell is open and waiting for its next statement: an ingest goes through
        m = make_zoo(tmp_path / "more", 1, 3, seed=1)
        r = ingest(db, tmp_path / "more")
        assert r.returncode == 0, r.stderr
        assert "waiting" not in r.stderr
        sh.stdin.write("SELECT count(*) AS n FROM checkpoints; SELECT count(*) AS runs FROM runs\n")
        sh.stdin.flush()
        assert [sh.stdout.readline().strip() for _ in range(2)] == ["n", str(n + m)]
        # stdin closed: the last statement has no ';' and runs at the end of input
        out, err = sh.communicate(timeout=60)
    finally:
        if sh.poll() is None:
            sh.kill()
    assert sh.returncode == 0, err
    assert out.split() == ["runs", "3"]


def test_shell_is_read_only_and_goes_on_after_an_error(tmp_path):
    db = tmp_path / "db"
    make_zoo(tmp_path / "zoo", 1, 2, seed=2)
    assert ingest(db, tmp_path / "zoo").returncode == 0
    r = subprocess.run(
        [str(WDB), "--db", str(db), "shell", "--json"],
        input="DELETE FROM checkpoints;\n.tables\nSELECT count(*) AS n FROM checkpoints;\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1  # one statement failed
    assert "SQL failed" in r.stderr
    assert '"name": "checkpoint_info"' in r.stdout and '"kind": "view"' in r.stdout
    assert '"n": 2' in r.stdout
    assert wdb.open(db).sql("SELECT count(*) AS n FROM checkpoints")[0]["n"] == 2


def test_splitter_keeps_quotes_and_comments_together():
    s = shell_mod.Splitter()
    assert s.feed("SELECT 'x;\n") == []  # an open string: the statement goes on
    assert s.feed("y' AS a; SELECT 2 -- c;\n") == ["SELECT 'x;\ny' AS a"]
    assert s.feed("/* ; */ ;\n") == ["SELECT 2 -- c;\n/* ; */"]
    assert s.feed("SELECT $$;$$;") == ["SELECT $$;$$"]
    assert s.rest() == ""


def test_interactive_prompt_completes_names_and_keeps_history(tmp_path, capsys, monkeypatch):
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.wdb_history, for a PostgreSQL catalog
    db_dir = tmp_path / "db"
    make_zoo(tmp_path / "zoo", 1, 2, seed=3)
    assert ingest(db_dir, tmp_path / "zoo").returncode == 0
    d = wdb.open(db_dir)

    comp = shell_mod.completer(d)

    def words(text: str) -> set[str]:
        return {c.text for c in comp.get_completions(Document(text), CompleteEvent())}

    assert {"checkpoint_info", "checkpoint_metrics", "checkpoints"} <= words("SELECT * FROM checkp")
    assert "sha256" in words("SELECT sha2")  # a column
    assert "latest_neighbors" in words("SELECT * FROM latest_")  # a view

    sh = shell_mod.Shell(d, "csv")
    with create_pipe_input() as inp:
        inp.send_text("SELECT count(*)\n")
        inp.send_text("AS n FROM runs;\n")
        inp.send_text(".quit\n")
        shell_mod.interactive(sh, lambda **kw: PromptSession(input=inp, output=DummyOutput(), **kw))
    assert capsys.readouterr().out.split() == ["n", "1"]
    history = shell_mod.history_path(d).read_text()
    assert "SELECT count(*)" in history and "AS n FROM runs;" in history


def test_export_tables_writes_every_table_and_view_as_parquet(tmp_path):
    import duckdb

    db = tmp_path / "db"
    n = make_zoo(tmp_path / "zoo", 2, 2, seed=4)
    assert ingest(db, tmp_path / "zoo").returncode == 0
    r = subprocess.run(
        [str(WDB), "--db", str(db), "export-tables", str(tmp_path / "out"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    d = wdb.open(db)
    names = {x["name"] for x in shell_mod.names(d)}
    files = {p.stem for p in (tmp_path / "out").iterdir()}
    assert files == names and {"checkpoints", "checkpoint_info", "novelty"} <= files
    mem = duckdb.connect()
    for name in names:
        (k,) = mem.execute(
            "SELECT count(*) FROM read_parquet(?)", [str(tmp_path / "out" / f"{name}.parquet")]
        ).fetchone()
        assert k == d.sql(f"SELECT count(*) AS n FROM {name}")[0]["n"], name
    got = mem.execute(
        "SELECT run, step, sha256 FROM read_parquet(?) ORDER BY ALL",
        [str(tmp_path / "out" / "checkpoint_info.parquet")],
    ).fetchall()
    want = [(x["run"], x["step"], x["sha256"]) for x in d.checkpoints()]
    assert got == sorted(want) and len(got) == n
