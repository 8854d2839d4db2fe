"""Exact L2 top-k as a partitioned, byte-bounded scan over stored rows.

Why: reading reference rows a fixed number at a time and copying them to float64 peaked at
8.9 GB for 22 checkpoints of 100 MB (issue 25). Here every read is sized in **bytes** from one
budget (:mod:`wdb.memory`): a batch holds as many whole rows as fit, and a row too wide for the
budget is read a column block at a time, its squared differences summed per block into float64
partial sums (one per target and reference), so nothing but the tile being summed is ever
float64. All targets of a pass share each reference read: novelty of T targets reads every
reference byte once per pass, not T times (targets are split into passes only when their own
blocks or partial sums would not fit).

Same numbers whatever the plan: squared differences are summed over a fixed grid of column
tiles (``Plan.tile`` columns each, tile by tile in column order), so a reference's distance does
not depend on how rows were batched or split between workers; the top-k keeps the smallest
(distance, id) pairs, so partial top-k lists merge into the same answer (:func:`merge`). This is
what lets the Dask engine (``wdb.query.engine``) split the references into partitions, one per
worker, and merge each worker's top-k.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from wdb.errors import BadInput
from wdb.memory import human

#: columns of the float64 tile grid (smaller only when the budget is tiny)
TILE_COLS = 1 << 15
#: a whole-row read (``ArrayStore.read``) may hold about this many copies of its rows at once
READ_FACTOR = 3
#: blocks held besides the one being read: the one being summed (read-ahead, ``_ahead``); a
#: family's last decoded row (``wdb.store.deltaread.DeltaIndex``) is one more row on top
AHEAD = 1
#: column blocks are cut at multiples of this when wider (a wide space's chunk width,
#: ``wdb.store.arrays.WIDE_COLS``; a multiple of ``TILE_COLS``)
CHUNK_COLS = 1 << 20
#: columns summed by one einsum; tiles are whole groups (see ``_accumulate``)
GROUP = 256
#: the share of the budget that keeps decoded key-row chunks of a wide family's delta rows
#: (``wdb.store.widechunk.keep_key_chunks``): a 100 MB key row fits whole in 1 GB's eighth
KEEP_SHARE = 8
#: value-query pairs (references x values x queries) from which a scan sums with the compiled
#: kernel (``wdb.query.kernel``): below, loading it (about 1 s in a fresh process) would cost
#: more than it saves, and a zoo-sized query stays as quick as before
FAST_MIN = 1 << 28


@dataclass(frozen=True)
class Plan:
    """How one scan reads: query rows per pass, reference rows and columns per read, and the
    float64 tile width (the summation grid of the numpy path)."""

    queries: int
    rows: int
    cols: int
    tile: int
    dim: int
    whole_rows: bool = True
    sub: int = 1  # reference rows per float64 tile
    ahead: bool = True  # the next block is read while this one is summed
    fast: bool = False  # summed by the compiled kernel (decided once: workers sum alike)
    keep: int = 0  # bytes of decoded key-row chunks kept (``wdb.store.widechunk``), budgeted

    def describe(self) -> str:
        what = "whole rows" if self.whole_rows else f"column blocks of {self.cols}"
        return f"{self.rows} rows x {what}, {self.queries} queries per pass"


def _fit(n: int, nq: int, dim: int, isz: int, k: int, budget: int, fast: bool) -> Plan | None:
    """The widest plan within ``budget`` bytes, or None when even one column tile does not fit.

    ``fast``: the compiled kernel sums (``wdb.query.kernel``), which holds no float64 tiles.
    Preferred, for all the queries in one pass: whole rows read ahead, then whole rows without
    read-ahead (a wide row is read once, where column blocks of a delta row would decode it
    once per block), then column blocks; only then fewer queries per pass."""
    q = max(1, nq)
    while q >= 1:
        w = min(dim, TILE_COLS)
        if fast:  # column blocks only need to start on the kernel's grid
            w, sub, tiles = min(dim, GROUP), 1, 0
        else:  # float64 tiles (the queries' and two of the references'): at most a quarter
            while w > GROUP and (q + 2) * w * 8 * 2 > budget // 4:
                w = max(GROUP, w // 2 // GROUP * GROUP)
            sub = max(1, min((1 << 17) // w, (budget // 4 // (16 * w) - q) // 2))
            tiles = (q + 2 * sub) * w * 8 * 2  # x2: the group sums and their concatenation
        blocks = budget - tiles  # raw rows read, partial sums, top-k lists
        if tiles <= budget // 4:
            topk = q * (k + 1) * 16
            # the queries are read a block of rows at a time into their array: while the last
            # block is read, the others are held (``_queries``)
            room = blocks - q * max(n, 1) * 8 - topk  # partial sums of every reference
            if (q + READ_FACTOR) * dim * isz <= blocks:
                for ahead in (AHEAD, 0):
                    per_row = dim * isz * (READ_FACTOR + ahead) + q * 8
                    b = (blocks - (q + 1) * dim * isz - topk) // per_row  # +1: the family's row
                    if b >= 1:
                        rows = int(min(b, max(n, 1)))
                        whole = Plan(q, rows, dim, w, dim, True, sub, ahead > 0, fast)
                        cut = _shared_blocks(n, q, dim, isz, room, w, sub, fast)
                        return cut if cut is not None and cut.rows >= 2 * rows else whole
            cut = _shared_blocks(n, q, dim, isz, room, w, sub, fast)
            if cut is not None:
                return cut
            # a column read holds the block and its reordered copy: 2 per value; then the
            # block read ahead and the family's last decoded range
            c = (room // (isz * (2 * q + 2 + 2 * AHEAD))) // w * w if room > 0 else 0
            if c >= CHUNK_COLS:  # whole chunks of a wide space: none is decoded twice
                c = c // CHUNK_COLS * CHUNK_COLS
            if c >= w:
                b = min(max(n, 1), (room - (2 * q + 1) * c * isz) // ((2 + AHEAD) * c * isz))
                return Plan(q, int(max(b, 1)), int(min(c, dim)), w, dim, False, sub, True, fast)
        q = q // 2 if q > 1 else 0
    return None


def _shared_blocks(
    n: int, q: int, dim: int, isz: int, room: int, w: int, sub: int, fast: bool
) -> Plan | None:
    """Column blocks wide enough for as many reference rows at once as fit (all of them, if
    they do), for several queries: each query's values then stay in cache while every row of
    the block is summed against them. With whole rows too big to hold more than one or two at a
    time, every reference row had streamed all the queries' values again (novelty of 6 targets
    of 100 MB: 600 MB per reference). Columns are whole chunks of a wide space (each chunk of a
    row decoded once); None when that leaves no more rows than whole rows do."""
    if q < 2 or n < 2:
        return None
    b = n
    while b >= 2:
        c = room // (isz * (2 * q + 1 + (2 + AHEAD) * b))
        c = c // CHUNK_COLS * CHUNK_COLS if c >= CHUNK_COLS else c // w * w
        if c >= min(dim, CHUNK_COLS) and c < dim:
            return Plan(q, int(b), int(c), w, dim, False, sub, True, fast)
        b //= 2
    return None


def plan(n: int, nq: int, dim: int, itemsize: int, k: int, budget: int, what: str = "") -> Plan:
    """A plan for ``nq`` queries against ``n`` references of ``dim`` values, or a one-line
    BadInput saying the smallest budget that works."""
    import importlib.util

    # float32 / float64 rows of a big enough scan: the kernel sums (numba imported only then)
    fast = itemsize in (4, 8) and n * dim * max(1, nq) >= FAST_MIN
    fast = fast and importlib.util.find_spec("numba") is not None
    from wdb.store.arrays import WIDE

    # rows of a wide space may be delta rows: a share of the budget keeps their key's chunks
    # (only where that costs no other read: as many queries per pass, whole rows as before)
    got = _fit(n, nq, dim, itemsize, k, budget, fast)
    keep = budget // KEEP_SHARE if dim >= WIDE and n > 1 and got is not None else 0
    kept = _fit(n, nq, dim, itemsize, k, budget - keep, fast) if keep else None
    same = kept is not None and (kept.queries, kept.whole_rows) == (got.queries, got.whole_rows)
    if same and (nq <= 1 or kept.rows >= min(got.rows, 2)):  # (one query: no reuse to lose)
        return replace(kept, keep=keep)
    if got is not None:
        return got
    lo, hi = budget, max(2 * budget, 1 << 10)
    while _fit(n, 1, dim, itemsize, k, hi, fast) is None:
        lo, hi = hi, hi * 2
    while hi - lo > max(1, lo // 100):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _fit(n, 1, dim, itemsize, k, mid, fast) is not None else (mid, hi)
    raise BadInput(
        f"memory budget {human(budget)} is too small for {what or 'this scan'} "
        f"({n} rows of {dim} values); the smallest that works is {human(hi)} (--memory / WDB_MEMORY)"
    )


# -- row sources ------------------------------------------------------------------------------
_stores: dict[Any, Any] = {}


def _store(handle: Any):
    """The verified weight store of the database ``handle`` (a ``wdb.db.Handle``) names, one
    per process: a worker opens it once and reuses it across partitions."""
    if handle not in _stores:
        _stores[handle] = handle.open().weights_store
    return _stores[handle]


def rows_of(db: Any, path: str, rows: np.ndarray) -> StoredRows:
    """Rows of array ``path`` of ``db``'s weight store as a scan source; in this process the
    database's own store (and its hash cache) serves the reads."""
    handle = db.handle()
    _stores.setdefault(handle, db.weights_store)
    return StoredRows(handle, path, np.asarray(rows, np.int64))


@dataclass
class StoredRows:
    """Rows of a stored 2-D array, by position; picklable, so a worker reads its own partition.

    Every read goes through the store's one reader (``ArrayStore.read``): hashes checked, delta
    rows decoded; a column block reads only the chunks it needs."""

    handle: Any
    path: str
    rows: np.ndarray
    primed: bool = False  # the verifier holds every row's expectations (first read)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), int(_store(self.handle).array(self.path).shape[1])

    @property
    def dtype(self) -> np.dtype:
        return _store(self.handle).value_dtype(self.path)

    def subset(self, sel: slice | np.ndarray) -> StoredRows:
        return StoredRows(self.handle, self.path, self.rows[sel])

    def read(self, sel: slice, cols: slice | None = None) -> np.ndarray:
        store = _store(self.handle)
        if not self.primed and store.verifier is not None:
            # every row's expected hashes in one catalog query: fetched per read, a scan of
            # 100 MB rows (one per read) had spent 20-60 ms a read on DuckDB connects alone
            store.verifier.get(self.path, np.unique(self.rows))
            self.primed = True
        return store.read(self.path, self.rows[sel], cols)


@dataclass
class MemoryRows:
    """Rows already in memory, read like :class:`StoredRows`."""

    data: np.ndarray

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def subset(self, sel: slice | np.ndarray) -> MemoryRows:
        return MemoryRows(self.data[sel])

    def read(self, sel: slice, cols: slice | None = None) -> np.ndarray:
        block = self.data[sel]
        return block if cols is None else block[:, cols]


def source(rows: Any) -> StoredRows | MemoryRows:
    """A row source as is, or an in-memory array wrapped as one."""
    if isinstance(rows, StoredRows | MemoryRows):
        return rows
    return MemoryRows(np.atleast_2d(np.asarray(rows)))


# -- the scan ---------------------------------------------------------------------------------
def _accumulate(
    R: np.ndarray, Q: np.ndarray, acc: np.ndarray, tile: int, rb: int, fast: bool = False
) -> None:
    """``acc[j, i] += sum((R[i] - Q[j])**2)`` over the block's columns, one float64 tile of
    ``tile`` columns at a time. The sum is the same whatever the tile: each ``GROUP`` columns
    are summed by one einsum, and the groups are added to ``acc`` strictly left to right
    (``np.add.accumulate``), so plans and workers with other budgets give the same bits. The
    float32 rows are cast inside the subtraction (no float64 copy of the block) for one query,
    once per tile for several; every float64 array is one reused tile.

    With ``fast`` (the plan's), float32 and float64 rows go to the compiled kernel
    (:mod:`wdb.query.kernel`: one pass over the block for all queries, the same kind of grid);
    this numpy path sums small scans and the other dtypes."""
    if fast:
        from wdb.query import kernel

        if kernel.usable(R, Q):
            kernel.accumulate(R, Q, acc)
            return
    b, c = R.shape
    for c0 in range(0, c, tile):
        w = min(tile, c - c0)
        full = w // GROUP * GROUP
        ng = full // GROUP + (full < w)
        qq = Q[:, c0 : c0 + w].astype(np.float64)
        d = np.empty((min(rb, b), w))
        parts = np.empty((min(rb, b), 1 + ng))
        r64 = np.empty((min(rb, b), w)) if qq.shape[0] > 1 else None
        for r0 in range(0, b, rb):
            r = R[r0 : r0 + rb, c0 : c0 + w]
            m = r.shape[0]
            dd, pp = d[:m], parts[:m]
            if r64 is not None:  # several queries: cast the tile once, not once per query
                r = r64[:m]
                r[...] = R[r0 : r0 + rb, c0 : c0 + w]
            for j in range(qq.shape[0]):
                np.subtract(r, qq[j], out=dd)
                pp[:, 0] = acc[j, r0 : r0 + m]
                if full:
                    g = dd[:, :full].reshape(m, -1, GROUP)
                    np.einsum("ijk,ijk->ij", g, g, out=pp[:, 1 : 1 + full // GROUP])
                if full < w:
                    pp[:, -1] = np.einsum("ij,ij->i", dd[:, full:], dd[:, full:])
                acc[j, r0 : r0 + m] = np.add.accumulate(pp, 1)[:, -1]


def merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k lists ``(squared distances, ids)`` → the k smallest (distance, id) per query."""
    d = np.concatenate([p[0] for p in parts], 1)
    i = np.concatenate([p[1] for p in parts], 1)
    o = np.lexsort((i, d), axis=1)[:, :k]
    return np.take_along_axis(d, o, 1), np.take_along_axis(i, o, 1)


def _top(acc: np.ndarray, ids: np.ndarray, q_ids: np.ndarray, k: int, best) -> tuple:
    acc[q_ids[:, None] == ids[None, :]] = np.inf
    return merge([best, (acc, np.broadcast_to(ids, acc.shape))], k)


def _queries(src: StoredRows | MemoryRows, qs: slice, step: int) -> np.ndarray:
    """The query rows ``qs`` whole, read ``step`` rows at a time into one array: reading them
    at once would hold ``READ_FACTOR`` copies of all of them."""
    if isinstance(src, MemoryRows) or qs.stop - qs.start <= step:
        return src.read(qs)
    first = src.read(slice(qs.start, qs.start + step))
    out = np.empty((qs.stop - qs.start, first.shape[1]), first.dtype)
    out[:step] = first
    del first
    for a in range(qs.start + step, qs.stop, step):
        b = min(qs.stop, a + step)
        out[a - qs.start : b - qs.start] = src.read(slice(a, b))
    return out


def _column_reads(refs: Any, queries: Any, qs: slice, plan_: Plan) -> Any:
    """A column-block plan's reads in order: ``(None, queries' block)`` for each column block,
    then ``(rows, references' block)`` for each span of rows. Each read is made in a thread
    while the caller sums the one before, the queries' next block too: read in the caller, a
    plan of one span of rows per column block (novelty of 6 targets of 100 MB against 20
    references) had decoded and summed in turn, never together. The queries' block read ahead
    is within the budget's share for a block read ahead (``AHEAD``) when it is no larger:
    otherwise it is read in the caller, as before."""
    n, dim = len(refs), plan_.dim
    cuts = [slice(c0, min(dim, c0 + plan_.cols)) for c0 in range(0, dim, plan_.cols)]
    spans = [slice(r0, min(n, r0 + plan_.rows)) for r0 in range(0, n, plan_.rows)]
    if isinstance(refs, MemoryRows) or 2 * (qs.stop - qs.start) > AHEAD * plan_.rows:
        for cs in cuts:  # the queries' block read here, the references' spans ahead
            yield None, queries.read(qs, cs)
            yield from _ahead(refs, [(rs, cs) for rs in spans])
        return
    todo: list = []
    for cs in cuts:
        todo.append((None, lambda cs=cs: queries.read(qs, cs)))
        todo += [(rs, lambda rs=rs, cs=cs: refs.read(rs, cs)) for rs in spans]
    yield from _in_turn(todo, True)


def _ahead(src: StoredRows | MemoryRows, spans: list, ahead: bool = True) -> Any:
    """``(rows, block)`` for each ``(rows, cols)`` span, read as :func:`_in_turn` reads. At
    most two blocks are held: the plan counts one more block per read (``AHEAD``), or says
    not to read ahead."""
    ahead = ahead and len(spans) >= 2 and not isinstance(src, MemoryRows)
    return _in_turn([(rs, lambda rs=rs, cs=cs: src.read(rs, cs)) for rs, cs in spans], ahead)


def _in_turn(reads: list, ahead: bool) -> Any:
    """``(label, block)`` for each ``(label, read)``: with ``ahead``, the next read made in a
    thread while the caller sums this block (decoding releases the GIL), else each in turn."""
    if not ahead:
        for at, read in reads:
            yield at, read()
        return
    from wdb.memory import one_ahead

    blocks = one_ahead((read() for _, read in reads), "wdb-scan")
    for (at, _), block in zip(reads, blocks, strict=True):
        yield at, block
        del block


def topk_sq(
    refs: StoredRows | MemoryRows,
    ref_ids: np.ndarray,
    queries: StoredRows | MemoryRows,
    q_ids: np.ndarray,
    k: int,
    plan_: Plan,
) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances and ids ``[nq, k]`` of each query's k nearest references (inf / -1
    where fewer), each query's own id excluded; reads as ``plan_`` says."""
    from wdb.store.widechunk import keep_key_chunks

    with keep_key_chunks(plan_.keep):
        return _topk_sq(refs, ref_ids, queries, q_ids, k, plan_)


def _topk_sq(refs, ref_ids, queries, q_ids, k, plan_) -> tuple[np.ndarray, np.ndarray]:
    nq = len(queries)
    n = len(refs)
    out_d = np.full((nq, k), np.inf)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    for q0 in range(0, nq, plan_.queries):
        qs = slice(q0, min(nq, q0 + plan_.queries))
        qid = q_ids[qs]
        best = (out_d[qs], out_i[qs])
        if plan_.whole_rows:
            Q = _queries(queries, qs, plan_.rows)
            spans = [slice(r0, min(n, r0 + plan_.rows)) for r0 in range(0, n, plan_.rows)]
            for rs, R in _ahead(refs, [(rs, None) for rs in spans], plan_.ahead):
                acc = np.zeros((Q.shape[0], R.shape[0]))
                _accumulate(R, Q, acc, plan_.tile, plan_.sub, plan_.fast)
                del R
                best = _top(acc, ref_ids[rs], qid, k, best)
        else:
            acc = np.zeros((qs.stop - q0, n))
            Q = None
            for at, block in _column_reads(refs, queries, qs, plan_):
                if at is None:  # the queries' columns of the next block
                    Q = block
                else:
                    _accumulate(block, Q, acc[:, at], plan_.tile, plan_.sub, plan_.fast)
                del block
            best = _top(acc, ref_ids, qid, k, best)
        out_d[qs], out_i[qs] = best
    return out_d, out_i


def knn(
    refs: Any,
    ref_ids: np.ndarray,
    queries: Any,
    q_ids: np.ndarray,
    k: int,
    budget: int,
    plan_: Plan | None = None,
) -> tuple[np.ndarray, np.ndarray, Plan]:
    """Exact k nearest references (L2) of every query within ``budget`` bytes: ids ``[nq, k]``
    (-1 where fewer exist), float64 distances (nan there), and the plan used."""
    refs, queries = source(refs), source(queries)
    n, dim = refs.shape
    if plan_ is None:
        isz = max(refs.dtype.itemsize, queries.dtype.itemsize)
        plan_ = plan(n, len(queries), dim, isz, k, budget, "the nearest-neighbour scan")
    d2, ids = topk_sq(refs, np.asarray(ref_ids, np.int64), queries, np.asarray(q_ids), k, plan_)
    return finish(d2, ids) + (plan_,)


def finish(d2: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared top-k → (ids with -1, distances with nan) where fewer than k exist."""
    ids = ids.copy()
    dist = np.sqrt(d2)
    missing = ~np.isfinite(dist)
    ids[missing] = -1
    dist[missing] = np.nan
    return ids, dist
