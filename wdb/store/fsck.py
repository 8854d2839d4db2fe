"""``wdb fsck``: check that the catalog and the Zarr bytes agree.

Problems (the database is not consistent; ``ok`` is False):

- a checkpoint whose stored row no longer hashes to its ``sha256`` (bytes changed on disk), or
  whose bytes cannot be read;
- a checkpoint row pointing past the end of its space's array (missing bytes), or into a space
  whose array is gone;
- a checkpoint referencing an unknown run or space; metrics or outputs referencing an unknown
  checkpoint; outputs rows pointing past their array;
- duplicate rows: two checkpoints on one (run, space, step), or two checkpoints of different
  sha256 on one (space, row) (equal ones share it: ``wdb.store.family``);
- a delta row whose parent is missing or damaged (read as ``DamagedFamily``, naming both).

Not problems: *unreferenced* rows, i.e. rows in a Zarr array that no catalog row points to. An
interrupted write leaves them at the array's tail (bytes are written before the catalog commit)
and the next write reuses them; they are reported per space as reclaimable.

``fix=True`` does only what loses nothing committed: it truncates unreferenced tail rows, and
deletes metric and output rows whose checkpoint no longer exists. It never deletes or rewrites a
checkpoint; hash mismatches and missing bytes are reported for a human to decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wdb.store.compact import leftovers
from wdb.store.spaces import row_sha256

#: bytes of weights read per block while hashing.
BLOCK_BYTES = 128 << 20


@dataclass
class FsckReport:
    """What ``fsck`` found (and, with ``fix``, repaired)."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)
    unreferenced: dict[str, int] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _where(c: dict, space: str) -> str:
    run = f"run '{c['run']}'" if c.get("run") is not None else f"run id {c['run_id']}"
    return f"checkpoint {c['id']} ({run} step {c['step']}, space '{space}')"


def _check_space(db, space: dict, report: FsckReport, fix: bool) -> None:
    name, path = space["name"], space["array_path"]
    ck = db.sql(
        "SELECT c.id, c.run_id, c.step, c.row, c.sha256, r.name AS run FROM checkpoints c "
        "LEFT JOIN runs r ON r.id = c.run_id WHERE c.space_id = :s ORDER BY c.row",
        {"s": space["id"]},
    )
    report.checked += len(ck)
    if not db.weights_store.has(path):
        if ck:
            report.problems.append(
                f"space '{name}': its Zarr array {path} is missing ({len(ck)} checkpoints "
                "have no bytes)"
            )
        return
    n_rows = db.weights_store.n_rows(path)
    inside = []
    for c in ck:
        if c["row"] < 0 or c["row"] >= n_rows:
            report.problems.append(
                f"{_where(c, name)}: row {c['row']} is past the array end ({n_rows} rows): "
                "missing bytes"
            )
        else:
            inside.append(c)
    width = max(1, int(space["n_params"]) * np.dtype(space["dtype"]).itemsize)
    block = max(1, BLOCK_BYTES // width)
    for start in range(0, len(inside), block):
        part = inside[start : start + block]
        rows = [c["row"] for c in part]
        try:
            data = db.weights_store.read(path, rows)
        except Exception:
            data = None
        for i, c in enumerate(part):
            try:
                row = data[i] if data is not None else db.weights_store.read(path, [c["row"]])[0]
            except Exception as exc:
                report.problems.append(
                    f"{_where(c, name)}: bytes at row {c['row']} are unreadable ({exc})"
                )
                continue
            if row_sha256(row) != c["sha256"]:
                report.problems.append(
                    f"{_where(c, name)}: sha256 mismatch at row {c['row']} (bytes changed on disk)"
                )
    referenced = _live(db, space["id"]) & set(range(n_rows))
    unref = n_rows - len(referenced)
    if unref:
        report.unreferenced[name] = unref
    tail_start = max(referenced) + 1 if referenced else 0
    if fix and n_rows > tail_start:
        db.weights_store.truncate(path, tail_start)
        report.fixed.append(
            f"space '{name}': truncated {n_rows - tail_start} unreferenced tail rows"
        )


def _live(db, space_id: int) -> set[int]:
    """Rows in use (mark-and-sweep: checkpoints' rows and the parents of live delta rows)."""
    from wdb.store.family import live_rows

    try:
        with db.catalog.begin() as conn:
            return live_rows(conn, space_id)
    except Exception:  # a catalog before revision 0007: no delta rows
        return {
            r["row"] for r in db.sql(f"SELECT row FROM checkpoints WHERE space_id = {space_id}")
        }


def _orphans(db, report: FsckReport, fix: bool) -> None:
    for cid, run_id in (
        (r["id"], r["run_id"])
        for r in db.sql(
            "SELECT c.id, c.run_id FROM checkpoints c LEFT JOIN runs r ON r.id = c.run_id "
            "WHERE r.id IS NULL ORDER BY c.id"
        )
    ):
        report.problems.append(f"checkpoint {cid}: references unknown run id {run_id}")
    for r in db.sql(
        "SELECT c.id, c.space_id FROM checkpoints c LEFT JOIN spaces s ON s.id = c.space_id "
        "WHERE s.id IS NULL ORDER BY c.id"
    ):
        report.problems.append(f"checkpoint {r['id']}: references unknown space id {r['space_id']}")
    for r in db.sql(
        "SELECT space_id, row, count(*) AS n, min(id) AS a, max(id) AS b FROM checkpoints "
        "GROUP BY space_id, row HAVING count(DISTINCT sha256) > 1"
    ):
        report.problems.append(
            f"duplicate rows: {r['n']} checkpoints (ids {r['a']}..{r['b']}) of different sha256 "
            f"share row {r['row']} of space id {r['space_id']}"
        )
    for r in db.sql(
        "SELECT run_id, space_id, step, count(*) AS n FROM checkpoints "
        "GROUP BY run_id, space_id, step HAVING count(*) > 1"
    ):
        report.problems.append(
            f"duplicate rows: {r['n']} checkpoints for run id {r['run_id']} step {r['step']} "
            f"in space id {r['space_id']}"
        )
    for table in ("metrics", "predictions"):
        n = db.sql(
            f"SELECT count(*) AS n FROM {table} m LEFT JOIN checkpoints c "
            "ON c.id = m.checkpoint_id WHERE c.id IS NULL"
        )[0]["n"]
        if not n:
            continue
        if fix:
            db.sql(
                f"DELETE FROM {table} WHERE checkpoint_id NOT IN (SELECT id FROM checkpoints)",
                write=True,
            )
            report.fixed.append(f"{table}: deleted {n} rows of checkpoints that do not exist")
        else:
            report.problems.append(f"{table}: {n} rows reference checkpoints that do not exist")


def _outputs(db, report: FsckReport) -> None:
    for r in db.sql(
        "SELECT array_path, max(row) AS top, count(*) AS n FROM predictions GROUP BY array_path"
    ):
        path = r["array_path"]
        if not db.outputs_store.has(path):
            report.problems.append(f"outputs {path}: array missing ({r['n']} rows point to it)")
        elif r["top"] >= db.outputs_store.n_rows(path):
            report.problems.append(
                f"outputs {path}: row {r['top']} is past the array end "
                f"({db.outputs_store.n_rows(path)} rows): missing bytes"
            )


def fsck(db, fix: bool = False) -> FsckReport:
    """Check hashes, orphans, duplicates and missing bytes; with ``fix``, reclaim what is safe."""
    report = FsckReport()
    with db.write_lock():  # no writer may move the tail while we look at (or truncate) it
        for space in db.sql("SELECT * FROM spaces ORDER BY id"):
            _check_space(db, space, report, fix)
        _orphans(db, report, fix)
        _outputs(db, report)
        for store in (db.weights_store, db.outputs_store):
            for name in leftovers(store):
                report.problems.append(
                    f"{name}: a copy left by an interrupted `wdb compact` (run it again to "
                    "finish or remove it)"
                )
    return report
