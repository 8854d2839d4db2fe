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
deletes metric and output rows whose checkpoint no longer exists. It never deletes a checkpoint.
A checkpoint whose bytes are damaged (hash mismatch, chunk missing or not decodable) is restored
from its source file (``checkpoints.source``) when that file is still there and its row hashes to
the stored ``sha256``; otherwise it is marked damaged (``checkpoints.damaged`` says why, and the
``checkpoint_info`` view shows it) and stays a problem. A chunk that does not decode at all is
rewritten from the restored rows, with zeros for rows in it that could not be restored (their
bytes were lost already; the mark says so).

Every check records the block hashes that reads verify against (``wdb.store.verify``) for rows
written before revision 0006 whose sha256 still matches: that is bookkeeping, not a repair, and
happens with or without ``fix``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from wdb.store.compact import leftovers
from wdb.store.spaces import row_sha256
from wdb.store.tensors import numpy_storage
from wdb.store.verify import chunk_hashes, hash_width

#: ``(source, checkpoint id) -> row`` (storage dtype): a checkpoint re-read from its source file
Reread = Callable[[str, int], np.ndarray]

#: bytes of weights read per block while hashing.
BLOCK_BYTES = 128 << 20


@dataclass
class FsckReport:
    """What ``fsck`` found (and, with ``fix``, repaired)."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)
    unreferenced: dict[str, int] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _where(c: dict, space: str) -> str:
    run = f"run '{c['run']}'" if c.get("run") is not None else f"run id {c['run_id']}"
    return f"checkpoint {c['id']} ({run} step {c['step']}, space '{space}')"


def _check_space(db, space: dict, report: FsckReport, fix: bool, reread: Reread | None) -> None:
    name, path = space["name"], space["array_path"]
    ck = db.sql(
        "SELECT c.id, c.run_id, c.step, c.row, c.sha256, c.chunk_hashes, c.damaged, c.source, "
        "r.name AS run FROM checkpoints c LEFT JOIN runs r ON r.id = c.run_id "
        "WHERE c.space_id = :s ORDER BY c.row",
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
    arr = db.weights_store.array(path)
    width_cols = hash_width(arr)
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
    width = max(1, int(space["n_params"]) * numpy_storage(space["dtype"]).itemsize)
    block = max(1, BLOCK_BYTES // width)
    damaged: list[tuple[dict, str]] = []
    hashes: dict[int, str] = {}  # block hashes to record (rows from before revision 0006)
    healed: list[dict] = []  # marked damaged, verify again
    for start in range(0, len(inside), block):
        part = inside[start : start + block]
        rows = [c["row"] for c in part]
        try:
            data = db.weights_store.read_stored(path, rows, verify=False)
        except Exception:
            data = None
        for i, c in enumerate(part):
            try:
                row = (
                    data[i]
                    if data is not None
                    else db.weights_store.read_stored(path, [c["row"]], verify=False)[0]
                )
            except Exception as exc:
                damaged.append((c, f"bytes at row {c['row']} are unreadable ({exc})"))
                continue
            if row_sha256(row) != c["sha256"]:
                damaged.append((c, f"sha256 mismatch at row {c['row']} (bytes changed on disk)"))
                continue
            if not c["chunk_hashes"]:
                hashes[int(c["id"])] = chunk_hashes(row, width_cols)
            if c["damaged"]:
                healed.append(c)
    if fix and damaged:
        damaged, restored = _restore(db, name, path, arr, damaged, reread, report)
        for c, row in restored:
            if not c["chunk_hashes"]:
                hashes[int(c["id"])] = chunk_hashes(row, width_cols)
            if c["damaged"]:
                healed.append(c)
    for c, why in damaged:
        report.problems.append(f"{_where(c, name)}: {why}")
    _record(db, hashes, healed if fix else [], damaged if fix else [], name, report)
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


def _restore(
    db,
    name: str,
    path: str,
    arr,
    damaged: list[tuple[dict, str]],
    reread: Reread | None,
    report: FsckReport,
) -> tuple[list[tuple[dict, str]], list[tuple[dict, np.ndarray]]]:
    """Rewrite damaged rows from their source files; returns those left damaged (with why, and
    why they could not be restored) and the restored ones with their bytes."""
    from zarr.core.sync import sync

    n_rows, n_cols = int(arr.shape[0]), int(arr.shape[1])
    rpc, cpc = int(arr.chunks[0]), int(arr.chunks[1])
    good: dict[int, np.ndarray] = {}
    left: list[tuple[dict, str]] = []
    for c, why in damaged:
        src = c["source"]
        if not src or reread is None:
            left.append((c, f"{why}; no source file to restore it from"))
            continue
        try:
            row = np.asarray(reread(src, int(c["id"])))
        except Exception as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            left.append((c, f"{why}; its source {src} cannot be read ({msg})"))
            continue
        if row.shape != (n_cols,) or row_sha256(row.astype(arr.dtype, copy=False)) != c["sha256"]:
            left.append((c, f"{why}; its source {src} no longer hashes to the stored sha256"))
            continue
        good[int(c["row"])] = row.astype(arr.dtype, copy=False)
    sp = arr.store_path
    for g in sorted({r // rpc for r in good}):
        r0, r1 = g * rpc, min(n_rows, (g + 1) * rpc)
        for j in range(-(-n_cols // cpc)):
            c0, c1 = j * cpc, min(n_cols, (j + 1) * cpc)
            try:
                region = np.array(arr[r0:r1, c0:c1])
            except Exception:  # the chunk does not decode: every row in it is lost already
                sync(sp.store.delete(f"{sp.path}/{arr.metadata.encode_chunk_key((g, j))}"))
                region = np.zeros((r1 - r0, c1 - c0), dtype=arr.dtype)
            for r, row in good.items():
                if r0 <= r < r1:
                    region[r - r0] = row[c0:c1]
            arr[r0:r1, c0:c1] = region
    restored: list[tuple[dict, np.ndarray]] = []
    for c, _ in damaged:
        r = int(c["row"])
        if r not in good:
            continue
        back = db.weights_store.read_stored(path, [r], verify=False)[0]
        if row_sha256(back) == c["sha256"]:
            report.fixed.append(f"{_where(c, name)}: restored from {c['source']}")
            restored.append((c, back))
        else:  # pragma: no cover - the store did not keep what was just written
            left.append((c, f"row {r} still differs after restoring it from {c['source']}"))
    return left, restored


def _record(
    db,
    hashes: dict[int, str],
    healed: list[dict],
    damaged: list[tuple[dict, str]],
    name: str,
    report: FsckReport,
) -> None:
    """One catalog transaction: block hashes of old rows, damaged marks set and cleared."""
    import sqlalchemy as sa

    from wdb.catalog.schema import checkpoints

    restored = healed
    if not (hashes or restored or damaged):
        return
    upd = (
        sa.update(checkpoints)
        .where(checkpoints.c.id == sa.bindparam("cid"))
        .values(chunk_hashes=sa.bindparam("h"))
    )
    mark = (
        sa.update(checkpoints)
        .where(checkpoints.c.id == sa.bindparam("cid"))
        .values(damaged=sa.bindparam("why"))
    )
    with db.catalog.begin() as conn:
        if hashes:
            conn.execute(upd, [{"cid": k, "h": v} for k, v in hashes.items()])
        if restored:
            conn.execute(mark, [{"cid": int(c["id"]), "why": None} for c in restored])
        if damaged:
            conn.execute(mark, [{"cid": int(c["id"]), "why": why[:500]} for c, why in damaged])
    if hashes:
        report.notes.append(
            f"space '{name}': recorded block hashes of {len(hashes)} rows written before "
            "verified reads (their reads no longer hash whole rows with sha256)"
        )
    for c in restored:
        report.fixed.append(f"{_where(c, name)}: bytes verify again; damaged mark cleared")
    for c, _ in damaged:
        report.fixed.append(f"{_where(c, name)}: marked damaged (see checkpoint_info.damaged)")


def _live(db, space_id: int) -> set[int]:
    """Rows in use (mark-and-sweep: checkpoints' rows and the parents of live delta rows)."""
    from wdb.store.reclaim import live

    return live(db, space_id)


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


def fsck(db, fix: bool = False, reread: Reread | None = None) -> FsckReport:
    """Check hashes, orphans, duplicates and missing bytes; with ``fix``, reclaim what is safe
    and restore damaged rows with ``reread`` (see the module docstring)."""
    report = FsckReport()
    with db.write_lock():  # no writer may move the tail while we look at (or truncate) it
        for space in db.sql("SELECT * FROM spaces ORDER BY id"):
            _check_space(db, space, report, fix, reread)
        _orphans(db, report, fix)
        _outputs(db, report)
        for store in (db.weights_store, db.outputs_store):
            for name in leftovers(store):
                report.problems.append(
                    f"{name}: a copy left by an interrupted `wdb compact` (run it again to "
                    "finish or remove it)"
                )
    return report
