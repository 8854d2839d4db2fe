"""Many writers: concurrent ingest throughput of 2 writers vs 1, on DuckDB and on PostgreSQL.

Two zoos of ``--n`` ``.pt`` files each (MLP 784-12-10, as ``bench_ingest.py``) are ingested into a
fresh database: once by one ``wdb ingest`` after the other, once by two ``wdb ingest`` processes at
the same time (``WDB_INGEST_BATCH`` files per commit, so they interleave). The ratio is the
sequential wall time over the concurrent one (> 1: the second writer helps). PostgreSQL is a
throwaway server started by ``tests/pgserver.py`` (skipped, saying why, where it cannot start).

Also: one ingest of one zoo into a local store vs into a local S3 emulator (``moto``, started by
``tests/s3server.py``; the ratio is local wall time over S3 wall time); and ``wdb query novelty``
of ``--targets`` (2,000) against ``--refs`` (10,000) in one space, in process vs on a local Dask
cluster of 2 workers (``--workers 2``), checked identical (ratio: in-process time over engine
time, the index built before either is timed); and ``wdb evaluate`` of ``--evaluate`` (120)
neural-field checkpoints in process vs on 2 workers (``evaluate_case``).

    .venv/bin/python benchmarks/bench_scale.py [--n 1000] [--batch 256]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_ingest import make_zoo  # noqa: E402

WDB = Path(sys.executable).with_name("wdb")


def ingest(db: Path, zoos: list[Path], env: dict, together: bool) -> float:
    cmds = [[str(WDB), "--db", str(db), "ingest", str(z)] for z in zoos]
    t = time.perf_counter()
    if together:
        procs = [
            subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for c in cmds
        ]
        codes = [p.wait() for p in procs]
    else:
        codes = [subprocess.run(c, env=env, stdout=subprocess.DEVNULL).returncode for c in cmds]
    wall = time.perf_counter() - t
    if any(codes):
        raise SystemExit(f"ingest failed: exit codes {codes}")
    return wall


def case(name: str, zoos: list[Path], env: dict, fresh) -> None:
    seq = ingest(fresh("seq"), zoos, env, together=False)
    par = ingest(fresh("par"), zoos, env, together=True)
    n = sum(len(list(z.rglob("*.pt"))) for z in zoos)
    print(
        f"{name:10s} 1 writer {seq:6.2f} s ({n / seq:5.0f} files/s)   2 writers {par:6.2f} s "
        f"({n / par:5.0f} files/s)   ratio {seq / par:.2f}x"
    )


def s3_case(tmp: Path, zoo: Path, env: dict) -> None:
    from tests import s3server

    try:
        server = s3server.start()
    except s3server.Unavailable as exc:
        print(f"s3 emulator skipped: {exc}")
        return
    try:
        local = ingest(tmp / "local_store", [zoo], env, together=False)
        s3env = {**env, **server.env, "WDB_STORE_URL": server.bucket("bench") + "/db"}
        remote = ingest(tmp / "s3_store", [zoo], s3env, together=False)
    finally:
        server.stop()
    n = len(list(zoo.rglob("*.pt")))
    print(
        f"{'store':10s} local disk {local:6.2f} s ({n / local:5.0f} files/s)   S3 emulator "
        f"{remote:6.2f} s ({n / remote:5.0f} files/s)   ratio {local / remote:.2f}x"
    )


def novelty_case(tmp: Path, n_targets: int, n_refs: int, dim: int) -> None:
    import numpy as np

    import wdb
    from wdb.query import nearest as query
    from wdb.query.index import ensure
    from wdb.store.spaces import Layout

    os.environ.pop("WDB_CATALOG_URL", None)
    os.environ.pop("WDB_STORE_URL", None)
    db = wdb.open(tmp / "novelty_db")
    rng = np.random.default_rng(0)
    layout = Layout.from_arrays({"w": np.zeros(dim, np.float32)})
    base = rng.normal(size=dim).astype(np.float32)
    refs = (base + rng.normal(0, 0.3, (n_refs, dim))).astype(np.float32)
    db.add_checkpoints(layout, refs, run="train", kind="training", zoo="z")
    gen = (base + rng.normal(0, 0.3, (n_targets, dim))).astype(np.float32)
    db.add_checkpoints(layout, gen, run="gen", kind="generated", zoo="z")
    ensure(db, db.space(1))
    t = time.perf_counter()
    local = query.novelty(db, "kind = 'generated'", save=False)
    t_local = time.perf_counter() - t
    t = time.perf_counter()
    dist = query.novelty(db, "kind = 'generated'", save=False, workers=2)
    t_dist = time.perf_counter() - t
    same = [(r["nearest_id"], r["min_l2"]) for r in local] == [
        (r["nearest_id"], r["min_l2"]) for r in dist
    ]
    print(
        f"novelty    {n_targets} targets x {n_refs} refs, {dim} params: in process {t_local:6.2f} s"
        f"   2 Dask workers {t_dist:6.2f} s (cluster start-up included)   ratio "
        f"{t_local / t_dist:.2f}x   identical: {same}"
    )


def evaluate_case(tmp: Path, n: int) -> None:
    """``wdb evaluate`` of ``n`` neural-field checkpoints (shapes-occupancy: a marching-cubes
    mesh and 2,048 surface points per checkpoint, the heaviest built-in evaluation), in
    process vs on 2 Dask workers, both forced re-evaluations after a first one, checked
    identical. The rows are a small trained zoo's fields plus small noise, so every mesh is
    a real surface."""
    import numpy as np

    import wdb
    from wdb.study import tasks

    os.environ.pop("WDB_CATALOG_URL", None)
    os.environ.pop("WDB_STORE_URL", None)
    t = tasks.get("shapes-occupancy")
    db = wdb.open(tmp / "evaluate_db")
    db.ingest(t.train_zoo(tmp / "shapes_zoo", size="small", seed=0))
    trained = db.weights([c["checkpoint_id"] for c in db.checkpoints()])
    rng = np.random.default_rng(0)
    rows = trained[rng.integers(0, len(trained), n)]
    rows = (rows + rng.normal(0, 1e-3, rows.shape)).astype(np.float32)
    db.add_checkpoints(t.layout(), rows, run="noisy", kind="training", zoo="bench")
    where = "zoo = 'bench'"
    batch = max(1, n // 6)  # both runs use the same batches (results depend on them); 6 to share
    db.evaluate(where=where, batch=batch)

    def results() -> list:
        return db.sql(
            "SELECT checkpoint_id, name, value FROM metrics WHERE checkpoint_id IN "
            "(SELECT checkpoint_id FROM checkpoint_info WHERE zoo = 'bench') ORDER BY 1, 2"
        )

    t0 = time.perf_counter()
    db.evaluate(where=where, force=True, batch=batch)
    t_local = time.perf_counter() - t0
    local = results()
    t0 = time.perf_counter()
    db.evaluate(where=where, force=True, batch=batch, workers=2)
    t_dist = time.perf_counter() - t0
    same = [tuple(r.values()) for r in results()] == [tuple(r.values()) for r in local]
    print(
        f"evaluate   {n} shapes-occupancy checkpoints: in process {t_local:6.2f} s   2 Dask "
        f"workers {t_dist:6.2f} s (cluster start-up included)   ratio {t_local / t_dist:.2f}x"
        f"   identical: {same}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="files per zoo")
    ap.add_argument("--batch", type=int, default=256, help="files per commit")
    ap.add_argument("--targets", type=int, default=2000)
    ap.add_argument("--refs", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=2000, help="parameters per checkpoint")
    ap.add_argument("--evaluate", type=int, default=120, help="checkpoints (0: skip)")
    ap.add_argument("--only-novelty", action="store_true")
    ap.add_argument("--only-evaluate", action="store_true")
    args = ap.parse_args()
    if args.only_novelty or args.only_evaluate:
        with tempfile.TemporaryDirectory() as tmp:
            if args.only_novelty:
                novelty_case(Path(tmp), args.targets, args.refs, args.dim)
            if args.only_evaluate and args.evaluate:
                evaluate_case(Path(tmp), args.evaluate)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        zoos = [tmp / "zoo_a", tmp / "zoo_b"]
        for i, z in enumerate(zoos):
            make_zoo(z, args.n)
            for d in z.iterdir():  # run names are global: give each zoo its own
                d.rename(z / f"{'ab'[i]}_{d.name}")
        env = {**os.environ, "WDB_PROGRESS": "0", "WDB_INGEST_BATCH": str(args.batch)}
        env.pop("WDB_CATALOG_URL", None)
        print(f"2 zoos x {args.n} files, {args.batch} files per commit, {os.cpu_count()} cores")
        case("duckdb", zoos, env, lambda tag: tmp / f"duck_{tag}")
        s3_case(tmp, zoos[0], env)
        from tests import pgserver

        try:
            server = pgserver.start()
        except pgserver.Unavailable as exc:
            print(f"postgresql skipped: {exc}")
            novelty_case(tmp, args.targets, args.refs, args.dim)
            if args.evaluate:
                evaluate_case(tmp, args.evaluate)
            return
        try:

            def fresh(tag: str) -> Path:
                env["WDB_CATALOG_URL"] = server.create(f"bench_{tag}")
                return tmp / f"pg_{tag}"

            case("postgresql", zoos, env, fresh)
        finally:
            server.stop()
        novelty_case(tmp, args.targets, args.refs, args.dim)
        if args.evaluate:
            evaluate_case(tmp, args.evaluate)


if __name__ == "__main__":
    main()
