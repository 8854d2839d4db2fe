"""Checkpoints as the store records them, and the one write path every writer uses.

The model types (``Space``, ``NewCheckpoint``, ``CommitResult``, ``KINDS``) and
:func:`write_checkpoints` live here, below ``wdb.db``, so that the database facade, the ingest
pipeline, the generator framework and the query engine all import one public module instead of
each other's private names.

Write protocol: under the database's write lock, read the catalog (existing rows, next free row),
close it, write the bytes to Zarr, then insert every catalog row in one transaction. A crash before
the commit leaves only unreferenced rows past the last referenced one; the next write reuses them
and ``wdb fsck`` reports them. A row is visible only once its bytes are on disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wdb.catalog.dialect import insert_many, next_ids
from wdb.errors import BadInput
from wdb.store.lineage import Plan, place
from wdb.store.spaces import Layout, row_sha256
from wdb.store.tensors import BITS, to_stored
from wdb.store.verify import chunk_hashes, hash_width

#: what a checkpoint is: a training checkpoint, a generator's sample, a baseline's sample, an
#: autoencoder reconstruction, or a generator's own network.
KINDS = ("training", "generated", "baseline", "reconstructed", "model")


@dataclass(frozen=True)
class Space:
    """A weight space as stored: catalog id, name, layout, and its Zarr array path."""

    id: int
    name: str
    layout: Layout
    array_path: str

    @property
    def n_params(self) -> int:
        return self.layout.n_params


@dataclass
class RowStream:
    """A row too large to hold in memory twice (a sharded checkpoint), given as a callable that
    yields its consecutive segments (storage dtype) each time it is called. ``write_checkpoints``
    streams it into the store chunk by chunk and checks the content hash on the way."""

    n: int
    segments: Callable[[], Iterable[np.ndarray]]
    #: the xxh3_128 of the row, when the pass that took its sha256 also took it: the write
    #: checks the bytes it streams against it (xxh3, which the write takes anyway) instead of
    #: a second sha256 pass (``wdb.ingest.pool.row_hash``)
    xxh3: str | None = None
    #: its sketch (``wdb.store.family.sketch``), when the hashing pass also took it
    sketch: bytes | None = None
    #: bytes per value in the storage dtype
    itemsize: int = 4
    #: the segments are views of a mapped file (its pages count in this process's memory)
    mapped: bool = False


@dataclass
class NewCheckpoint:
    """One checkpoint waiting to be written: its row plus everything the catalog records.

    ``meta`` is free-form JSON kept with the checkpoint (non-tensor entries of a source file, the
    optimizer step of a Lightning bundle, ...).
    """

    run: str
    step: int
    row: np.ndarray | RowStream
    kind: str = "training"
    zoo: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    split: str | None = None
    source: str | None = None
    run_config: dict | None = None
    generator_run_id: int | None = None
    sha256: str = ""
    meta: dict | None = None

    #: a declared parent, ``RUN`` or ``RUN:STEP`` (``wdb ingest --base``; a Hugging Face
    #: ``_name_or_path``): the lineage and delta parent when that run is in the store
    base: str | None = None

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = row_sha256(self.row)

    @property
    def row_nbytes(self) -> int:
        """Bytes of the row as given."""
        if isinstance(self.row, RowStream):
            return self.row.n * self.row.itemsize
        return int(np.asarray(self.row).nbytes)


@dataclass
class CommitResult:
    """What one :func:`write_checkpoints` did: ids of new checkpoints, and the ones it left."""

    added: list[int] = field(default_factory=list)
    existing: list[int] = field(default_factory=list)
    conflicts: list[tuple[NewCheckpoint, str]] = field(default_factory=list)


def to_json(value: Any) -> str | None:
    """JSON text for a catalog column (keys sorted, so equal configs compare equal)."""
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def reported_eval_set(conn: Any, zoo: str | None) -> int:
    """Eval set for metrics a source reported (wdb did not compute them): ``reported:<zoo>``."""
    import sqlalchemy as sa

    from wdb.catalog.schema import eval_sets

    name = f"reported:{zoo or 'default'}"
    found = conn.execute(sa.select(eval_sets.c.id).where(eval_sets.c.name == name)).first()
    if found:
        return int(found[0])
    return int(
        conn.execute(
            eval_sets.insert()
            .values(name=name, task=None, split="reported")
            .returning(eval_sets.c.id)
        ).scalar_one()
    )


def _has_chunk_hashes(conn: Any) -> bool:
    """Whether the catalog is at revision 0006 or later (``checkpoints.chunk_hashes``): a
    ``Database`` opened without upgrading may write into an older schema."""
    import sqlalchemy as sa

    rev = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    return rev is not None and rev[:4].isdigit() and rev[:4] >= "0006"


def write_checkpoints(
    db: Any, space: Space, items: list[NewCheckpoint], run_prefix: str = "gen_"
) -> CommitResult:
    """Write ``items`` into ``space``: bytes first, then one catalog transaction.

    ``db`` is a ``wdb.db.Database`` (anything with ``write_lock()``, ``catalog`` and
    ``weights_store``). Items whose (run, step) already exists with the same hash are reported in
    ``existing``; with a different hash, in ``conflicts``; nothing about them is written. Runs
    without a name get ``<run_prefix><run id>``. See the module docstring for the crash story.
    """
    import sqlalchemy as sa

    from wdb.catalog.schema import checkpoints, metrics, runs

    result = CommitResult()
    if not items:
        return result
    with db.write_lock():
        # 1. what exists, and where the free rows start
        named = sorted({it.run for it in items if it.run})
        existing: dict[tuple[str, int], tuple[int, str]] = {}
        with db.catalog.begin() as conn:
            if named:
                q = (
                    sa.select(
                        runs.c.name, checkpoints.c.step, checkpoints.c.id, checkpoints.c.sha256
                    )
                    .select_from(checkpoints.join(runs, runs.c.id == checkpoints.c.run_id))
                    .where(checkpoints.c.space_id == space.id, runs.c.name.in_(named))
                )
                for name, step, cid, sha in conn.execute(q):
                    existing[(name, int(step))] = (int(cid), sha)
            max_row = conn.execute(
                sa.select(sa.func.max(checkpoints.c.row)).where(checkpoints.c.space_id == space.id)
            ).scalar()
            start = 0 if max_row is None else int(max_row) + 1
            fresh = _fresh(items, existing, result)
            # 2. places (shared rows, delta parents: wdb.store.lineage), then bytes
            wide = _wide(db, space)
            plans = place(conn, space, fresh, start, wide) if fresh else []
            kept_key = _kept_key(conn, db.weights_store, space) if wide and fresh else None
        if not fresh:
            return result
        # 2b. bytes, and the block hashes every later read is checked against
        key_cache: list = list(kept_key or (None, None))
        written, hashes = _write_bytes(db, space, fresh, plans, wide, key_cache)
        # 3. one catalog transaction
        with db.catalog.begin() as conn:
            run_ids: dict[str, int] = {}
            if named:
                for rid, name in conn.execute(
                    sa.select(runs.c.id, runs.c.name).where(runs.c.name.in_(named))
                ):
                    run_ids[name] = int(rid)
            # ids come from the sequences in one round trip each (not one per row)
            opening: list[NewCheckpoint] = []
            opening_names: set[str] = set()
            for it in fresh:
                if not it.run or (it.run not in run_ids and it.run not in opening_names):
                    opening.append(it)
                    if it.run:
                        opening_names.add(it.run)
            run_rows = []
            for it, rid in zip(opening, next_ids(conn, "runs_id_seq", len(opening)), strict=True):
                it.run = it.run or f"{run_prefix}{rid}"
                run_ids[it.run] = rid
                run_rows.append(
                    dict(
                        id=rid,
                        name=it.run,
                        zoo=it.zoo,
                        kind=it.kind,
                        generator_run_id=it.generator_run_id,
                        config=to_json(it.run_config),
                        source=str(Path(it.source).parent) if it.source else None,
                    )
                )
            eval_set_id = None
            with_meta = any(it.meta for it in fresh)  # the column is absent before revision 0005
            with_hashes = _has_chunk_hashes(conn)  # absent before revision 0006
            ck_rows, metric_rows = [], []
            cids = next_ids(conn, "checkpoints_id_seq", len(fresh))
            for i, (it, cid) in enumerate(zip(fresh, cids, strict=True)):
                ck_rows.append(
                    dict(
                        id=cid,
                        run_id=run_ids[it.run],
                        space_id=space.id,
                        step=it.step,
                        row=plans[i].row,
                        sha256=it.sha256,
                        split=it.split,
                        source=it.source,
                    )
                )
                if with_meta:
                    ck_rows[-1]["meta"] = to_json(it.meta)
                if with_hashes:
                    ck_rows[-1]["chunk_hashes"] = hashes[i] or _shared_hashes(conn, space, plans[i])
                if it.metrics:
                    if eval_set_id is None:
                        eval_set_id = reported_eval_set(conn, it.zoo)
                    metric_rows += [
                        dict(checkpoint_id=cid, eval_set_id=eval_set_id, name=k, value=float(v))
                        for k, v in it.metrics.items()
                    ]
                result.added.append(cid)
            insert_many(conn, runs, run_rows)
            insert_many(conn, checkpoints, ck_rows)
            insert_many(conn, metrics, metric_rows)
            _record_family(conn, space, fresh, plans, written, cids)
        if wide and key_cache[0] is not None:  # committed: a later batch may start from it
            from wdb.store.family import digest

            db.weights_store.family_key = (space.array_path, *key_cache, digest(key_cache[1]))
    return result


def as_stored(space: Space, rows: Any) -> np.ndarray:
    """Rows in ``space``'s stored form. bf16 bits and float values are never cast into each
    other as numbers: a bf16 space narrows float values exactly (else refuses), and bits
    given to any other space are refused."""
    rows = np.asarray(rows)
    storage = space.layout.storage_dtype
    if storage in BITS:
        return to_stored(rows, storage, space.name)
    if rows.dtype == np.uint16:
        raise BadInput(f"bf16 bit patterns given for space '{space.name}', which stores {storage}")
    return rows.astype(storage, copy=False)


def _kept_key(conn: Any, store: Any, space: Space) -> tuple[int, np.ndarray] | None:
    """The key row the previous batch of this store decoded, ``(row, values)``, if that row
    still holds the same values (its ``family_rows.digest``): the children of one base come
    in batch after batch, and decoding the base again for each batch had cost a tenth of a
    family's ingest."""
    import sqlalchemy as sa

    kept = getattr(store, "family_key", None)
    if kept is None or kept[0] != space.array_path:
        return None
    got = conn.execute(
        sa.text("SELECT digest FROM family_rows WHERE space_id = :s AND row = :r"),
        {"s": space.id, "r": kept[1]},
    ).scalar()
    if got != kept[3]:
        store.family_key = None
        return None
    return kept[1], kept[2]


def _fresh(
    items: list[NewCheckpoint], existing: dict[tuple[str, int], tuple[int, str]], result: Any
) -> list[NewCheckpoint]:
    """The items to write: not already stored (``result.existing``), not conflicting."""
    fresh: list[NewCheckpoint] = []
    seen: set[tuple[str, int]] = set()
    for it in items:
        key = (it.run, it.step)
        if it.run and key in existing:
            cid, sha = existing[key]
            if sha == it.sha256:
                result.existing.append(cid)
            else:
                result.conflicts.append((it, "already stored with different content"))
            continue
        if it.run and key in seen:
            result.conflicts.append((it, "appears twice in this batch"))
            continue
        seen.add(key)
        fresh.append(it)
    return fresh


def _wide(db: Any, space: Space) -> bool:
    """Whether ``space``'s array is one row per chunk (deltas and sketches apply)."""
    from wdb.store.family import is_family

    store = db.weights_store
    return store.has(space.array_path) and is_family(store.array(space.array_path))


def _write_bytes(
    db: Any,
    space: Space,
    fresh: list[NewCheckpoint],
    plans: list[Plan],
    wide: bool,
    key_cache: list,
) -> tuple[dict[int, Any], list[str | None]]:
    """Write the rows that are not shared; wide rows through ``wdb.store.family.write_row``
    (against their planned parent). Returns ``family.Written`` per index of ``fresh``, and
    each row's block hashes (``wdb.store.verify.chunk_hashes``; None for a shared row streamed
    from a file: it takes the stored row's)."""
    from wdb.store import family

    store, path = db.weights_store, space.array_path
    width = hash_width(store.array(path))
    todo = [i for i, p in enumerate(plans) if not p.shared]
    written: dict[int, Any] = {}
    hashes: list[str | None] = [
        chunk_hashes(as_stored(space, it.row), width)
        if not isinstance(it.row, RowStream) and (not wide or plans[i].shared)
        else None
        for i, it in enumerate(fresh)
    ]
    if wide:
        # key_cache: the key row decoded last (row, values): children share it
        by_row: dict[int, int] = {}  # row -> index in fresh, for rows written in this batch
        for i in todo:
            it, plan = fresh[i], plans[i]
            parent = _parent_of(store, path, plan, written, by_row, key_cache)
            if isinstance(it.row, RowStream):
                n, segs = it.row.n, (as_stored(space, seg) for seg in it.row.segments())
            else:
                row = as_stored(space, it.row).reshape(-1)
                n, segs = row.size, iter([row])
            stream = isinstance(it.row, RowStream)
            by_sha = stream and it.row.xxh3 is None  # else checked by the xxh3 taken anyway
            written[i] = family.write_row(store, path, plan.row, n, segs, parent, sha256=by_sha)
            by_row[plan.row] = i
            hashes[i] = written[i].chunk_hashes
            if stream and (
                written[i].sha256 != it.sha256 if by_sha else written[i].digest != it.row.xxh3
            ):
                raise BadInput(f"{it.source or it.run}: file changed while being ingested")
        return written, hashes
    if any(isinstance(fresh[i].row, RowStream) for i in todo):  # one at a time, streamed
        for i in todo:
            it = fresh[i]
            if isinstance(it.row, RowStream):
                segs = (as_stored(space, seg) for seg in it.row.segments())
                got, hashes[i] = store.write_stream(path, plans[i].row, it.row.n, segs)
                if got != it.sha256:
                    raise BadInput(f"{it.source or it.run}: file changed while being ingested")
            else:
                store.write(path, plans[i].row, as_stored(space, it.row)[None])
    elif todo:
        # one item (a large model): a view, not a second copy of its row
        rows = [np.asarray(fresh[i].row) for i in todo]
        block = rows[0][None] if len(rows) == 1 else np.stack(rows)
        block = as_stored(space, block)
        store.write(path, plans[todo[0]].row, block)
    return written, hashes


def _parent_of(
    store: Any, path: str, plan: Plan, written: dict, by_row: dict[int, int], key_cache: list
) -> Any:
    """What ``family.write_row`` needs of ``plan``'s parent: the key row's values (decoded once
    for all the children that share it) and the parent's block hashes and tokens."""
    from wdb.store import family

    if plan.parent_row is None:
        return None
    key = None
    if plan.key_row is not None:
        if key_cache[0] != plan.key_row:
            key_cache[:] = [None, None]  # one key row held at a time
            j = by_row.get(plan.key_row)
            if j is not None:  # written in this batch: the catalog does not know its tokens yet
                values = family.read_key(store, path, plan.key_row, written[j].tokens)
            else:
                values = store.read_stored(path, [plan.key_row])[0]
            key_cache[:] = [plan.key_row, values]
        key = key_cache[1]
    j = by_row.get(plan.parent_row)
    if j is not None:
        w = written[j]
        text, tokens = w.chunk_hashes, w.tokens
        same_key = plan.same_key and w.delta
    else:
        text = plan.parent_hashes
        tokens = family.parse_tokens(plan.parent_tokens, plan.parent_row)
        same_key = plan.same_key
    width = int(store.array(path).chunks[1])
    blocks = None
    if text and int(text.partition(":")[0]) == width:
        blocks = bytes.fromhex(text.partition(":")[2])
    return family.Parent(plan.key_row, key, plan.parent_row, blocks, tokens, same_key)


def _shared_hashes(conn: Any, space: Space, plan: Plan) -> str | None:
    """The block hashes already recorded for the stored row a shared checkpoint points to."""
    import sqlalchemy as sa

    from wdb.catalog.schema import checkpoints

    return conn.execute(
        sa.select(checkpoints.c.chunk_hashes)
        .where(checkpoints.c.space_id == space.id, checkpoints.c.row == plan.row)
        .where(checkpoints.c.chunk_hashes.is_not(None))
        .limit(1)
    ).scalar()


def _record_family(
    conn: Any,
    space: Space,
    fresh: list[NewCheckpoint],
    plans: list[Plan],
    written: dict[int, Any],
    cids: list[int],
) -> None:
    """Insert ``family_rows`` for new wide rows and ``lineage`` for every inferred parent."""
    from wdb.catalog.schema import family_rows, lineage
    from wdb.store import family

    fam, lin = [], []
    for i, plan in enumerate(plans):
        w = written.get(i)
        if w is not None:
            # a delta row's parent_row is its key row; a row that only borrows values, the
            # row it borrows from (so the rows it reads through stay live)
            parent_row = (plan.key_row if w.delta else plan.parent_row) if w.tokens else None
            fam.append(
                dict(
                    space_id=space.id,
                    row=plan.row,
                    parent_row=parent_row,
                    delta_chunks=family.format_tokens(w.tokens, plan.row) if w.tokens else None,
                    depth=1 if w.delta else 0,
                    digest=w.digest,
                    sketch=w.sketch,
                )
            )
        if plan.parent_ref is None:
            continue
        saved = fresh[i].row_nbytes if plan.shared else (w.bytes_saved if w else 0)
        if plan.reason == "found" and not saved and plan.parent_row is not None:
            continue  # a nearest row whose delta saved nothing is no parent
        parent = plan.parent_ref if plan.parent_ref >= 0 else cids[-plan.parent_ref - 1]
        lin.append(
            dict(
                child_id=cids[i],
                parent_id=parent,
                reason=plan.reason,
                distance=plan.distance,
                bytes_saved=int(saved),
            )
        )
    insert_many(conn, family_rows, fam)
    insert_many(conn, lineage, lin)
