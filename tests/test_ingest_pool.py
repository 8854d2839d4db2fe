"""Ingest with reader processes: the same catalog and bytes as reading in the writer, bad files
skipped with the same lines, Lightning-style numbers adopted the same way."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import wdb
from tests.conftest import ON_POSTGRES
from wdb.ingest import pool as importer
from wdb.ingest.readers import Found


def make_zoo(root, n_runs: int = 8, epochs: int = 10) -> None:
    g = torch.Generator().manual_seed(0)
    for r in range(n_runs):
        d = root / f"run_{r}"
        d.mkdir(parents=True)
        state = {
            "fc.weight": torch.randn(6, 5, generator=g),
            "fc.bias": torch.randn(6, generator=g),
        }
        for e in range(epochs):
            state = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in state.items()}
            if r == 0:  # a Lightning-shaped bundle: its numbers become metrics
                obj = {"state_dict": state, "epoch": e, "best_score": 0.5 + e / 100}
                torch.save(obj, d / f"epoch_{e:02d}.ckpt")
            else:
                torch.save(state, d / f"epoch_{e:02d}.pt")
    (root / "run_3" / "epoch_99.pt").write_bytes(b"not a checkpoint")
    torch.save({"fc.weight": [1, 2]}, root / "run_4" / "epoch_98.pt")  # no tensors


_REAL = importer._prepare_in_worker


def _marked(i: int):
    """The pool's task, noting which process ran it (module-level: the pool pickles it)."""
    (Path(os.environ["WDB_TEST_MARKS"]) / str(os.getpid())).touch()
    return _REAL(i)


def _summary(db) -> tuple:
    rows = db.sql(
        "SELECT r.name AS run, c.step, c.sha256, c.row FROM checkpoints c "
        "JOIN runs r ON r.id = c.run_id ORDER BY r.name, c.step"
    )
    metrics = db.sql(
        "SELECT r.name AS run, c.step, m.name, m.value FROM metrics m "
        "JOIN checkpoints c ON c.id = m.checkpoint_id JOIN runs r ON r.id = c.run_id "
        "ORDER BY r.name, c.step, m.name"
    )
    weights = []
    for space in db.spaces():
        ids = db.sql(
            "SELECT id FROM checkpoints WHERE space_id = :s ORDER BY id", {"s": space["id"]}
        )
        weights.append(db.weights([r["id"] for r in ids]).tobytes())
    return rows, metrics, weights


def test_reader_processes_give_the_same_database(tmp_path, monkeypatch, request):
    make_zoo(tmp_path / "zoo")
    monkeypatch.setattr(importer, "POOL_MIN_FILES", 8)
    monkeypatch.setattr(importer, "POOL_WINDOW", 16)  # several windows in flight
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("WDB_TEST_MARKS", str(marks))
    monkeypatch.setattr(importer, "_prepare_in_worker", _marked)
    reports, summaries = [], []
    for workers in ("0", "2"):
        monkeypatch.setenv("WDB_INGEST_WORKERS", workers)
        if ON_POSTGRES:  # the second database needs a catalog of its own on the server
            server = request.getfixturevalue("pg_server")
            monkeypatch.setenv("WDB_CATALOG_URL", server.create("t_" + os.urandom(6).hex()))
        db = wdb.open(tmp_path / f"db{workers}")
        reports.append(db.ingest(tmp_path / "zoo"))
        summaries.append(_summary(db))
    one, two = reports
    assert one.checkpoints_added == two.checkpoints_added == 80
    assert sorted(one.skipped) == sorted(two.skipped)
    assert {src.rsplit("/", 1)[-1] for src, _ in two.skipped} == {"epoch_99.pt", "epoch_98.pt"}
    assert summaries[0] == summaries[1]
    readers = {int(p.name) for p in marks.iterdir()}
    assert len(readers) == 2 and os.getpid() not in readers  # the files were read by the pool
    _, metrics, _ = summaries[1]
    assert any(m["name"] == "best_score" for m in metrics)
    assert db.ingest(tmp_path / "zoo").checkpoints_added == 0  # re-ingest adds nothing


def test_pool_is_used_only_where_it_pays(tmp_path, monkeypatch):
    make_zoo(tmp_path / "zoo", n_runs=5, epochs=2)
    found = [
        Found(source=str(p), run="r", step=i, load=lambda: {})
        for i, p in enumerate(sorted((tmp_path / "zoo").rglob("*.pt")))
    ]
    monkeypatch.setenv("WDB_INGEST_WORKERS", "2")
    assert all(pre is None for _, pre in importer.prefetched(found))  # too few files to fork
    monkeypatch.setenv("WDB_INGEST_WORKERS", "many")
    with pytest.raises(wdb.errors.BadInput, match="WDB_INGEST_WORKERS"):
        importer.ingest_workers()


def test_read_ahead_counts_a_widened_row_not_its_file(monkeypatch):
    """The ingest's read-ahead holds at most ``READ_AHEAD_BYTES``, a loaded file counted as
    its row where that is larger (bf16 files widened to float32: twice their bytes), a file
    still loading by the ratio the last loaded one showed, one at a time before any has."""
    from concurrent.futures import Future

    from wdb.ingest import pool
    from wdb.store.spaces import Layout

    monkeypatch.setattr(pool, "READ_AHEAD_BYTES", 10_000)
    layout = Layout.from_arrays({"w": np.zeros(1000, np.float32)})  # a row of 4,000 bytes

    def loaded() -> Future:
        f: Future = Future()
        f.set_result(("ok", layout, None, "", None))
        return f

    seen: dict = {}
    assert pool._room([], seen)
    assert not pool._room([(None, None, Future(), 2000)], seen)  # loading, no ratio yet
    assert pool._room([(None, None, loaded(), 2000)], seen) and seen["ratio"] == 2.0
    # 4,000 loaded + 2,000 x 2 loading = 8,000: room; one more loaded = 12,000: none
    assert pool._room([(None, None, loaded(), 2000), (None, None, Future(), 2000)], seen)
    full = [(None, None, loaded(), 2000)] * 2 + [(None, None, Future(), 2000)]
    assert not pool._room(full, seen)


def test_read_ahead_keeps_loading_while_the_writer_works(tmp_path, monkeypatch):
    """Files the writer takes as soon as they load still teach the read-ahead their row size,
    so the next files load while the writer works on this one (it had learnt only from files
    that waited in its queue: with a fast writer, never, and it read one file at a time)."""
    import time
    from types import SimpleNamespace

    from wdb.ingest import pool
    from wdb.store.spaces import Layout

    monkeypatch.setattr(pool, "READ_AHEAD_BYTES", 1000)
    layout = Layout.from_arrays({"w": np.zeros(50, np.float32)})  # 200 row bytes per 100 B file
    started: dict[int, float] = {}

    def prepare(f, layouts):
        started[f.i] = time.perf_counter()
        time.sleep(0.01)
        return ("ok", layout, None, "", None)

    monkeypatch.setattr(pool, "_prepare", prepare)
    files = []
    for i in range(6):
        p = tmp_path / f"{i}.pt"
        p.write_bytes(b"x" * 100)
        files.append(
            SimpleNamespace(i=i, source=str(p), problem=None, companion=False, layout=None)
        )
    taken: dict[int, float] = {}
    for f, got in pool.read_ahead((f, None) for f in files):
        assert got[0] == "ok"
        taken[f.i] = time.perf_counter()
        time.sleep(0.05)  # the writer's work on this file
    assert list(taken) == list(range(6))
    # some file began loading before the writer had taken the one before it
    assert any(started[i] < taken[i - 1] for i in range(1, 6))


def test_one_ahead_keeps_order_raises_in_place_and_stops_with_its_caller():
    """``wdb.memory.one_ahead`` (a stream's tensors while it is hashed, a scan's blocks): the
    items in order; an error making one is raised where that item would come; a caller that
    stops early stops the making thread too (no thread left behind)."""
    import threading

    from wdb.memory import one_ahead

    assert list(one_ahead(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ValueError("tensor 3 is damaged")

    got = []
    with pytest.raises(ValueError, match="tensor 3 is damaged"):
        for x in one_ahead(failing()):
            got.append(x)
    assert got == [1, 2]
    made = []

    def endless():
        while True:
            made.append(len(made))
            yield made[-1]

    it = one_ahead(endless(), "wdb-test-ahead")
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert len(made) == 4  # the three taken and the one made ahead, then it stopped
    assert not any(t.name.startswith("wdb-test-ahead") for t in threading.enumerate())


def test_a_streams_hashing_pass_also_takes_its_sketch():
    """``row_hash`` of a stream takes its sketch on the way; finding its parent then uses that
    sketch (the same as the whole row's) and does not read the stream a second time."""
    import hashlib
    from types import SimpleNamespace

    from wdb.ingest.pool import row_hash
    from wdb.store import family, lineage
    from wdb.store.write import RowStream

    rng = np.random.default_rng(1)
    parts = [rng.normal(size=m).astype(np.float32) for m in (70_000, 5, 30_000)]
    reads = []

    def segments():
        reads.append(1)
        yield from parts

    rs = RowStream(100_005, segments)
    assert row_hash(rs) == hashlib.sha256(np.concatenate(parts).data).hexdigest()
    assert rs.sketch == family.sketch(np.concatenate(parts)) and len(reads) == 1
    assert lineage._sketch_of(SimpleNamespace(row=rs)) == rs.sketch and len(reads) == 1
    rs.sketch = None  # a stream hashed elsewhere: sketched by a pass of its own, alike
    assert lineage._sketch_of(SimpleNamespace(row=rs)) == family.sketch(np.concatenate(parts))
