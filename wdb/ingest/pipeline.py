"""The ingest engine: turn a folder of checkpoints from the wild into wdb rows, safely.

Readers (``ingest/<name>.py``) only *find* checkpoints: each yields ``Found`` records (file, run,
step, a ``load`` callable, metrics, ...). This module does everything else, the same way for every
format: load safely, validate, group by layout, write in batches through ``Database.write_checkpoints``
(bytes first, then one catalog transaction per batch), and report.

Decisions (the spec is silent on these):

- **Format detection.** Readers are plugins (group ``wdb.readers``, see ``wdb.plugins`` and
  :class:`Reader`): every registered reader is asked in ``PRIORITY`` order (built-ins: modelzoo,
  flat, pdiff at 10-30; the generic folder reader last at 90); the first whose ``detect`` says yes
  wins; ``format=`` (a name or a ``.py`` file) overrides.
- **Safe loading.** torch files are read by a restricted C unpickler (the Python docs'
  "restricting globals" recipe) that knows only the globals a tensor state dict needs
  (``_rebuild_tensor_v2``, ``_rebuild_parameter``, ``torch.*Storage``, ``OrderedDict``), over a
  small zip reader that takes the (uncompressed, CRC-checked) members as zero-copy views: several
  times faster than ``torch.load`` on small files and no torch import. Anything unusual it
  declines (it never decides "malicious") and ``torch.load(..., weights_only=True, mmap=True)``
  gives the verdict, after ``zipfile`` has checked every member's CRC-32 (torch does not): a
  damaged member is one line naming it, on either path. No code from a pickle can run on either path. safetensors via
  ``safetensors.torch.load_file``; ``.npz`` with ``allow_pickle=False``.
- **Validation.** Containers (:data:`CONTAINER_KEYS`: Lightning's ``state_dict``,
  ``model_state_dict``, ``model``, DeepSpeed's ``module``, ``ema``, ...) are unwrapped; floats
  must be finite; integer buffers must fit the storage dtype exactly. A ``*.index.json`` with
  its shards is one checkpoint (:func:`read_sharded`).
- **One space per architecture.** Every distinct layout gets its own space (a folder of
  ``alex.pth``, ``squeeze.pth``, ``vgg.pth`` is three spaces). "Shape mismatch" is only for a
  file whose tensor names and dtypes agree with the other files *of its run* but whose shapes
  differ: ``shape mismatch: 'fc1.weight' is [10, 785], expected [10, 784]`` against the layout
  that run's files have (the first accepted one; a layout seen in two or more files is accepted
  at once, one seen in a single file waits in memory until the scan ends). With ``--space``
  naming an existing space, every file must have exactly that layout. Scan order is
  deterministic, so a rerun decides the same way.
- **Metadata and bundles.** Non-tensor entries (a ``step`` int, a ``note`` string, Lightning's
  ``epoch``) are kept as the checkpoint's ``meta`` JSON, never a reason to refuse the tensors; a
  bundle's step counter (``global_step``/``step``) is the step where the reader only guessed it
  from the file name; other top-level numbers become reported metrics. Optimizer, scheduler,
  RNG and training-argument files next to a checkpoint are *companions*: counted, not stored,
  not errors. Complex tensors are refused (one line).
- **Space names.** ``--space`` if given (an existing space: every file must fit it; a JSON
  layout file: the layout, named as below; another name: the name of the new space); else the zoo name for the first layout that this ingest
  creates and ``<zoo>-<n_params>p-<hash8>`` for further ones. A layout that already has a space keeps
  it (spaces are identified by layout hash).
- **Run names** are global in the catalog. A run that already exists in *another* zoo is not
  silently merged: its files are skipped with a reason (rename the runs or use ``--zoo``).
- **Strict mode** validates every file before committing anything: rows are kept in memory up to
  ``WDB_INGEST_BUFFER_MB`` (default 1024) and otherwise re-read at commit time, and all conflicts
  with the catalog are checked first. The first bad file raises ``BadInput``; nothing is written.
- **Kill safety** comes from ``write_checkpoints``: bytes are written before the catalog rows that point to
  them, an interrupted batch leaves only unreferenced tail rows that the next commit reuses, and
  a rerun skips the (run, space, step) already stored with the same sha256. A full disk, a
  denied permission or Ctrl-C ends the ingest in one line saying so (``wdb.ingest.stops``).
- **Problems** are one ``skipped`` entry per file; the CLI prints the first 20 and a count.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wdb.errors import BadInput, WdbError
from wdb.files.checkpoint import STEP_KEYS, Loaded, as_loaded, digest
from wdb.files.formats import NOT_STORED
from wdb.ingest.pool import (
    check_row,
    into_old_space,
    prefetched,
    read_ahead,
    row_hash,
    row_of,
)
from wdb.ingest.readers import Found
from wdb.ingest.start import begin
from wdb.ingest.stops import explained
from wdb.store.spaces import Layout, old_bf16_layouts
from wdb.store.tensors import bf16_as_bits
from wdb.store.write import RowStream

#: checkpoints per commit (one Zarr write + one catalog transaction each), and the most row
#: bytes one commit holds in memory (large models commit in smaller batches).
BATCH = int(os.environ.get("WDB_INGEST_BATCH", "4096"))
BATCH_BYTES = 256 << 20
#: processes that read, flatten and hash files ahead of the one writer (``WDB_INGEST_WORKERS``,


@dataclass
class IngestReport:
    """What one ingest did; the CLI prints it and exits 3 when anything was skipped."""

    format: str
    runs_added: int = 0
    checkpoints_added: int = 0
    checkpoints_existing: int = 0
    spaces: list[str] = field(default_factory=list)
    bytes_written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    checkpoint_ids: list[int] = field(default_factory=list)
    #: the generator_runs row recording an outside generator's lineage (``--generator``)
    generator_run_id: int | None = None
    #: files kept next to checkpoints that hold no weights (``optimizer.pt``, ``rng_state.pth``)
    companions: list[str] = field(default_factory=list)
    #: weight files understood but not stored (a format wdb does not read): (file, why)
    not_stored: list[tuple[str, str]] = field(default_factory=list)
    #: files with the same bytes as one before them in this ingest: (file, the first file)
    duplicates: list[tuple[str, str]] = field(default_factory=list)

    def ok(self) -> bool:
        """True when every file was ingested (or already present)."""
        return not self.skipped


# -- safe loading -------------------------------------------------------------------------------


@dataclass
class _Item:
    found: Found
    layout: Layout
    row: np.ndarray | RowStream | None
    sha256: str
    nbytes: int


class _Ingest:
    def __init__(self, db, path, zoo, kind, strict, space, fmt):
        self.db, self.path, self.zoo, self.kind = db, path, zoo, kind
        self.strict, self.space_name = strict, space
        self.report = IngestReport(format=fmt)
        self.forced_layout: Layout | None = None
        # layout hash → seen count; accepted layouts; items of layouts seen once so far
        self.count: Counter = Counter()
        self.accepted: dict[str, bool] = {}
        self.pending: dict[str, list[_Item]] = defaultdict(list)
        self.ready: dict[str, list[_Item]] = defaultdict(list)
        self.ready_bytes: Counter = Counter()
        self.layouts: dict[str, Layout] = {}
        self.spaces: dict[str, Any] = {}
        self.keys: dict[tuple[str, int, str], str] = {}
        self.buffer_budget = int(os.environ.get("WDB_INGEST_BUFFER_MB", "1024")) << 20
        self.buffered = 0
        self.run_zoo: dict[str, str | None] = {}
        self.new_runs: set[str] = set()
        self.created_runs: set[str] = set()
        self.layout_cache: dict[tuple, Layout] = {}
        self.generator_run_id: int | None = None
        # (run, tensor names and dtypes) → the layout hash that run's files have
        self.run_layout: dict[tuple[str, tuple], str] = {}
        #: ``--base``; else each file's declared base (``wdb.ingest.declared``), if stored
        self.base: str | None = None
        self.bases: dict[str, str | None] = {}
        self._legacy: dict[str, Layout] | None = None

    def legacy(self) -> dict[str, Layout]:
        """:func:`wdb.store.spaces.old_bf16_layouts` of the store, read once."""
        if self._legacy is None:
            self._legacy = old_bf16_layouts(self.db)
        return self._legacy

    def base_of(self, source: str | None) -> str | None:
        from wdb.ingest import declared

        if self.base:
            return self.base
        folder = str(Path(source).parent) if source else ""
        if folder not in self.bases:
            self.bases[folder] = declared.resolve(self.db, declared.declared_name(source))
        return self.bases[folder]

    # ---- skipping
    def skip(self, source: str, reason: str) -> None:
        if reason.startswith(NOT_STORED):  # understood, not stored: a note, never an error
            self.report.not_stored.append((source, reason.removeprefix(NOT_STORED)))
            return
        if self.strict:
            raise BadInput(f"{source}: {reason}")
        self.report.skipped.append((source, reason))

    # ---- per file
    def prepare(self, f: Found, pre: tuple | None = None) -> _Item | None:
        """One found file → an item to write, or None (skipped, or a companion). ``pre`` is
        what a pool worker already made of it (:func:`_prepare_in_worker`)."""
        if f.problem:
            self.skip(f.source, f.problem)
            return None
        if f.companion:
            self.report.companions.append(f.source)
            return None
        if pre is not None and pre[0] == "skip":
            self.skip(f.source, pre[1])
            return None
        try:
            if pre is not None:
                _, layout, row, sha, got = pre
                layout = self.layouts.get(layout.hash, layout)
                self.adopt(f, got)
            elif f.layout is not None:
                layout = f.layout
                row = np.asarray(f.load())
                row = check_row(layout, row)
                sha = digest(row)
            else:
                with bf16_as_bits():  # (as the reading thread does: wdb.ingest.pool)
                    layout, row, got = self._row(f.load())
                self.adopt(f, got)
                sha = row_hash(row)
        except WdbError as exc:
            self.skip(f.source, str(exc))
            return None
        except Exception as exc:  # a reader bug or an exotic failure: still one line per file
            self.skip(f.source, f"unreadable ({type(exc).__name__}: {exc})")
            return None
        kind = f.kind or self.kind
        from wdb.store.write import KINDS

        if kind not in KINDS:
            self.skip(f.source, f"kind must be one of {', '.join(KINDS)}, not '{kind}'")
            return None
        f.kind = kind
        layout, row, changed = into_old_space(self.legacy(), layout, row)
        if changed:
            sha = row_hash(row)
        self.layouts.setdefault(layout.hash, layout)
        nbytes = layout.n_params * layout.row_dtype.itemsize
        return _Item(f, layout, row, sha, nbytes)

    def _row(self, obj: Any) -> tuple[Layout, np.ndarray | RowStream, Loaded]:
        """A reader's loaded object → (layout, row, the :class:`Loaded` it was read as)."""
        got = as_loaded(obj)
        if got.stream is not None and got.layout is not None:
            size = got.layout.row_dtype.itemsize
            return got.layout, RowStream(got.layout.n_params, got.stream, itemsize=size), got
        return (*row_of(got, self.layout_cache), got)

    @staticmethod
    def adopt(f: Found, got: Loaded) -> None:
        """What the file says about itself: metadata, its step counter when the reader only
        guessed the step, and its other top-level numbers (``epoch``, ``best_score``) as reported
        metrics (the reader's own metrics win)."""
        if got.meta:
            f.meta = {**got.meta, **(f.meta or {})}
        step = got.step()
        if f.step_guessed and step is not None:
            f.step = step
        for k, v in got.numbers.items():
            if k not in STEP_KEYS:
                f.metrics.setdefault(k, v)

    def add(self, item: _Item) -> None:
        h = item.layout.hash
        forced = self.forced_layout
        if forced is not None and h != forced.hash:
            why = (
                _mismatch(item.layout, forced)
                if item.layout.names == forced.names
                else "tensor names differ from the layout given with --space"
            )
            self.skip(item.found.source, why)
            return
        self.count[h] += 1
        if forced is not None or h in self.accepted:
            self.route(item)
            return
        self.pending[h].append(item)
        if self.count[h] >= 2:
            self.accepted[h] = True
            for it in self.pending.pop(h):
                self.route(it)

    def route(self, item: _Item) -> None:
        want = item.layout
        mine = (item.found.run, _signature(want))
        theirs = self.run_layout.setdefault(mine, want.hash)
        if theirs != want.hash:  # same tensor names as the run's other files, other shapes
            self.skip(item.found.source, _mismatch(want, self.layouts[theirs]))
            return
        key = (item.found.run, item.found.step, want.hash)
        if key in self.keys:
            self.skip(
                item.found.source,
                f"duplicate of {self.keys[key]} (run '{key[0]}' step {key[1]})",
            )
            return
        self.keys[key] = item.found.source
        # a stream of shards holds no memory; one of a mapped file holds its pages
        if self.strict and (not isinstance(item.row, RowStream) or item.row.mapped):
            self.buffered += item.nbytes
            if self.buffered > self.buffer_budget:
                item.row = None  # re-read at commit time
        self.ready[want.hash].append(item)
        self.ready_bytes[want.hash] += item.nbytes
        if not self.strict and (
            len(self.ready[want.hash]) >= BATCH or self.ready_bytes[want.hash] >= BATCH_BYTES
        ):
            self.flush(want.hash)

    def finish_pending(self) -> None:
        """Layouts seen in only one file: each is its own architecture (its own space) unless
        its run already has files with the same tensor names in another shape (``route``)."""
        for h in list(self.pending):  # insertion order = order first seen
            self.accepted[h] = True
            for it in self.pending.pop(h):
                self.route(it)

    # ---- writing
    def space_for(self, h: str):
        if h in self.spaces:
            return self.spaces[h]
        layout = self.layouts[h]
        if not self.spaces:
            name = self.space_name or self.zoo
        else:
            name = f"{self.space_name or self.zoo}-{layout.default_name()}"
        space = self.db.ensure_space(layout, name)
        self.spaces[h] = space
        if space.name not in self.report.spaces:
            self.report.spaces.append(space.name)
        return space

    def check_runs(self, items: list[_Item]) -> list[_Item]:
        """Drop items whose run name already belongs to another zoo."""
        names = sorted({it.found.run for it in items} - set(self.run_zoo))
        if names:
            for r in self.db.sql(
                "SELECT name, zoo FROM runs WHERE name IN (SELECT unnest(CAST(:n AS VARCHAR[])))"
                if self.db.catalog.duckdb_file
                else "SELECT name, zoo FROM runs WHERE name = ANY(:n)",
                {"n": names},
            ):
                self.run_zoo[r["name"]] = r["zoo"]
            for n in names:
                if n not in self.run_zoo:
                    self.run_zoo[n] = self.zoo
                    self.new_runs.add(n)
        keep = []
        for it in items:
            owner = self.run_zoo[it.found.run]
            if owner != self.zoo:
                self.skip(
                    it.found.source,
                    f"run '{it.found.run}' already exists in zoo '{owner}' (rename it or use --zoo)",
                )
            else:
                keep.append(it)
        return keep

    def check_conflicts(self, h: str, items: list[_Item]) -> None:
        """Strict mode: find every item the commit would refuse, before writing anything."""
        space_rows = self.db.sql("SELECT id FROM spaces WHERE hash = :h", {"h": h})
        if not space_rows:
            return
        stored = {
            (r["run"], int(r["step"])): r["sha256"]
            for r in self.db.sql(
                "SELECT run, step, sha256 FROM checkpoint_info WHERE space_id = :s",
                {"s": space_rows[0]["id"]},
            )
        }
        for it in items:
            sha = stored.get((it.found.run, it.found.step))
            if sha is not None and sha != it.sha256:
                self.skip(
                    it.found.source,
                    f"run '{it.found.run}' step {it.found.step} already stored with different "
                    "content",
                )

    def flush(self, h: str) -> None:
        from wdb.store.write import NewCheckpoint

        items = self.ready.pop(h, [])
        self.ready_bytes.pop(h, None)
        if not items:
            return
        items = self.check_runs(items)
        if not items:
            return
        space = self.space_for(h)
        news, kept = [], []
        for it in items:
            row = it.row
            if row is None:
                row = self._reload(it)
                if row is None:
                    continue
            f = it.found
            news.append(
                NewCheckpoint(
                    run=f.run,
                    step=int(f.step),
                    row=row,
                    kind=f.kind or self.kind,
                    zoo=self.zoo,
                    metrics={k: float(v) for k, v in f.metrics.items()},
                    split=f.split,
                    source=f.source,
                    run_config=f.run_config,
                    sha256=it.sha256,
                    generator_run_id=self.generator_run_id,
                    meta=f.meta,
                    base=self.base_of(f.source),
                )
            )
            kept.append(it)
            it.row = None
        by_key = {(n.run, n.step): it for n, it in zip(news, kept, strict=True)}
        result = self.db.write_checkpoints(space, news)
        for n, why in result.conflicts:
            by_key.pop((n.run, n.step), None)
            self.skip(n.source or n.run, f"run '{n.run}' step {n.step}: {why}")
        self.report.checkpoints_added += len(result.added)
        self.report.checkpoints_existing += len(result.existing)
        self.report.bytes_written += (
            len(result.added) * space.layout.n_params * space.layout.row_dtype.itemsize
        )
        # ids per (run, step): write_checkpoints returns new ids in order of the new items and existing
        # ids in order of the existing ones; when both kinds are mixed, ask the catalog.
        clean = [n for n in news if (n.run, n.step) in by_key]
        if not result.existing and len(result.added) == len(clean):
            ids = {(n.run, n.step): c for n, c in zip(clean, result.added, strict=True)}
        elif not result.added and len(result.existing) == len(clean):
            ids = {(n.run, n.step): c for n, c in zip(clean, result.existing, strict=True)}
        else:
            ids = self._ids(space, [(n.run, n.step) for n in clean])
        self.report.checkpoint_ids += [ids[k] for k in by_key if k in ids]
        # a run unknown before this ingest was created by the commit of its first checkpoint
        self.created_runs |= {n.run for n in clean} & self.new_runs
        self._write_errors(ids, by_key)

    def _reload(self, it: _Item) -> np.ndarray | RowStream | None:
        f = it.found
        try:
            if f.layout is not None:
                layout, row = f.layout, check_row(f.layout, np.asarray(f.load()))
            else:
                with bf16_as_bits():
                    layout, row, _ = self._row(f.load())
            layout, row, _ = into_old_space(self.legacy(), layout, row)
            if layout.hash != it.layout.hash:
                raise BadInput("file changed while being ingested")
        except WdbError as exc:
            self.skip(f.source, str(exc))
            return None
        if row_hash(row) != it.sha256:
            self.skip(f.source, "file changed while being ingested")
            return None
        return row

    def _ids(self, space, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        runs = sorted({k[0] for k in keys})
        rows = self.db.sql(
            "SELECT run, step, checkpoint_id FROM checkpoint_info WHERE space_id = :s AND run IN "
            "(SELECT unnest(CAST(:r AS VARCHAR[])))"
            if self.db.catalog.duckdb_file
            else "SELECT run, step, checkpoint_id FROM checkpoint_info "
            "WHERE space_id = :s AND run = ANY(:r)",
            {"s": space.id, "r": runs},
        )
        return {(r["run"], int(r["step"])): int(r["checkpoint_id"]) for r in rows}

    def _write_errors(self, ids: dict, by_key: dict) -> None:
        from wdb.store.outputs import ensure_eval_set, has_outputs, write_outputs

        groups: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
        for key, it in by_key.items():
            if it.found.errors is not None and it.found.eval_set and key in ids:
                groups[it.found.eval_set].append((ids[key], it.found.errors))
        for name, pairs in groups.items():
            n_items = int(np.asarray(pairs[0][1]).shape[-1])
            eid = ensure_eval_set(self.db, name, None, None, n_items=n_items)
            done = has_outputs(self.db, eid, "errors")
            todo = [(c, m) for c, m in pairs if c not in done]
            if todo:
                write_outputs(
                    self.db,
                    eid,
                    "errors",
                    [c for c, _ in todo],
                    np.stack([np.asarray(m, dtype=np.uint8) for _, m in todo]),
                )

    def flush_all(self) -> None:
        for h in list(self.ready):
            if self.strict:
                self.check_runs(self.ready[h])
                self.check_conflicts(h, self.ready[h])
        for h in list(self.ready):
            self.flush(h)


def _signature(layout: Layout) -> tuple:
    """What makes files of one run "the same architecture": names and dtypes (a run saved partly
    in fp16 gets a second space; a different *shape* under the same names is a mismatch)."""
    return tuple((e.name, e.dtype) for e in layout.entries)


def _mismatch(got: Layout, want: Layout) -> str:
    for a, b in zip(got.entries, want.entries, strict=False):
        if a.shape != b.shape:
            return f"shape mismatch: '{a.name}' is {list(a.shape)}, expected {list(b.shape)}"
        if a.dtype != b.dtype:
            return f"dtype mismatch: '{a.name}' is {a.dtype}, expected {b.dtype}"
    return "layout mismatch with the zoo's dominant layout"


def ingest(
    db,
    path: Path,
    zoo: str | None = None,
    kind: str | None = None,
    format: str | None = None,  # noqa: A002
    strict: bool = False,
    space: str | None = None,
    generator: str | None = None,
    trained_on: str | None = None,
    generator_config: dict | None = None,
    allow_outside: bool = False,
    base: str | None = None,
) -> IngestReport:
    """Ingest every checkpoint under ``path`` (see the module docstring for the rules).

    ``base`` (``RUN`` or ``RUN:STEP``, which must be stored) is every new checkpoint's declared
    parent; without it, a ``config.json`` / ``adapter_config.json`` beside a file may declare
    one (``wdb.ingest.declared``).

    ``allow_outside`` lets a manifest name files outside ``path`` (refused by default). A file
    with the same bytes as one before it in this ingest is not stored again (``duplicates``).

    With ``generator``, the checkpoints are an outside generator's samples (kind ``generated``
    unless ``kind`` says otherwise): one ``generator_runs`` row records the method name, the
    training selection ``trained_on`` (SQL over ``checkpoint_info``) with its exact ids, and
    ``generator_config``, and every new checkpoint's run points to it, so analyses treat the
    samples exactly like a built-in generator's.
    """
    from wdb.progress import progress

    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such file or directory")
    job = None

    def committed() -> int:
        return job.report.checkpoints_added if job is not None else 0

    with explained(str(path), committed):  # Ctrl-C, disk full, permission denied: one line
        if trained_on and not generator:
            raise BadInput("--trained-on needs --generator NAME (whose training set it describes)")
        kind = kind or ("generated" if generator else "training")
        job, found = begin(_Ingest, db, path, zoo, kind, format, strict, space, allow_outside)
        _declare(db, job, found, base)
        if generator:
            from wdb.study.generate import finish_outside_run, start_outside_run

            job.generator_run_id = start_outside_run(
                db, generator, trained_on, generator_config, source=str(path)
            )
            job.report.generator_run_id = job.generator_run_id
        try:
            bar = progress(total=len(found), desc=f"ingest {path.name}")
            for f, pre in read_ahead(prefetched(found)):
                item = job.prepare(f, pre)
                if item is not None:
                    job.add(item)
                bar.update(1)
            bar.close()
            job.finish_pending()
            job.flush_all()
        except BaseException as exc:
            if job.generator_run_id is not None:
                finish_outside_run(db, job.generator_run_id, job.report.checkpoints_added, exc)
            raise
        if job.generator_run_id is not None:
            kept = finish_outside_run(db, job.generator_run_id, job.report.checkpoints_added)
            job.report.generator_run_id = job.generator_run_id if kept else None
        job.report.runs_added = len(job.created_runs)
        return job.report


def _declare(db, job: _Ingest, found: list, base: str | None) -> None:
    """``--base`` checked against the store; PEFT adapters named after their folder."""
    from wdb.ingest import declared

    if base:
        job.base = declared.resolve(db, base)
        if job.base is None:
            raise BadInput(f"--base {base}: no such run in the database")
    for f in found:
        if declared.is_adapter(f.source) and f.run.rpartition("/")[2] == Path(f.source).stem:
            f.run = f.run.rpartition("/")[0] or Path(f.source).parent.name
