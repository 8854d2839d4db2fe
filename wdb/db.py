"""The ``Database``: a directory holding the SQL catalog and the Zarr stores, and the one API
that the CLI, ingest readers, generators and analyses all go through.

Layout of a database directory::

    catalog.duckdb   the SQL catalog (unless WDB_CATALOG_URL points elsewhere)
    weights.zarr/    one 2-D array per weight space: spaces/<space id>
    outputs.zarr/    predictions and point clouds per eval set
    index/           FAISS indexes
    .write.lock      serialises writers (bytes first, then one catalog transaction)

The two Zarr stores may live on object storage instead (``WDB_STORE_URL=s3://bucket/prefix`` or
``--store``: any fsspec URL, credentials and endpoint from the usual ``AWS_*`` variables); they are
then ``<url>/weights.zarr`` and ``<url>/outputs.zarr``. A bucket has no file lock, so with a
PostgreSQL catalog the writers' lock is a PostgreSQL advisory lock instead of ``.write.lock``:
writers on different machines that share the catalog and the bucket take turns per commit.

Writes go through :meth:`Database.write_checkpoints` (the protocol lives in ``wdb.store.write``):
under the write lock, bytes first, then one catalog transaction, so a row is visible only once
its bytes are on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wdb.catalog.connect import Catalog
from wdb.errors import BadInput, NotFound, WdbError
from wdb.query.listing import Listings
from wdb.store.arrays import ArrayStore
from wdb.store.housekeeping import Housekeeping
from wdb.store.spaces import Layout
from wdb.store.tensors import to_stored, values_of
from wdb.store.verify import RowHashes
from wdb.store.write import (  # noqa: F401  (KINDS, CommitResult: re-exported)
    KINDS,
    CommitResult,
    NewCheckpoint,
    Space,
    write_checkpoints,
)

if TYPE_CHECKING:
    from wdb.ingest.pipeline import IngestReport
    from wdb.store.compact import CompactReport
    from wdb.store.fsck import FsckReport
    from wdb.study.contract import GenerateReport
    from wdb.study.evaluate import EvalReport

DEFAULT_DB = ".wdb"
#: the PostgreSQL advisory-lock key of the writers' lock ("wdbw" in ASCII)
WRITE_LOCK = 0x77646277


def resolve_path(path: str | os.PathLike | None = None) -> Path:
    """``--db`` beats ``WDB_DB`` beats ``./.wdb``."""
    return Path(path or os.environ.get("WDB_DB") or DEFAULT_DB)


@dataclasses.dataclass(frozen=True)
class Handle:
    """What a worker process needs to reopen a database: its folder, catalog URL and store URL.

    Passed to engine workers instead of a ``Database`` (a connection does not travel); the
    layers below ``db`` call ``handle.open()`` and so never import this module.
    """

    path: str
    catalog_url: str
    store_url: str | None

    def open(self) -> Database:
        return Database(self.path, self.catalog_url, self.store_url)


class Database(Listings, Housekeeping):
    """A wdb database directory. Cheap to construct; connections open per operation.

    Listings (``runs``, ``checkpoints``, ``search_runs``, ``search_checkpoints``, ...) come from
    :class:`wdb.query.listing.Listings`; ``rm``, ``tag`` and ``note`` from
    :class:`wdb.store.housekeeping.Housekeeping`.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        catalog_url: str | None = None,
        store_url: str | None = None,
    ):
        self.path = resolve_path(path)
        url = catalog_url or os.environ.get("WDB_CATALOG_URL")
        self.catalog = Catalog(url or f"duckdb:///{self.path / 'catalog.duckdb'}")
        self.store_url = (store_url or os.environ.get("WDB_STORE_URL") or "").rstrip("/") or None
        base = self.store_url or str(self.path)
        self.weights_store = ArrayStore(f"{base}/weights.zarr")
        # every row read from the weight store is checked against the catalog's hashes
        self.weights_store.verifier = RowHashes(
            self.catalog.query_rows, self.catalog.duckdb_file is not None
        )
        self.outputs_store = ArrayStore(f"{base}/outputs.zarr")
        self._spaces: dict[int, Space] = {}
        _decode_families(self)

    def handle(self) -> Handle:
        """A small picklable handle that reopens this database in another process."""
        return Handle(str(self.path), self.catalog.url, self.store_url)

    # -- lifecycle -------------------------------------------------------------------------
    def init(self) -> Database:
        """Create the directory and bring the catalog schema to this code's head."""
        if self.path.exists() and not self.path.is_dir():
            raise WdbError(f"{self.path}: exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self.catalog.ensure_schema()
        return self

    @property
    def index_dir(self) -> Path:
        return self.path / "index"

    @property
    def outputs_dir(self) -> Path:
        return self.path / "outputs"

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Serialise writers across processes (Zarr row allocation + catalog commit).

        Held for one batch, not a whole command, so two ingests interleave batch by batch. A
        writer that finds it taken says so once ("waiting for the write lock held by pid N") and
        waits up to ``--wait`` seconds (``WDB_LOCK_WAIT``, default 60), then fails in one line.
        The holder's pid is written into the lock file for that message.
        """
        import time

        from wdb.catalog.connect import lock_wait_s, waiting
        from wdb.errors import CatalogLocked

        if self.catalog.dialect == "postgresql":
            with self.catalog.advisory_lock(WRITE_LOCK, "write lock"):
                yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / ".write.lock"
        with lock.open("a+") as fh:
            wait = lock_wait_s()
            deadline = time.monotonic() + wait
            said = False
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    fh.seek(0)
                    holder = fh.read().strip() or None
                    if time.monotonic() > deadline:
                        raise CatalogLocked(
                            f"{lock}: another writer (pid {holder or '?'}) held the write lock "
                            f"for more than {wait:g} s; try again when it finishes, or raise --wait"
                        ) from None
                    if not said and wait > 0:
                        waiting("write lock", holder, wait)
                        said = True
                    time.sleep(0.05)
            try:
                fh.seek(0)
                fh.truncate()
                fh.write(str(os.getpid()))
                fh.flush()
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- SQL -------------------------------------------------------------------------------
    def sql(
        self, query: str, params: dict | None = None, write: bool = False, what: str = "SQL"
    ) -> list[dict]:
        """Run SQL against the catalog; rows as dicts. Without ``write``: exactly one statement
        that reads (``wdb.catalog.guard``), else :class:`BadInput` in one line (``what`` names
        it), as is a database error."""
        if write:
            cols, rows = self.catalog.execute(query, params)
        else:
            from wdb.catalog.guard import read

            cols, rows = read(self.catalog, query, params, what)
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def selection(self, where: str | None, what: str = "selection") -> str | None:
        """``where`` checked as one SQL filter expression that reads (for splicing into a
        ``WHERE``), else :class:`BadInput` in one line."""
        from wdb.catalog.guard import check_selection

        return check_selection(where, self.catalog.dialect, what)

    # -- spaces ----------------------------------------------------------------------------
    def _space_from_row(self, row: Mapping[str, Any]) -> Space:
        space = Space(
            int(row["id"]), row["name"], Layout.from_json(row["layout"]), row["array_path"]
        )
        self._spaces[space.id] = space
        return space

    def space(self, key: int | str) -> Space:
        """A space by id, name, or hash prefix."""
        if isinstance(key, int | np.integer) and int(key) in self._spaces:
            return self._spaces[int(key)]
        if isinstance(key, int | np.integer) or (isinstance(key, str) and key.isdigit()):
            rows = self.sql("SELECT * FROM spaces WHERE id = :k", {"k": int(key)})
        else:
            rows = self.sql(
                "SELECT * FROM spaces WHERE name = :k OR hash LIKE :p", {"k": key, "p": f"{key}%"}
            )
        if len(rows) != 1:
            raise NotFound(
                f"space '{key}' not found" if not rows else f"space '{key}' is ambiguous"
            )
        return self._space_from_row(rows[0])

    def spaces(self) -> list[dict]:
        return self.sql(
            "SELECT s.id, s.name, s.n_params, s.dtype, count(c.id) AS checkpoints, s.hash "
            "FROM spaces s LEFT JOIN checkpoints c ON c.space_id = s.id "
            "GROUP BY s.id, s.name, s.n_params, s.dtype, s.hash ORDER BY s.id"
        )

    def ensure_space(self, layout: Layout, name: str | None = None) -> Space:
        """The space of ``layout``, creating its catalog row and Zarr array on first use."""
        rows = self.sql("SELECT * FROM spaces WHERE hash = :h", {"h": layout.hash})
        if rows:
            return self._space_from_row(rows[0])
        import sqlalchemy as sa

        from wdb.catalog.schema import spaces

        with self.write_lock(), self.catalog.begin() as conn:
            found = conn.execute(sa.select(spaces).where(spaces.c.hash == layout.hash)).first()
            if found is not None:
                return self._space_from_row(found._mapping)
            wanted = name or layout.default_name()
            taken = {r[0] for r in conn.execute(sa.select(spaces.c.name))}
            final, i = wanted, 2
            while final in taken:
                final, i = f"{wanted}-{i}", i + 1
            new_id = conn.execute(sa.text("SELECT nextval('spaces_id_seq')")).scalar_one()
            path = f"spaces/{new_id}"
            self.weights_store.create(
                path, layout.n_params, layout.storage_dtype, attrs={"space": final}
            )
            conn.execute(
                spaces.insert().values(
                    id=new_id,
                    name=final,
                    hash=layout.hash,
                    n_params=layout.n_params,
                    dtype=layout.storage_dtype,
                    layout=layout.to_json(),
                    array_path=path,
                )
            )
        return self.space(int(new_id))

    # -- runs and checkpoints: listings in wdb.query.listing (Listings) --------------------
    def _locate(self, ids: Sequence[int]) -> list[dict]:
        """Rows of checkpoints and their hashes (one query; primes the verifier)."""
        names, found = self.weights_store.verifier.locate(ids)
        return [dict(zip(names, t, strict=True)) for t in found]

    def checkpoint(self, run: str, step: int | None = None) -> dict:
        """One checkpoint of a run (the given step, or its last one), its row's hashes fetched
        on the same catalog connection: a one-shot read (``wdb export``) connects once."""
        with self.catalog.reading():
            info = super().checkpoint(run, step)
            self._locate([info["checkpoint_id"]])
        return info

    def weights(self, ids: Sequence[int], cols: Any = None) -> np.ndarray:
        """Rows of the given checkpoints, ``[n, D]`` in the order given (one space only)."""
        names, found = self.weights_store.verifier.locate(ids)  # tuples: no dict per row
        if not found:
            return np.empty((0, 0), dtype=np.float32)
        at = {k: i for i, k in enumerate(names)}
        space_ids = {t[at["space_id"]] for t in found}
        if len(space_ids) > 1:
            raise WdbError(f"checkpoints span {len(space_ids)} weight spaces; select one space")
        rows = np.array([t[at["row"]] for t in found], dtype=np.int64)
        return self.weights_store.read(found[0][at["array_path"]], rows, cols)

    def iter_weights(
        self, ids: Sequence[int], batch: int = 4096
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Stream ``(ids, rows)`` blocks for selections too large to hold at once."""
        ids = list(ids)
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            yield chunk, self.weights(chunk)

    def iter_tensors(
        self, checkpoint: int | dict, memory: int | str | None = None, bits: bool = False
    ) -> Iterator[tuple[Any, np.ndarray]]:
        """``(layout entry, array in its original dtype)`` of one checkpoint, tensor by tensor
        (bf16 as float32; ``bits``: a bf16 space's ``uint16`` bits as stored, for exports).

        A row that fits the memory budget (``wdb.memory``; three copies of it while reading) is
        read whole; a wider one is read a group of consecutive tensors at a time (at most a
        quarter of the budget each, one tensor when it alone is bigger), so an export of a big
        checkpoint never holds the whole row."""
        from wdb.memory import budget
        from wdb.store.tensors import from_storage, value_dtype

        info = checkpoint if isinstance(checkpoint, dict) else self._locate([checkpoint])[0]
        space = self.space(int(info["space_id"]))
        entries = space.layout.entries
        isz = value_dtype(space.layout.storage_dtype).itemsize
        limit = budget(memory)
        row_at = np.array([int(info["row"])])
        store = self.weights_store
        raw = bits and store.storage(space.array_path) is not None
        read = store.read_stored if raw else store.read
        as_is = (lambda arr, _dtype: arr) if raw else from_storage
        if space.n_params * isz * 3 <= limit:
            row = read(space.array_path, row_at)[0]
            for e in entries:
                yield e, as_is(row[e.offset : e.stop], e.dtype).reshape(e.shape)
            return
        group: list = []
        for i, e in enumerate(entries):
            group.append(e)
            nxt = entries[i + 1] if i + 1 < len(entries) else None
            if nxt is not None and (nxt.stop - group[0].offset) * isz * 4 <= limit:
                continue
            cols = slice(group[0].offset, group[-1].stop)
            block = read(space.array_path, row_at, cols)[0]
            for g in group:
                a, b = g.offset - group[0].offset, g.stop - group[0].offset
                yield g, as_is(block[a:b], g.dtype).reshape(g.shape)
            del block
            group = []

    def state_dict(
        self, checkpoint: int | dict, as_numpy: bool = False, memory: int | str | None = None
    ) -> dict[str, Any]:
        """The checkpoint as a state dict of torch tensors in their original dtypes, read
        tensor by tensor (:meth:`iter_tensors`): one copy of the model, not three."""
        if as_numpy:
            return {e.name: a for e, a in self.iter_tensors(checkpoint, memory)}
        from wdb.store.tensors import to_torch

        tensors = self.iter_tensors(checkpoint, memory, bits=True)
        return {e.name: to_torch(a, e.dtype) for e, a in tensors}

    # -- writing ---------------------------------------------------------------------------
    def add_checkpoints(
        self,
        space: Space | Layout | str | int,
        rows: np.ndarray,
        run: str | Sequence[str] | None = None,
        kind: str = "generated",
        steps: Sequence[int] | None = None,
        zoo: str | None = None,
        metrics: Sequence[dict[str, float]] | None = None,
        generator_run_id: int | None = None,
        run_config: dict | None = None,
        run_prefix: str = "gen_",
    ) -> list[int]:
        """Write rows (``[n, D]``) as checkpoints; returns their ids in order.

        ``run`` names one run for all rows (steps 0..n-1 unless ``steps``), a list names a run
        per row, and ``None`` makes each row its own run named ``<run_prefix><run id>``
        (``gen_123``), as generators do.
        """
        if kind not in KINDS:
            raise BadInput(f"kind must be one of {', '.join(KINDS)}, not '{kind}'")
        if isinstance(space, Layout):
            space = self.ensure_space(space)
        elif not isinstance(space, Space):
            space = self.space(space)
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != space.n_params:
            raise BadInput(
                f"rows have shape {list(rows.shape)}, space '{space.name}' needs [n, {space.n_params}]"
            )
        if not np.isfinite(rows).all():
            raise BadInput("rows contain NaN or Inf values")
        # a bf16 space stores bf16: float32 values are rounded as torch's cast rounds
        rows = to_stored(rows, space.layout.storage_dtype, space.name, exact=False)
        n = rows.shape[0]
        if run is None:
            names: list[str | None] = [None] * n
        elif isinstance(run, str):
            names = [run] * n
        else:
            names = list(run)
        step_list = (
            list(steps)
            if steps is not None
            else (list(range(n)) if isinstance(run, str) else [0] * n)
        )
        items = [
            NewCheckpoint(
                run=names[i] or "",
                step=int(step_list[i]),
                row=rows[i],
                kind=kind,
                zoo=zoo,
                metrics=dict(metrics[i]) if metrics else {},
                generator_run_id=generator_run_id,
                run_config=run_config,
            )
            for i in range(n)
        ]
        result = self.write_checkpoints(space, items, run_prefix=run_prefix)
        if result.conflicts:
            item, why = result.conflicts[0]
            raise BadInput(f"run '{item.run}' step {item.step}: {why}")
        return result.added + result.existing

    def write_checkpoints(
        self, space: Space, items: list[NewCheckpoint], run_prefix: str = "gen_"
    ) -> CommitResult:
        """Write ``items`` into ``space`` (bytes first, then one catalog transaction); see
        :func:`wdb.store.write.write_checkpoints`."""
        return write_checkpoints(self, space, items, run_prefix=run_prefix)

    def add_metrics(self, rows: Iterable[dict], replace: bool = True) -> int:
        """Insert metric rows ``{checkpoint_id, eval_set_id, name, value}`` (upsert by key).

        The replaced rows go in one ``DELETE`` per (eval set, metric name), not one per row: a
        forced re-evaluation of 2,000 checkpoints had spent 6 s in 4,000 single-row deletes."""
        import sqlalchemy as sa

        from wdb.catalog.schema import metrics
        from wdb.study.tasks.base import id_in

        rows = list(rows)
        if not rows:
            return 0
        with self.catalog.begin() as conn:
            if replace:
                keys: dict[tuple, set[int]] = {}
                for r in rows:
                    keys.setdefault((r["eval_set_id"], r["name"]), set()).add(
                        int(r["checkpoint_id"])
                    )
                # the ids as one list parameter (``id_in``), not one bind each: PostgreSQL's
                # driver takes at most 65,535 parameters a statement
                drop = sa.text(
                    f"DELETE FROM {metrics.name} WHERE eval_set_id = :e AND name = :n "
                    f"AND {id_in(self, 'checkpoint_id')}"
                )
                for (eid, name), ids in keys.items():
                    conn.execute(drop, {"e": eid, "n": name, "ids": sorted(ids)})
            conn.execute(metrics.insert(), rows)
        return len(rows)

    # -- higher-level operations (implemented in their own modules) -------------------------
    def ingest(
        self,
        path: str | os.PathLike,
        zoo: str | None = None,
        kind: str | None = None,
        format: str | None = None,  # noqa: A002 - the CLI's --format
        strict: bool = False,
        space: str | None = None,
        generator: str | None = None,
        trained_on: str | None = None,
        generator_config: dict | None = None,
        allow_outside: bool = False,
        base: str | None = None,
    ) -> IngestReport:
        """Ingest a folder or file of checkpoints; see :func:`wdb.ingest.pipeline.ingest`
        (``base``: the declared parent ``RUN[:STEP]`` of every new checkpoint)."""
        from wdb.ingest.pipeline import ingest

        return ingest(
            self,
            Path(path),
            zoo=zoo,
            kind=kind,
            format=format,
            strict=strict,
            space=space,
            generator=generator,
            trained_on=trained_on,
            generator_config=generator_config,
            allow_outside=allow_outside,
            base=base,
        )

    def nearest(self, run: str | int | Mapping, step: int | None = None, **kw: Any) -> list[dict]:
        """k nearest checkpoints of a run name, a checkpoint id or a state dict (``k``, ``among``,
        ``aligned``, ``eval_set``); see :func:`wdb.query.nearest.nearest`."""
        from wdb.query.probe import nearest

        return nearest(self, run, step, **kw)

    def novelty(
        self, targets: str | int | Mapping, reference: str | None = None, **kw: Any
    ) -> list[dict]:
        """Per-target min L2 / max error-IoU to a reference set, for a SQL selection, a run name,
        a checkpoint id or a state dict (``k``, ``aligned``, ``eval_set``, ``save``); see :func:`wdb.query.probe.novelty`."""
        from wdb.query.probe import novelty

        return novelty(self, targets, reference, **kw)

    def evaluate(
        self,
        where: str | None = None,
        task: str | None = None,
        force: bool = False,
        batch: int = 256,
        params: dict | None = None,
        workers: int | None = None,
        memory: int | str | None = None,
    ) -> EvalReport:
        """Evaluate checkpoints on their task; see :func:`wdb.study.evaluate.evaluate`."""
        from wdb.study.evaluate import evaluate

        opts = dict(force=force, batch=batch, params=params, workers=workers, memory=memory)
        return evaluate(self, where, task=task, **opts)

    def generate(
        self,
        method: str,
        train: str | None = None,
        n: int | None = None,
        seed: int = 0,
        overrides: dict | None = None,
        config_file: str | os.PathLike | None = None,
        from_run: int | None = None,
    ) -> GenerateReport:
        """Fit a generator on a selection and write its samples; see
        :func:`wdb.study.generate.generate`."""
        from wdb.study.generate import generate

        return generate(
            self,
            method,
            train=train,
            n=n,
            seed=seed,
            overrides=overrides,
            config_file=config_file,
            from_run=from_run,
        )

    def compact(self, dry_run: bool = False) -> CompactReport:
        """Re-encode arrays of an older codec; see :mod:`wdb.store.compact`."""
        from wdb.store.compact import compact

        return compact(self, dry_run=dry_run)

    def fsck(self, fix: bool = False) -> FsckReport:
        """Check hashes, orphans and missing bytes; ``fix`` restores damaged rows from their
        source files (or marks them damaged); see :func:`wdb.store.fsck.fsck`."""
        from wdb.store.fsck import fsck

        return fsck(self, fix=fix, reread=self._source_row)

    def _source_row(self, source: str, checkpoint_id: int) -> np.ndarray:
        """A checkpoint's row as its source file holds it now, read by the ingest readers
        (``wdb fsck --fix`` compares its sha256 with the stored one before using it)."""
        from wdb.files.checkpoint import read_checkpoint

        (info,) = self._locate([checkpoint_id])
        layout = self.space(int(info["space_id"])).layout
        got = read_checkpoint(source)
        if got.layout is not None:  # a reader that gives the row itself
            row = got.row if got.row is not None else got.materialise()
            values = values_of(np.asarray(row), got.layout.storage_dtype)
            return to_stored(values, layout.storage_dtype, source)
        have = Layout.from_arrays(got.arrays, got.dtypes)
        # (a bf16 space made before 2-byte storage holds the same tensors as float32)
        if layout.hash not in (have.hash, have.as_float32().hash):
            raise BadInput("its tensors no longer match the checkpoint's layout")
        return layout.flatten(got.arrays)


def _decode_families(db: Database) -> None:
    """Reads of the weight store decode delta rows of wide spaces (``wdb.store.family``)."""
    from wdb.store.deltaread import DeltaIndex

    db.weights_store.family = DeltaIndex(db.catalog)


def open(  # noqa: A001
    path: str | os.PathLike | None = None,
    catalog_url: str | None = None,
    store_url: str | None = None,
) -> Database:
    """Open (creating or upgrading if needed) the database at ``path``."""
    return Database(path, catalog_url, store_url).init()
