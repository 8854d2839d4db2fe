"""Reclaim the bytes of rows no catalog row points to (after ``wdb rm``, an interrupted write,
or outputs that were replaced).

The one place that decides which stored rows are still needed is :func:`referenced`: a weight
row is needed while a ``checkpoints`` row points to it, an outputs row while a ``predictions``
row does. Everything else in an array is an orphan, and is reclaimed in two ways:

- orphans at an array's tail are cut off (the array shrinks; the next write appends there, as
  every writer allocates after the last *referenced* row);
- orphans inside the array are overwritten with zeros: a chunk that becomes all zeros is not
  stored at all (zarr drops chunks equal to the fill value), and a chunk shared with live rows
  shrinks to what its live rows need. Each rewritten region is read back and compared bit for bit
  with what was meant before the next one is touched; on a mismatch the original region is put
  back and the reclaim stops with an error.

Runs under the database's write lock (writers place new rows after the last referenced one and
commit after their bytes, so an uncommitted row past the end must not be cut off by a reclaim
running beside them). Nothing here deletes a catalog row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: outputs arrays whose rows ``predictions`` rows point to (``labels/*`` are kept whole)
OUTPUT_KINDS = ("predictions", "errors", "points")


@dataclass
class ReclaimReport:
    """Per array: orphan rows cut from the tail, orphan rows zeroed, stored bytes before/after."""

    arrays: list[dict] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        return sum(a["bytes_before"] - a["bytes_after"] for a in self.arrays)

    @property
    def rows(self) -> int:
        return sum(a["truncated"] + a["zeroed"] for a in self.arrays)


def live(db: Any, space_id: int) -> set[int]:
    """Rows of a weight space in use: those a checkpoint points to (shared rows count once),
    and every parent of a live delta row (``wdb.store.family.live_rows``)."""
    from wdb.store.family import live_rows

    try:
        with db.catalog.begin() as conn:
            return live_rows(conn, space_id)
    except Exception:  # a catalog before revision 0007: no delta rows
        rows = db.sql("SELECT row FROM checkpoints WHERE space_id = :s", {"s": space_id})
        return {int(r["row"]) for r in rows}


def referenced(db: Any) -> list[tuple[Any, str, set[int]]]:
    """``(store, array path, rows the catalog points to)`` for every array rows are reclaimed
    from: one per weight space, one per outputs array."""
    out: list[tuple[Any, str, set[int]]] = []
    spaces = db.sql("SELECT id, array_path FROM spaces ORDER BY id")
    by_space = {int(s["id"]): live(db, int(s["id"])) for s in spaces}
    for s in spaces:
        if db.weights_store.has(s["array_path"]):
            out.append((db.weights_store, s["array_path"], by_space[int(s["id"])]))
    preds = db.sql("SELECT array_path, row FROM predictions")
    by_path: dict[str, set[int]] = {}
    for p in preds:
        by_path.setdefault(p["array_path"], set()).add(int(p["row"]))
    try:
        members = [name for name, node in db.outputs_store.group.members(max_depth=None)]
    except FileNotFoundError:  # pragma: no cover - a store never written
        members = []
    for name in sorted(members):
        if name.split("/")[0] in OUTPUT_KINDS and db.outputs_store.has(name):
            node = db.outputs_store.array(name)
            if hasattr(node, "shape"):
                out.append((db.outputs_store, name, by_path.get(name, set())))
    return out


def _zero_rows(arr: Any, r0: int, r1: int, holes: list[int], path: str) -> bool:
    """Zero ``holes`` (rows inside ``[r0, r1)``) one column chunk at a time, checking every
    rewrite; returns whether anything was written."""
    n_cols = int(arr.shape[1])
    step = int(arr.chunks[1])
    wrote = False
    for c0 in range(0, n_cols, step):
        c1 = min(n_cols, c0 + step)
        before = np.array(arr[r0:r1, c0:c1])
        want = before.copy()
        want[[h - r0 for h in holes]] = 0
        if want.tobytes() == before.tobytes():
            continue  # already zero (an earlier reclaim)
        arr[r0:r1, c0:c1] = want
        if np.array(arr[r0:r1, c0:c1]).tobytes() != want.tobytes():
            arr[r0:r1, c0:c1] = before
            raise RuntimeError(f"{path}: rows {r0}..{r1 - 1} read back differently; put back")
        wrote = True
    return wrote


def reclaim_array(store: Any, path: str, keep: set[int]) -> dict:
    """Reclaim the orphans of one array (see the module docstring)."""
    arr = store.array(path)
    before = int(arr.nbytes_stored())
    n = int(arr.shape[0])
    end = max(keep) + 1 if keep else 0
    truncated = max(0, n - end)
    if truncated:
        store.truncate(path, end)
        arr = store.array(path)
    holes = sorted(set(range(min(n, end))) - keep)
    rpc = int(arr.chunks[0])
    zeroed = 0
    groups: dict[int, list[int]] = {}
    for h in holes:
        groups.setdefault(h // rpc, []).append(h)
    for g, rows in groups.items():
        r0, r1 = g * rpc, min(end, (g + 1) * rpc)
        if _zero_rows(arr, r0, r1, rows, path):
            zeroed += len(rows)
    after = int(store.array(path).nbytes_stored())
    return {
        "array": f"{store.root.rsplit('/', 1)[-1]}/{path}",
        "truncated": truncated,
        "zeroed": zeroed,
        "bytes_before": before,
        "bytes_after": after,
    }


def reclaim(db: Any, lock: bool = True) -> ReclaimReport:
    """Reclaim orphan rows in every array of ``db``; ``lock=False`` when the caller holds the
    write lock already (``wdb rm`` reclaims inside its own hold)."""
    import contextlib

    report = ReclaimReport()
    with db.write_lock() if lock else contextlib.nullcontext():
        for store, path, keep in referenced(db):
            entry = reclaim_array(store, path, keep)
            if entry["truncated"] or entry["zeroed"]:
                report.arrays.append(entry)
    return report
