"""The byte-bounded scan (``wdb.query.scan``): tiny budgets give exactly the numpy oracle's
neighbours and distances, for nearest and novelty, with rows wider than the budget read in
column blocks; a budget too small says the smallest that works; the Dask partitions merge to
the in-process answer."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from wdb import memory
from wdb.errors import BadInput, WdbError
from wdb.query import nearest as wq
from wdb.query import scan
from wdb.store.spaces import Layout

KB = 1 << 10


def oracle(refs: np.ndarray, q: np.ndarray, k: int, exclude: int | None = None):
    d = np.sqrt(((refs.astype(np.float64) - q.astype(np.float64)) ** 2).sum(1))
    if exclude is not None:
        d[exclude] = np.inf
    o = np.lexsort((np.arange(len(d)), d))[:k]
    return o, d[o]


def _family(db, d: int, n: int, seed: int, targets: int = 6):
    rng = np.random.default_rng(seed)
    lay = Layout.from_arrays({"w": np.zeros((d // 4, 4), np.float32)})
    base = rng.normal(size=d).astype(np.float32)
    train = (base + 0.05 * rng.normal(size=(n, d))).astype(np.float32)
    names = [f"t{i:03d}" for i in range(n)]
    t_ids = db.add_checkpoints(lay, train, run=names, kind="training", steps=[0] * n)
    gen = (train[:targets] + 0.01 * rng.normal(size=(targets, d))).astype(np.float32)
    g_ids = db.add_checkpoints(lay, gen, kind="generated")
    return train, np.array(t_ids), gen, g_ids


@pytest.fixture(params=[False, True], ids=["numpy", "kernel"])
def fast(request, monkeypatch):
    """Sum with numpy or with the compiled kernel (``wdb.query.kernel``), whatever the size."""
    monkeypatch.setattr(scan, "FAST_MIN", 0 if request.param else 1 << 62)
    return request.param


def test_memory_sizes_parse_and_resolve(monkeypatch):
    assert memory.parse_bytes("512MB") == 512 << 20
    assert memory.parse_bytes("1GB") == 1 << 30
    assert memory.parse_bytes("64kb") == 64 << 10
    assert memory.parse_bytes("1.5GiB") == 3 << 29
    assert memory.parse_bytes("4096") == 4096
    monkeypatch.delenv("WDB_MEMORY", raising=False)
    assert memory.budget() == memory.DEFAULT == 1 << 30
    monkeypatch.setenv("WDB_MEMORY", "256MB")
    assert memory.budget() == 256 << 20
    assert memory.budget("2GB") == 2 << 30  # --memory beats the environment
    for bad in ("lots", "-5", "0", "12XB"):
        with pytest.raises(BadInput, match="memory"):
            memory.parse_bytes(bad)


def test_plans_are_sized_in_bytes():
    # narrow rows: whole rows, as many per read as the budget holds (not a fixed count)
    small = scan.plan(1000, 1, 100, 4, 3, 64 * KB)
    big = scan.plan(1000, 1, 100, 4, 3, 256 * KB)
    assert small.whole_rows and big.whole_rows
    assert 1 <= small.rows < big.rows <= 1000
    # a row of 80 KB under a 128 KB budget: column blocks, on the tile grid
    wide = scan.plan(40, 6, 20_000, 4, 3, 128 * KB)
    assert not wide.whole_rows and wide.cols % wide.tile == 0
    assert wide.queries == 6  # all targets share each reference read
    # 6 targets of 100 MB under 1 GB: whole rows would hold one reference at a time, each
    # streaming all six targets again; column blocks of whole chunks hold every reference
    big = scan.plan(20, 6, 25_000_000, 4, 3, 1 << 30)
    assert not big.whole_rows and big.rows == 20 and big.queries == 6
    assert big.cols % scan.CHUNK_COLS == 0 and big.keep > 0
    one = scan.plan(20, 1, 25_000_000, 4, 3, 1 << 30)  # one target: whole rows, key kept
    assert one.whole_rows and one.keep == (1 << 30) // scan.KEEP_SHARE


@pytest.mark.parametrize("d,budget", [(64, 16 * KB), (20_000, 64 * KB), (20_000, 48 * KB)])
def test_scan_matches_numpy_oracle(d, budget, fast):
    rng = np.random.default_rng(d + budget)
    refs = rng.normal(size=(37, d)).astype(np.float32)
    qs = np.concatenate([refs[[3, 20]], rng.normal(size=(3, d)).astype(np.float32)])
    ref_ids = np.arange(100, 137)
    q_ids = np.array([103, 120, -1, -1, -1])  # the first two are references themselves
    ids, dist, plan = scan.knn(refs, ref_ids, qs, q_ids, 4, budget)
    assert plan.whole_rows == (d * 4 * scan.READ_FACTOR < budget) and plan.fast == fast
    for j in range(len(qs)):
        o, want = oracle(refs, qs[j], 4, exclude=(q_ids[j] - 100) if q_ids[j] >= 0 else None)
        assert ids[j].tolist() == (o + 100).tolist()
        assert np.allclose(dist[j], want, rtol=1e-13, atol=0)


@pytest.mark.parametrize("d,budget", [(700, 24 * KB), (20_000, 96 * KB)])
def test_all_targets_in_one_pass_equal_each_target_alone(d, budget, fast):
    # the kernel sums every target of a pass against each reference value read once; the
    # budget splits targets into passes and references into blocks (whole rows, then column
    # blocks), and each target's distances are the same bits as when it is searched alone
    budget = budget if fast else 4 * budget  # numpy's float64 tiles take their share
    rng = np.random.default_rng(d)
    refs = rng.normal(size=(45, d)).astype(np.float32)
    qs = (refs[:9] + 0.1 * rng.normal(size=(9, d))).astype(np.float32)
    q_ids = np.array([-1, 7, -1, -1, 2, -1, -1, -1, 8])  # some are references themselves
    ids, dist, plan = scan.knn(refs, np.arange(45), qs, q_ids, 3, budget)
    if d < 1000:  # several passes of whole rows, several reads each
        assert plan.whole_rows and 1 < plan.queries < 9 and plan.rows < 45
    else:  # one pass, each row in column blocks
        assert not plan.whole_rows and plan.cols < d and plan.queries == 9
    for j in range(len(qs)):
        one_i, one_d, _ = scan.knn(refs, np.arange(45), qs[j : j + 1], q_ids[j : j + 1], 3, budget)
        assert ids[j].tolist() == one_i[0].tolist()
        assert dist[j].tobytes() == one_d[0].tobytes()
        o, want = oracle(refs, qs[j], 3, exclude=q_ids[j] if q_ids[j] >= 0 else None)
        assert ids[j].tolist() == o.tolist()
        assert np.allclose(dist[j], want, rtol=1e-13, atol=0)


def test_numpy_path_matches_the_kernel_and_the_oracle(monkeypatch):
    # float16 rows and processes without numba sum with numpy, on the same kind of grid
    from wdb.query import kernel

    rng = np.random.default_rng(1)
    refs = rng.normal(size=(30, 3000)).astype(np.float32)
    qs = rng.normal(size=(4, 3000)).astype(np.float32)
    monkeypatch.setattr(scan, "FAST_MIN", 0)
    half = scan.knn(
        refs.astype(np.float16), np.arange(30), qs.astype(np.float16), [-1] * 4, 5, 1 << 20
    )
    assert not half[2].fast
    for j in range(4):
        o, want = oracle(refs.astype(np.float16), qs[j].astype(np.float16), 5)
        assert half[0][j].tolist() == o.tolist()
        assert np.allclose(half[1][j], want, rtol=1e-13, atol=0)
    calls = []
    real = kernel.accumulate
    monkeypatch.setattr(kernel, "accumulate", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(scan, "FAST_MIN", 1 << 62)  # a small scan: numpy sums
    slow = scan.knn(refs, np.arange(30), qs, np.full(4, -1), 5, 64 * KB)
    assert not slow[2].fast and not calls
    monkeypatch.setattr(scan, "FAST_MIN", 0)
    fast = scan.knn(refs, np.arange(30), qs, np.full(4, -1), 5, 64 * KB)
    assert fast[2].fast and calls
    n_calls = len(calls)
    monkeypatch.setattr(kernel, "_kernel", False)  # as if numba were missing: numpy sums
    missing = scan.knn(refs, np.arange(30), qs, np.full(4, -1), 5, 64 * KB)
    assert len(calls) == n_calls
    assert missing[0].tolist() == fast[0].tolist()
    assert np.allclose(missing[1], fast[1], rtol=1e-13, atol=0)
    assert fast[0].tolist() == slow[0].tolist()
    assert np.allclose(fast[1], slow[1], rtol=1e-13, atol=0)


@pytest.mark.parametrize("d", [48, 20_000])
def test_nearest_and_novelty_within_a_tiny_budget(db, d, fast):
    train, t_ids, gen, g_ids = _family(db, d, 30, seed=d)
    run = db.checkpoints("checkpoint_id = :i", {"i": g_ids[1]})[0]["run"]
    got = wq.nearest(db, run, k=3, memory="64KB")
    o, want = oracle(train, gen[1], 3)
    assert [r["checkpoint_id"] for r in got] == t_ids[o].tolist()
    assert np.allclose([r["distance"] for r in got], want, rtol=1e-13, atol=0)
    assert {r["path"] for r in got} == {"scan"}
    rows = wq.novelty(db, "kind = 'generated'", k=2, save=False, memory="64KB")
    assert [r["checkpoint_id"] for r in rows] == list(g_ids)
    for j, r in enumerate(rows):
        o, want = oracle(train, gen[j], 1)
        assert r["nearest_id"] == t_ids[o[0]] and r["path"] == "scan"
        assert np.isclose(r["min_l2"], want[0], rtol=1e-13, atol=0)


def test_novelty_reads_each_reference_once_for_all_targets(db, monkeypatch, fast):
    d, n = 20_000, 30
    _family(db, d, n, seed=5)
    read = []
    orig = scan.StoredRows.read

    def counting(self, sel, cols=None):
        block = orig(self, sel, cols)
        read.append((len(self.rows), block.size))
        return block

    monkeypatch.setattr(scan.StoredRows, "read", counting)
    wq.novelty(db, "kind = 'generated'", save=False, memory="256KB")
    ref_values = sum(size for total, size in read if total == n)
    assert ref_values == n * d  # every reference value read once, not once per target (x6)


@pytest.mark.parametrize("ahead", [True, False])
def test_column_blocks_read_the_targets_ahead_too(db, monkeypatch, fast, ahead):
    # shared column blocks (novelty of several wide targets): the targets' next block is read
    # in the read-ahead thread while the references' blocks are summed, where the budget's
    # read-ahead share holds it (2 x targets <= rows per block), else in the caller as before;
    # both give the oracle's answer. Chunks are made narrow so that a small space has the
    # plan a 25M-parameter one gets.
    monkeypatch.setattr(scan, "CHUNK_COLS", 2048)
    budget = (384 if fast else 512) * KB if ahead else 192 * KB  # numpy's tiles take a share
    d, n = 20_000, 24
    train, t_ids, gen, g_ids = _family(db, d, n, seed=7, targets=4)
    where = []
    orig = scan.StoredRows.read

    def watched(self, sel, cols=None):
        import threading

        where.append((len(self.rows), threading.current_thread().name))
        return orig(self, sel, cols)

    monkeypatch.setattr(scan.StoredRows, "read", watched)
    space = db.space(db.checkpoints("checkpoint_id = :i", {"i": g_ids[0]})[0]["space_id"])
    ref = wq.select(db, "kind = 'training'", space.id)
    tgt = wq.select(db, "kind = 'generated'", space.id)
    plan = scan._fit(n, 4, d, 4, 1, budget, fast)
    assert not plan.whole_rows and plan.queries == 4 and (plan.rows >= 2 * 4) == ahead
    refs, qs = wq.stored(db, space, ref.rows), wq.stored(db, space, tgt.rows)
    ids, dist, _ = scan.knn(refs, ref.ids, qs, np.full(4, -1), 1, budget, plan)
    for j in range(4):
        o, want = oracle(train, gen[j], 1)
        assert ids[j, 0] == t_ids[o[0]] and np.isclose(dist[j, 0], want[0], rtol=1e-13, atol=0)
    target_reads = [name for rows, name in where if rows == 4]
    assert len(target_reads) == -(-d // plan.cols)  # one read of the targets per column block
    assert any(name.startswith("wdb-scan") for name in target_reads) == ahead


def test_budget_too_small_says_the_smallest_that_works(db):
    _family(db, 20_000, 30, seed=7)
    run = db.checkpoints("kind = 'generated'")[0]["run"]
    with pytest.raises(BadInput, match="smallest that works is") as err:
        wq.nearest(db, run, memory="100B")
    msg = str(err.value)
    assert "\n" not in msg and "100B" in msg
    smallest = msg.split("smallest that works is ")[1].split(" ")[0]
    assert wq.nearest(db, run, k=2, memory=smallest)  # and that budget does work


def test_index_only_while_a_flat_copy_fits_the_budget(db):
    train, t_ids, gen, g_ids = _family(db, 48, 300, seed=9)  # 300 > BRUTE_MAX references
    run = db.checkpoints("checkpoint_id = :i", {"i": g_ids[0]})[0]["run"]
    big = wq.nearest(db, run, k=3)
    small = wq.nearest(db, run, k=3, memory="32KB")  # the flat index would take 58 KB
    assert {r["path"] for r in big} == {"index"} and {r["path"] for r in small} == {"scan"}
    assert [r["checkpoint_id"] for r in big] == [r["checkpoint_id"] for r in small]
    assert np.allclose([r["distance"] for r in big], [r["distance"] for r in small], rtol=1e-12)


def test_cli_memory_option_and_bad_budget(db):
    import json

    from click.testing import CliRunner

    from wdb.cli.main import cli

    _family(db, 20_000, 12, seed=11)
    run = db.checkpoints("kind = 'generated'")[0]["run"]
    runner = CliRunner()
    base = ["--db", str(db.path), "query"]
    res = runner.invoke(cli, [*base, "nearest", "--run", run, "--memory", "64KB", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["path"] == "scan"
    res = runner.invoke(
        cli, [*base, "novelty", "--targets", "kind = 'generated'", "--memory", "100B"]
    )
    assert res.exit_code != 0 and "smallest that works" in res.output
    res = runner.invoke(cli, [*base, "nearest", "--run", run, "--memory", "lots"])
    assert res.exit_code != 0 and "not a size" in res.output


def test_scan_partitions_on_two_workers_merge_to_the_local_answer(db, fast):
    pytest.importorskip("distributed", reason="Dask is not installed (pip install -e '.[dask]')")
    train, t_ids, gen, g_ids = _family(db, 20_000, 25, seed=13)
    local = wq.novelty(db, "kind = 'generated'", k=3, save=False, memory="128KB")
    dist = wq.novelty(db, "kind = 'generated'", k=3, save=False, memory="128KB", workers=2)
    for j, (a, b) in enumerate(zip(local, dist, strict=True)):
        assert a["nearest_id"] == b["nearest_id"] == t_ids[oracle(train, gen[j], 1)[0][0]]
        assert np.float64(a["min_l2"]).tobytes() == np.float64(b["min_l2"]).tobytes()


@pytest.mark.parametrize("mem", ["1GB", "16KB"])  # the whole row, and groups of tensors
def test_export_streams_tensor_by_tensor_bit_exactly(db, tmp_path, mem):
    import torch
    from safetensors.torch import load_file

    from wdb.store.export import export_checkpoint

    rng = np.random.default_rng(3)
    arrays = {
        "a": rng.normal(size=(40, 50)).astype(np.float32),
        "h": rng.normal(size=300).astype(np.float32),  # stored as bf16-exact float32
        "b": rng.normal(size=7).astype(np.float32),
        "c": rng.normal(size=(30, 90)).astype(np.float32),
    }
    arrays["h"] = torch.from_numpy(arrays["h"]).bfloat16().float().numpy()
    lay = Layout.from_arrays(
        arrays, {"a": "float32", "h": "bfloat16", "b": "float32", "c": "float32"}
    )
    row = lay.flatten(arrays)[None]
    db.add_checkpoints(lay, row, run="big", kind="training")
    out = tmp_path / f"x{mem}.safetensors"
    export_checkpoint(db, "big", None, "safetensors", out, memory=mem)
    got = load_file(out)
    assert list(got) == ["a", "h", "b", "c"] or set(got) == set(arrays)
    assert got["h"].dtype == torch.bfloat16
    for name, want in arrays.items():
        t = got[name].float().numpy() if name == "h" else got[name].numpy()
        assert t.tobytes() == want.tobytes(), name
    sd = db.state_dict(db.checkpoint("big"), memory=mem)
    assert all(torch.equal(sd[k], got[k]) for k in arrays)


@dataclass
class Dying(scan.MemoryRows):
    """Rows whose read kills the worker process: the first read only when ``marker`` names a
    file (made as it dies), every read when it is empty."""

    marker: str = ""

    def subset(self, sel):
        return Dying(self.data[sel], self.marker)

    def read(self, sel, cols=None):
        if not self.marker or not os.path.exists(self.marker):
            if self.marker:
                open(self.marker, "w").close()
            os._exit(1)
        return super().read(sel, cols)


def test_a_killed_worker_is_retried_or_the_query_fails_in_one_line(db, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    import cloudpickle
    import dask

    _family(db, 64, 30, seed=3)
    want = wq.novelty(db, "kind = 'generated'", k=2, save=False)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    real = wq.stored

    def dying(marker):
        return lambda db_, space, rows: Dying(real(db_, space, rows).read(slice(None)), marker)

    def n_relations():
        return db.catalog.query_rows("SELECT count(*) FROM relations")[1][0][0]

    before = n_relations()
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        # a worker dies on its first read: the part is retried, the answer is unchanged
        monkeypatch.setattr(wq, "stored", dying(str(tmp_path / "died")))
        got = wq.novelty(db, "kind = 'generated'", k=2, save=False, workers=2)
        assert (tmp_path / "died").exists()
        assert [(r["nearest_id"], r["min_l2"]) for r in got] == [
            (r["nearest_id"], r["min_l2"]) for r in want
        ]
        # workers die on every try: one line, and no relation stored
        monkeypatch.setattr(wq, "stored", dying(""))
        with pytest.raises(WdbError, match="worker died") as err:
            wq.novelty(db, "kind = 'generated'", k=2, save=True, workers=2)
    assert "\n" not in str(err.value)
    assert n_relations() == before


def test_evaluate_batches_fit_the_memory_budget(db, monkeypatch):
    # `wdb evaluate --memory`: a batch holds as many checkpoints as fit (read READ_FACTOR
    # times over), not --batch's 256 of any size
    from click.testing import CliRunner

    from wdb.cli.main import cli
    from wdb.study import tasks

    t = tasks.get("mnist-mlp")
    layout = t.layout()
    rng = np.random.default_rng(0)
    rows = (rng.normal(size=(10, layout.n_params)) * 0.1).astype(np.float32)
    db.add_checkpoints(layout, rows, run="r", kind="training", zoo="z")
    sizes = []
    real = type(t).evaluate_rows
    monkeypatch.setattr(
        type(t), "evaluate_rows", lambda self, r, ctx: sizes.append(len(r)) or real(self, r, ctx)
    )
    budget = str(layout.n_params * 4 * scan.READ_FACTOR * 4)  # four rows
    args = ["--db", str(db.path), "evaluate", "--task", "mnist-mlp", "--memory", budget]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert sizes == [4, 4, 2]
    res = CliRunner().invoke(cli, [*args[:-1], "lots"])
    assert res.exit_code != 0 and "not a size" in res.output
