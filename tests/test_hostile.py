"""Hostile folders: damaged zips, hostile metadata, floods of problems, a full disk, a denied
permission and Ctrl-C, each refused or stopped in one line, the store consistent after."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch

import wdb
from wdb.cli.store import SHOW_PROBLEMS
from wdb.errors import BadInput
from wdb.files import torch as wtorch
from wdb.files.checkpoint import META_ITEMS, read_checkpoint

WDB = Path(sys.executable).with_name("wdb")


def _member_offset(path: Path, name: str) -> int:
    """Where a zip member's bytes start in the file."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    data = path.read_bytes()
    lname, lextra = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    return info.header_offset + 30 + lname + lextra


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def test_flipped_byte_in_a_zip_member_is_refused_naming_the_member(tmp_path: Path) -> None:
    f = tmp_path / "w.pt"
    torch.save({"w": torch.arange(64, dtype=torch.float32)}, f)
    _flip(f, _member_offset(f, "w/data/0") + 17)
    loaded = torch.load(f, weights_only=True)  # torch itself does not notice
    assert not torch.equal(loaded["w"], torch.arange(64, dtype=torch.float32))
    with pytest.raises(BadInput, match=r"zip member 'w/data/0' fails its CRC-32 check"):
        read_checkpoint(f)


def test_torch_load_fallback_checks_crcs_before_torch_sees_the_file(
    tmp_path: Path, monkeypatch
) -> None:
    """A file the fast reader declines (here: a dtype object in the bundle) goes to
    ``torch.load`` only after every member matched its CRC-32."""
    f = tmp_path / "bundle.pt"
    torch.save({"state_dict": {"w": torch.ones(32)}, "dtype": torch.float16}, f)
    assert read_checkpoint(f).arrays["w"].sum() == 32  # sound: accepted by the fallback
    _flip(f, _member_offset(f, "bundle/data/0") + 5)

    def decline(path):
        raise wtorch._Decline("forced")  # as if the fast reader gave up before any CRC

    monkeypatch.setattr(wtorch, "fast_torch_load", decline)
    with pytest.raises(BadInput, match=r"zip member 'bundle/data/0' fails its CRC-32 check"):
        read_checkpoint(f)


def test_damaged_zip_in_a_folder_is_one_skipped_line(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for i in range(3):
        torch.save({"w": torch.full((8,), float(i))}, zoo / f"s{i}.pt")
    _flip(zoo / "s1.pt", _member_offset(zoo / "s1.pt", "s1/data/0") + 3)
    rep = wdb.open(tmp_path / "db").ingest(zoo)
    assert rep.checkpoints_added == 2
    ((src, why),) = rep.skipped
    assert src.endswith("s1.pt") and "'s1/data/0' fails its CRC-32" in why


def _hostile_meta() -> dict:
    itself: list = []
    itself.append(itself)
    nested: list = []
    cur = nested
    for _ in range(40):  # 40 levels, each also holding the outermost list
        nxt: list = [nested]
        cur.append(nxt)
        cur = nxt
    shared: dict = {"leaf": 1.5}
    for _ in range(20):  # 2^20 paths to the leaf through shared references
        shared = {"a": shared, "b": shared}
    wide: list = [0.5] * 100
    for _ in range(4):  # 100^4 values through references, 5 objects in the pickle
        wide = [wide] * 100
    return {"itself": itself, "nested": nested, "shared": shared, "wide": wide, "note": "ok"}


def test_hostile_metadata_is_kept_cut_short_with_notes(tmp_path: Path) -> None:
    f = tmp_path / "meta.pt"
    torch.save({"state_dict": {"w": torch.ones(4)}, **_hostile_meta()}, f)
    got = read_checkpoint(f)
    text = json.dumps(got.meta)
    assert len(text) < 4 * META_ITEMS * 20  # bounded by the limits, not by the references
    assert got.meta["note"] == "ok"
    assert got.meta["itself"] == [{"_truncated": "refers to itself"}]
    assert "depth > 8" in text and "refers to itself" in text
    assert set(got.meta["_truncated"]) >= {"depth > 8", "refers to itself"}
    assert any(n.startswith("more than") for n in got.meta["_truncated"])  # "wide" hit the cap
    depth, node = 0, got.meta["shared"]
    while isinstance(node, dict) and "a" in node:
        node, depth = node["a"], depth + 1
    assert depth == 8 and node == {"_truncated": "depth > 8"}
    assert got.arrays["w"].tolist() == [1.0] * 4


def test_hostile_metadata_ingests_and_is_stored(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    torch.save({"w": torch.ones(4), **_hostile_meta()}, zoo / "m.pt")
    db = wdb.open(tmp_path / "db")
    assert db.ingest(zoo).checkpoints_added == 1
    (row,) = db.sql("SELECT meta FROM checkpoints")
    meta = json.loads(row["meta"])
    assert meta["note"] == "ok" and "refers to itself" in meta["_truncated"]


def _cli(db: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(WDB), "--db", str(db), *args], capture_output=True, text=True, timeout=300, **kw
    )


def test_a_million_problems_print_a_capped_list_and_a_count(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    torch.save({"w": torch.ones(4)}, zoo / "real.pt")
    n = 5000
    (zoo / "manifest.csv").write_text(
        "file,run,step\n" + "".join(f"gone_{i}.pt,r,{i}\n" for i in range(n))
    )
    res = _cli(tmp_path / "db", "ingest", str(zoo))
    assert res.returncode == 3
    lines = res.stderr.splitlines()
    assert len(lines) == SHOW_PROBLEMS + 1, lines[:3]
    assert all(ln.startswith("skipped ") and "missing" in ln for ln in lines[:-1])
    assert lines[-1] == f"... and {n - SHOW_PROBLEMS:,} more problems; --json lists them all"
    res = _cli(tmp_path / "db", "ingest", str(zoo), "--json")
    (out,) = json.loads(res.stdout)
    assert len(out["problems"]) == out["skipped"] == n
    assert {p["file"] for p in out["problems"]} == {str(zoo / f"gone_{i}.pt") for i in range(n)}


# Runs the CLI in a subprocess with one fault injected: the second write of weight bytes fails
# with the given errno, or every read of a checkpoint is slowed down (for a Ctrl-C from outside).
FAULTY = textwrap.dedent(
    """
    import errno, os, signal, sys, time
    from wdb.store.arrays import ArrayStore

    # a terminal's Ctrl-C: the process starts with Python's own SIGINT handler even when the
    # test process (pytest, after a library left SIGINT ignored) would pass SIG_IGN down
    signal.signal(signal.SIGINT, signal.default_int_handler)

    fault = os.environ["FAULT"]
    orig_write, state = ArrayStore.write, {"n": 0}

    def write(self, path, start, rows):
        if path.startswith("spaces/"):
            state["n"] += 1
            if fault != "slow" and state["n"] == 2:
                code = getattr(errno, fault)
                raise OSError(code, os.strerror(code), os.path.join("weights.zarr", path))
        return orig_write(self, path, start, rows)

    ArrayStore.write = write
    if fault == "slow":
        import ingest.folder
        orig_load = ingest.folder.read_checkpoint

        def slow(path):  # long enough that a loaded machine's Ctrl-C lands mid-ingest, even
            time.sleep(0.2)  # with the next files read ahead while this one is written
            return orig_load(path)

        ingest.folder.read_checkpoint = slow
    from wdb.cli.main import cli
    cli(prog_name="wdb")
    """
)


def _zoo(root: Path) -> dict:
    want = {}
    for r in range(4):
        (root / f"run{r}").mkdir(parents=True)
        for s in range(6):
            sd = {"w": torch.randn(8, 16), "b": torch.randn(8)}
            torch.save(sd, root / f"run{r}" / f"step_{s}.pt")
            want[(f"run{r}", s)] = sd
    return want


def _consistent_then_resumed(db_path: Path, zoo: Path, want: dict) -> None:
    """After the stop: fsck clean, rows stored so far intact; a rerun stores the rest."""
    res = _cli(db_path, "fsck")
    assert res.returncode == 0, res.stdout + res.stderr
    db = wdb.open(db_path)
    n_before = len(db.checkpoints())
    assert n_before < len(want)
    res = _cli(db_path, "ingest", str(zoo), "--json")
    assert res.returncode == 0, res.stderr
    (out,) = json.loads(res.stdout)
    assert out["checkpoints_added"] == len(want) - n_before
    assert out["already_stored"] == n_before
    rows = db.checkpoints()
    assert len(rows) == len(want)
    for c in rows:
        got = db.state_dict(c)
        assert all(torch.equal(got[k], v) for k, v in want[(c["run"], c["step"])].items())
    assert _cli(db_path, "fsck").returncode == 0


@pytest.mark.parametrize("fault,words", [("ENOSPC", "disk full"), ("EACCES", "permission denied")])
def test_disk_full_or_denied_ends_in_one_line(tmp_path: Path, fault: str, words: str) -> None:
    zoo, db_path = tmp_path / "zoo", tmp_path / "db"
    want = _zoo(zoo)
    env = {**os.environ, "FAULT": fault, "WDB_INGEST_BATCH": "4"}
    res = subprocess.run(
        [sys.executable, "-c", FAULTY, "--db", str(db_path), "ingest", str(zoo)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 1, res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"error: ingest of {zoo} stopped: {words} (")
    assert "nothing stored was lost (4 new checkpoints committed" in line
    assert "rerun the same `wdb ingest`" in line
    _consistent_then_resumed(db_path, zoo, want)


def test_ctrl_c_ends_in_one_line_and_a_rerun_resumes(tmp_path: Path) -> None:
    zoo, db_path = tmp_path / "zoo", tmp_path / "db"
    want = _zoo(zoo)
    wdb.open(db_path)
    env = {**os.environ, "FAULT": "slow", "WDB_INGEST_BATCH": "4"}
    proc = subprocess.Popen(
        [sys.executable, "-c", FAULTY, "--db", str(db_path), "ingest", str(zoo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches it
    )
    deadline = time.monotonic() + 120
    while not any((db_path / "weights.zarr").rglob("c/*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    (line,) = err.splitlines()
    assert line.startswith(
        f"ingest of {zoo} stopped: interrupted (Ctrl-C); nothing stored was lost"
    )
    assert "rerun the same `wdb ingest`" in line
    _consistent_then_resumed(db_path, zoo, want)


def test_a_ctrl_c_that_duckdb_turned_into_its_error_is_still_a_ctrl_c() -> None:
    """SIGINT during a DuckDB call comes back as "Query interrupted" (seen in CI: the signal
    landed in ``connection.begin()``); the ingest still ends as a Ctrl-C, in one line, exit 130."""
    from wdb.ingest.stops import IngestInterrupted, explained

    stopped = "stopped: interrupted \\(Ctrl-C\\)"
    with pytest.raises(IngestInterrupted, match=stopped) as got, explained("zoo", lambda: 2):
        try:
            raise RuntimeError("Query interrupted")
        except RuntimeError as exc:
            raise RuntimeError("catalog write failed") from exc
    assert got.value.exit_code == 130
    with pytest.raises(RuntimeError, match="a bug"), explained("zoo", lambda: 0):
        raise RuntimeError("a bug")


def test_stop_causes_are_recognised_through_wrapping() -> None:
    from wdb.ingest.stops import stop_cause

    def wrapped(inner: BaseException) -> Exception:
        try:
            try:
                raise inner
            except BaseException as exc:
                raise RuntimeError("catalog write failed") from exc
        except RuntimeError as outer:
            return outer

    assert stop_cause(wrapped(OSError(errno.ENOSPC, "No space left on device"))).startswith(
        "disk full"
    )
    assert stop_cause(wrapped(OSError(errno.EPERM, "Operation not permitted"))).startswith(
        "permission denied"
    )
    assert stop_cause(RuntimeError("IO Error: No space left on device")).startswith("disk full")
    assert stop_cause(ValueError("a bug")) is None
