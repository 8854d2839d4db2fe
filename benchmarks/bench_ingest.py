"""Ingest throughput vs ``cp -r`` of the same files (issue 2 target: ingest >= 0.3x cp speed).

Writes N ``.pt`` checkpoints of an MLP 784-12-10 (9,550 params, ~40 KB each) as N/10 runs of
10 epochs (one sub-folder per run), then times, on a warm page cache:

- ``cp -r zoo copy``;
- ``db.ingest(zoo)`` through the Python API into a fresh database (catalog schema already made);
- ``wdb ingest zoo`` through the CLI, start-up included (if the CLI has the command);
- a re-ingest (everything already present).

    .venv/bin/python benchmarks/bench_ingest.py [--n 2000]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def make_zoo(root: Path, n: int) -> int:
    torch.manual_seed(0)
    base = {
        "fc1.weight": torch.randn(12, 784) * 0.05,
        "fc1.bias": torch.zeros(12),
        "fc2.weight": torch.randn(10, 12) * 0.3,
        "fc2.bias": torch.zeros(10),
    }
    runs = max(1, n // 10)
    for r in range(runs):
        d = root / f"run_{r:04d}"
        d.mkdir(parents=True)
        state = {k: v + torch.randn_like(v) * 0.1 for k, v in base.items()}
        for e in range(n // runs):
            state = {k: v + torch.randn_like(v) * 0.01 for k, v in state.items()}
            torch.save(state, d / f"epoch_{e:03d}.pt")
    return sum(v.numel() for v in base.values())


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cpu_of(fn) -> float:
    """CPU seconds (user + sys) of this process and its children while ``fn`` runs: unlike
    wall time, it barely counts time spent waiting for a busy machine's other tenants."""

    def now() -> float:
        a, b = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    t = now()
    fn()
    return now() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument(
        "--codec",
        choices=["store", "lz4", "zstd1"],
        default="store",
        help="compress with the store's codec, or (to measure the alternative) Blosc lz4/zstd1",
    )
    args = ap.parse_args()
    if args.codec != "store":
        from zarr.codecs import BloscCodec

        from wdb import store

        cname, level = ("lz4", 5) if args.codec == "lz4" else ("zstd", 1)
        store._compressor = lambda dt: BloscCodec(
            cname=cname, clevel=level, shuffle="bitshuffle", typesize=dt.itemsize
        )
    torch.set_num_threads(1)
    os.environ.setdefault("WDB_PROGRESS", "0")
    import wdb

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        zoo = tmp / "zoo"
        n_params = make_zoo(zoo, args.n)
        files = sorted(zoo.rglob("*.pt"))
        size = sum(f.stat().st_size for f in files)
        print(f"{len(files)} files, {n_params} params each, {size / 1e6:.1f} MB")
        for f in files:  # warm the page cache for both contenders
            f.read_bytes()
        t_cp = min(
            timed(
                lambda i=i: subprocess.run(["cp", "-r", str(zoo), str(tmp / f"cp{i}")], check=True)
            )
            for i in range(3)
        )
        c_cp = min(
            cpu_of(
                lambda i=i: subprocess.run(["cp", "-r", str(zoo), str(tmp / f"cpu{i}")], check=True)
            )
            for i in range(3)
        )
        db = wdb.open(tmp / "db")
        wdb.open(tmp / "db_cpu")
        t_api = timed(lambda: db.ingest(zoo))
        c_api = cpu_of(lambda: wdb.open(tmp / "db_cpu").ingest(zoo))
        assert len(db.checkpoints()) == len(files)
        t_again = timed(lambda: db.ingest(zoo))
        cli = Path(sys.executable).with_name("wdb")
        t_cli = None
        if cli.exists() and args.codec == "store":
            wdb.open(tmp / "db_cli")
            t = time.perf_counter()
            proc = subprocess.run(
                [str(cli), "--db", str(tmp / "db_cli"), "ingest", str(zoo)],
                capture_output=True,
                text=True,
            )
            t_cli = time.perf_counter() - t
            if proc.returncode != 0:
                print(f"(CLI ingest failed: {proc.stderr.strip()[-200:]})")
                t_cli = None
        db_bytes = sum(
            p.stat().st_size for p in (tmp / "db" / "weights.zarr").rglob("*") if p.is_file()
        )
        print(f"cp -r            {t_cp:7.3f} s   {len(files) / t_cp:9.0f} files/s")
        print(
            f"ingest (API)     {t_api:7.3f} s   {len(files) / t_api:9.0f} files/s   "
            f"speed vs cp = {t_cp / t_api:.2f}x  (target >= 0.3x)"
        )
        print(
            f"CPU time: cp -r {c_cp:.3f} s, ingest (API) {c_api:.3f} s   "
            f"ratio {c_cp / c_api:.2f}x  (less sensitive to other load)"
        )
        if t_cli is not None:
            print(
                f"ingest (CLI)     {t_cli:7.3f} s   {len(files) / t_cli:9.0f} files/s   "
                f"speed vs cp = {t_cp / t_cli:.2f}x  (includes interpreter start-up)"
            )
        print(f"re-ingest (API)  {t_again:7.3f} s   (nothing new)")
        print(
            f"weights.zarr {db_bytes / 1e6:.1f} MB vs raw {len(files) * n_params * 4 / 1e6:.1f} MB"
        )
        shutil.rmtree(tmp / "cp0", ignore_errors=True)


if __name__ == "__main__":
    main()
