"""What verified reads cost: the same reads with and without the hash check, in one run.

Every read of a stored row is checked against the catalog's block hashes (xxh3_128,
``wdb.store.verify``); the target is at most 10% of read time. Cases, each the best of
``--repeat`` timings (this machine is shared and noisy):

1. a zoo space (D = 2,410, a 64-32-10 MLP; ``--rows`` checkpoints of random-walk runs, as
   training steps are): a full scan in batches of 2,048 rows (what exact nearest/novelty do),
   and single-row reads (what export and ``state_dict`` do);
2. a wider space (D = 65,536: 8 column blocks): full rows, and a 100-column slice of every row;
3. for comparison, checking the catalog's sha256 instead on the scan of case 1 (why the store
   keeps a second, faster hash).

"Warm" has the expected hashes cached, as every read after a process's first. "First read"
is what a one-shot command does: a fresh ``Database`` reads 2,048 checkpoints by id; without
the check it asks the catalog for their rows only, with it ``Database.weights`` gets the rows
and their hashes in that same query (``_locate``), so the check adds no round trip.

    .venv/bin/python benchmarks/bench_verify.py [--rows 4096] [--repeat 5]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

import wdb
from wdb.store.spaces import Layout
from wdb.store.verify import _mismatches


def pair(raw, checked, repeat: int) -> tuple[float, float]:
    """Best times of ``raw`` and ``checked``, run in turns (a noisy neighbour slows both)."""
    a, b = [], []
    for _ in range(repeat):
        for fn, out in ((raw, a), (checked, b)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return min(a), min(b)


def make(db, d: int, n: int, runs: int, seed: int) -> tuple[str, list[int], np.ndarray]:
    rng = np.random.default_rng(seed)
    layout = Layout.from_arrays({"w": np.zeros(d, np.float32)})
    per = n // runs
    ids = []
    for r in range(runs):
        walk = rng.normal(0, 0.05, (1, d)) + np.cumsum(rng.normal(0, 1e-3, (per, d)), axis=0)
        ids += db.add_checkpoints(layout, walk.astype(np.float32), run=f"r{seed}_{r}")
    space = db.space(layout.hash[:16])
    rows = np.array([r["row"] for r in db._locate(ids)], dtype=np.int64)
    return space.array_path, ids, rows


def report(label: str, raw: float, checked: float) -> None:
    print(
        f"  {label:<44} {raw * 1e3:9.2f} ms {checked * 1e3:9.2f} ms"
        f"   +{100 * (checked / raw - 1):5.1f}%"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = wdb.open(Path(tmp) / "db")
        store = db.weights_store
        path, ids, rows = make(db, 2410, args.rows, 16, 0)
        wpath, wids, wrows = make(db, 65536, 256, 4, 1)

        def scan(p, rs, verify, cols=None):
            for s in range(0, len(rs), 2048):
                store.read(p, rs[s : s + 2048], cols, verify=verify)

        first = ids[:2048]

        def first_raw():  # a fresh process: locate the rows, read them unchecked
            db2 = wdb.Database(db.path)
            _, got = db2.catalog.query_rows(
                "SELECT c.row, s.array_path FROM checkpoints c JOIN spaces s "
                "ON s.id = c.space_id WHERE c.id IN (SELECT unnest(CAST(:i AS BIGINT[])))",
                {"i": first},
            )
            db2.weights_store.read(got[0][1], np.sort([r for r, _ in got]), verify=False)

        def first_checked():  # a fresh process: Database.weights, checked
            wdb.Database(db.path).weights(first)

        def sha_scan():
            for s in range(0, len(rows), 2048):
                block = store.read(path, rows[s : s + 2048], verify=False)
                for row in block:
                    hashlib.sha256(row.data).hexdigest()

        pick = rows[:: max(1, len(rows) // 200)]

        def singles(verify):
            for r in pick:
                store.read(path, [int(r)], verify=verify)

        scan(path, rows, True)  # warm the cache (and the page cache) before timing
        scan(wpath, wrows, True)

        def check_only():  # the check alone, on rows already read: no read noise in it
            for s in range(0, len(rows), 2048):
                part = rows[s : s + 2048]
                _mismatches(part, blocks[s], 0, None, store.verifier.get(path, np.unique(part)))

        blocks = {
            s: store.read(path, rows[s : s + 2048], verify=False) for s in range(0, len(rows), 2048)
        }
        n = args.repeat
        print(f"verified reads: without check / with check / cost (best of {n}, in turns)")
        print(f"1. zoo space, {len(rows)} x 2,410 float32")
        raw, warm = pair(lambda: scan(path, rows, False), lambda: scan(path, rows, True), n)
        report("full scan, batches of 2,048 (warm)", raw, warm)
        report("  of which the check alone", raw, raw + pair(check_only, check_only, n)[0])
        report("first read in a process, 2,048 rows by id", *pair(first_raw, first_checked, n))
        report(
            f"{len(pick)} single-row reads (warm)",
            *pair(lambda: singles(False), lambda: singles(True), n),
        )
        print(f"2. wide space, {len(wrows)} x 65,536 float32 (8 column blocks)")
        report(
            "full rows",
            *pair(lambda: scan(wpath, wrows, False), lambda: scan(wpath, wrows, True), n),
        )
        cols = slice(30000, 30100)
        report(
            "100-column slice of every row",
            *pair(
                lambda: scan(wpath, wrows, False, cols), lambda: scan(wpath, wrows, True, cols), n
            ),
        )
        print("3. the same scan as 1, checked with sha256 instead")
        report(
            "full scan + sha256 of every row", *pair(lambda: scan(path, rows, False), sha_scan, n)
        )


if __name__ == "__main__":
    main()
