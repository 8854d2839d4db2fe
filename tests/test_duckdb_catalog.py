"""The DuckDB catalog as users open it: the README's `duckdb .wdb/catalog.duckdb` works with the
DuckDB CLI the set-up installs (an older DuckDB than the one wdb writes with), a catalog written
in the newer format is rewritten in place with nothing lost (also when killed midway), and a
writer blocked by a DuckDB session that is not wdb says who it is and what to do."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest
import torch

import wdb
from tests.conftest import ON_POSTGRES
from wdb.catalog import compat

pytestmark = pytest.mark.skipif(ON_POSTGRES, reason="DuckDB catalog files only")

BIN = Path(sys.executable).parent
WDB = BIN / "wdb"
DUCKDB_CLI = BIN / "duckdb"  # the duckdb-cli package, a dependency: next to wdb after set-up
VIEWS = ["checkpoint_info", "metrics_wide", "checkpoint_metrics", "latest_neighbors", "novelty"]


def make_zoo(root: Path, runs: int, steps: int, seed: int) -> int:
    g = torch.Generator().manual_seed(seed)
    for r in range(runs):
        (root / f"{root.name}_r{r}").mkdir(parents=True)
        for s in range(steps):
            sd = {"w": torch.randn(5, 3, generator=g), "b": torch.randn(5, generator=g)}
            torch.save(sd, root / f"{root.name}_r{r}" / f"step_{s}.pt")
    return runs * steps


def wdb_cli(*args: str, cwd: Path | None = None, wait: str = "60") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(WDB), "--wait", wait, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def tag(path: Path) -> str | None:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return compat.storage_tag(con)
    finally:
        con.close()


def snapshot(path: Path) -> dict:
    """Every table's and view's rows, each sequence's position, the views and constraints."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'main' ORDER BY 1"
            ).fetchall()
        ]
        out = {n: con.execute(f'SELECT * FROM "{n}" ORDER BY ALL').fetchall() for n in names}
        out["sequences"] = con.execute(
            "SELECT sequence_name, last_value FROM duckdb_sequences() ORDER BY 1"
        ).fetchall()
        out["views"] = con.execute(  # their text is re-printed (parentheses): their rows count
            "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1"
        ).fetchall()
        out["constraints"] = con.execute(
            "SELECT table_name, constraint_type, constraint_text FROM duckdb_constraints() "
            "ORDER BY ALL"
        ).fetchall()
        return out
    finally:
        con.close()


def old_catalog(tmp_path: Path, monkeypatch) -> Path:
    """A database whose catalog is in DuckDB 2's own storage format (as wdb wrote it before),
    holding runs, checkpoints, an eval set, metrics and a view of the user's own."""
    make_zoo(tmp_path / "zoo", 2, 3, seed=0)
    with monkeypatch.context() as m:  # the old way: a plain duckdb.connect
        m.setattr(compat, "create", lambda p: duckdb.connect(str(p)).close())
        m.setattr(compat, "too_new", lambda tag: False)
        d = wdb.open(tmp_path / "db")
    d.ingest(tmp_path / "zoo")
    d.sql(
        "INSERT INTO eval_sets (name, task, split, n_items) VALUES ('t', 'x', 'test', 4)",
        write=True,
    )
    (es,) = d.sql("SELECT id FROM eval_sets")
    ids = [r["checkpoint_id"] for r in d.checkpoints()]
    d.add_metrics(
        {"checkpoint_id": i, "eval_set_id": es["id"], "name": "accuracy", "value": i / 10}
        for i in ids
    )
    d.sql(
        "CREATE VIEW my_best AS SELECT * FROM checkpoint_metrics WHERE accuracy > 0.3", write=True
    )
    path = tmp_path / "db" / "catalog.duckdb"
    assert compat.too_new(tag(path)), tag(path)  # the precondition: older DuckDBs refuse it
    return path


def run_cli(db_dir_parent: Path, sql: str, *flags: str) -> subprocess.CompletedProcess:
    assert DUCKDB_CLI.exists(), f"{DUCKDB_CLI}: no DuckDB CLI next to wdb (duckdb-cli package)"
    return subprocess.run(
        [str(DUCKDB_CLI), *flags, ".wdb/catalog.duckdb"],
        cwd=db_dir_parent,
        input=sql,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_readme_duckdb_line_opens_a_catalog_wdb_wrote(tmp_path):
    n = make_zoo(tmp_path / "zoo", 2, 3, seed=1)
    r = wdb_cli("ingest", "zoo", cwd=tmp_path)  # the default database: ./.wdb
    assert r.returncode == 0, r.stderr
    assert not compat.too_new(tag(tmp_path / ".wdb" / "catalog.duckdb"))
    # `duckdb .wdb/catalog.duckdb`, as the README shows it, the statements on standard input
    sql = ".mode csv\n" + "".join(f"SELECT '{v}' AS v, count(*) AS n FROM {v};\n" for v in VIEWS)
    sql += "SELECT count(DISTINCT run) AS runs FROM checkpoint_info;\n"
    out = run_cli(tmp_path, sql)
    assert out.returncode == 0, out.stderr
    assert "Error" not in out.stdout + out.stderr, out.stdout + out.stderr
    lines = out.stdout.split()
    assert f"checkpoint_info,{n}" in lines and f"checkpoint_metrics,{n}" in lines
    for v in VIEWS:
        assert any(line.startswith(f"{v},") for line in lines), (v, out.stdout)
    assert lines[-2:] == ["runs", "2"]
    version = subprocess.run([str(DUCKDB_CLI), "--version"], capture_output=True, text=True)
    print("duckdb CLI", version.stdout.strip(), "| python duckdb", duckdb.__version__)
    # the CLI left the file in a state wdb goes on writing to
    make_zoo(tmp_path / "more", 1, 2, seed=2)
    r = wdb_cli("ingest", "more", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert wdb.open(tmp_path / ".wdb").sql("SELECT count(*) AS n FROM checkpoints")[0]["n"] == n + 2


def test_init_rewrites_a_newer_format_catalog_in_place(tmp_path, monkeypatch):
    path = old_catalog(tmp_path, monkeypatch)
    before = snapshot(path)
    assert len(before["metrics"]) == 6 and len(before["my_best"]) == 3
    # the DuckDB CLI the set-up installs refuses it, as users found
    r = subprocess.run(
        [str(DUCKDB_CLI), "-readonly", str(path), "-c", "SELECT count(*) FROM runs"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "version number" in r.stdout + r.stderr

    r = wdb_cli("--db", str(tmp_path / "db"), "init")
    assert r.returncode == 0, r.stderr
    assert not compat.too_new(tag(path)), tag(path)
    assert snapshot(path) == before  # every row, view, sequence and constraint
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith("catalog")) == [
        "catalog.duckdb"
    ]
    r = subprocess.run(
        [
            str(DUCKDB_CLI),
            "-readonly",
            "-csv",
            str(path),
            "-c",
            "SELECT count(*) AS n FROM my_best",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stdout.split() == ["n", "3"], r.stdout + r.stderr
    # the sequences go on where they were: new rows get new ids
    make_zoo(tmp_path / "more", 1, 2, seed=5)
    r = wdb_cli("--db", str(tmp_path / "db"), "ingest", str(tmp_path / "more"))
    assert r.returncode == 0, r.stderr
    d = wdb.open(tmp_path / "db")
    (c,) = d.sql("SELECT count(*) AS n, count(DISTINCT id) AS ids, max(id) AS top FROM checkpoints")
    assert c["n"] == c["ids"] == 8 and c["top"] == 8
    assert not compat.too_new(tag(path))  # writing keeps the file's format


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from wdb.catalog import compat

    real = os.replace
    def replace(src, dst):
        if sys.argv[2] == "after":
            real(src, dst)
        os.kill(os.getpid(), signal.SIGKILL)
    compat.os.replace = replace
    compat.rewrite(sys.argv[1])
    """
)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_rewrite_killed_at_the_swap_loses_nothing(tmp_path, monkeypatch, when):
    path = old_catalog(tmp_path, monkeypatch)
    before, digest = snapshot(path), sha(path)
    p = subprocess.run([sys.executable, "-c", KILLER, str(path), when], capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    if when == "before":  # killed with the copy written and synced, not yet swapped in
        assert sha(path) == digest and compat.too_new(tag(path))
        assert (path.parent / "catalog.duckdb.compat-tmp").exists()
    else:  # killed right after the swap: the new file is the whole catalog
        assert not compat.too_new(tag(path))
    assert snapshot(path) == before
    d = wdb.open(tmp_path / "db")  # the next open finishes the job and clears the leftovers
    assert not compat.too_new(tag(path))
    assert snapshot(path) == before
    assert not (path.parent / "catalog.duckdb.compat-tmp").exists()
    assert d.sql("SELECT count(*) AS n FROM my_best")[0]["n"] == 3


HOLDER = "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('open', flush=True); sys.stdin.read()"


@pytest.mark.parametrize("holder", ["python", "duckdb-cli"])
def test_a_foreign_duckdb_session_is_named_with_advice(tmp_path, holder):
    make_zoo(tmp_path / "zoo", 1, 2, seed=3)
    assert wdb_cli("ingest", "zoo", cwd=tmp_path).returncode == 0
    path = tmp_path / ".wdb" / "catalog.duckdb"
    if holder == "python":  # a notebook with the catalog open
        cmd = [sys.executable, "-c", HOLDER, str(path)]
    else:  # the README's DuckDB session, read-only, left open
        cmd = [str(DUCKDB_CLI), "-readonly", str(path)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        if holder == "python":
            assert proc.stdout.readline().strip() == "open"
        else:  # the CLI answers once it has the file open
            proc.stdin.write(".mode csv\nSELECT 41 + 1 AS x;\n")
            proc.stdin.flush()
            assert [proc.stdout.readline().strip() for _ in range(2)] == ["x", "42"]
        pids = {proc.pid, *_children(proc.pid)}  # duckdb-cli's wrapper runs the binary
        make_zoo(tmp_path / "more", 1, 2, seed=4)
        r = wdb_cli("ingest", "more", cwd=tmp_path, wait="1")
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert r.returncode != 0
    err = r.stderr
    assert any(f"held by pid {p}: " in err for p in pids), err
    assert "not wdb" in err and "wdb shell" in err and "duckdb -readonly" in err, err
    assert "PostgreSQL" in err, err
    if holder == "python":
        assert "import duckdb" in err  # its command line
    else:
        assert "-readonly" in err.split("not wdb")[0]
    assert err.strip().splitlines()[-1].startswith("error:") and "locked" in err
    # with the session closed the same command goes through
    r = wdb_cli("ingest", "more", cwd=tmp_path, wait="5")
    assert r.returncode == 0, r.stderr


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def test_a_newer_format_catalog_open_elsewhere_is_read_and_rewritten_later(tmp_path, monkeypatch):
    path = old_catalog(tmp_path, monkeypatch)
    # a notebook (same duckdb as wdb, so it reads the newer format) has it open, read-only
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
            "print('open', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        r = wdb_cli("--db", str(tmp_path / "db"), "ls", "runs", "--csv")
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert r.returncode == 0, r.stderr  # read, not blocked by the rewrite
    assert len(r.stdout.strip().splitlines()) == 3
    assert "note:" in r.stderr and "rewrites it" in r.stderr
    assert compat.too_new(tag(path))
    r = wdb_cli("--db", str(tmp_path / "db"), "ls", "runs", "--csv")
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
    assert not compat.too_new(tag(path))
