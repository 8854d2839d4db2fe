"""Nearest-neighbour and novelty queries: exact L2 (or aligned L2) joined with behaviour.

``nearest`` answers "which training checkpoints is this one closest to?" for one checkpoint;
``novelty`` answers, for every checkpoint of a selection, "how far is it from the reference set
(min L2) and how similar is its error set to the most similar reference (max IoU)?" and stores
the answer as catalog rows (``relations`` + ``neighbors`` + ``similarity``) that users join in SQL.

Exactness. FAISS (``wdb.query.index``) only proposes candidates. Their distances are recomputed in
float64 from the stored rows, and the candidate set is widened (x4 per round, up to the whole
reference set) until the float32 error bound proves that no reference outside it can be closer
than the k-th exact distance. So every distance reported is the exact L2 and every neighbour list
is the exact one, unless the user built an approximate index (``wdb index build --approx ivf``).

Reference sets are SQL filters over the ``checkpoint_info`` view, restricted to the query's
weight space; the default is a generator run's recorded reference set for its samples
(``wdb.query.reference``) and ``kind = 'training'`` for everything else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wdb.catalog.guard import read, read_columns
from wdb.errors import BadInput, NotFound
from wdb.query.behaviour import eval_set_id, metrics_of, output_sets, pick_eval_set, pick_metrics
from wdb.query.records import LazyRecords, Records
from wdb.query.relations import _fp, _in_list, _reference_fingerprint, _save, relation_status  # noqa: F401

DEFAULT_REFERENCE = "kind = 'training'"
#: reference sets up to this size are scanned exactly without FAISS
BRUTE_MAX = 256
QUERY_BATCH = 256


@dataclass
class RefSet:
    """A selection of checkpoints in one space: ids (sorted), Zarr rows, and display columns."""

    ids: np.ndarray
    rows: np.ndarray
    info: Records  # a dict per checkpoint, made when read

    def __len__(self) -> int:
        return len(self.ids)

    def position(self) -> dict[int, int]:
        return {int(i): p for p, i in enumerate(self.ids)}


def select(db, where: str | None, space_id: int | None = None) -> RefSet:
    """Checkpoints matching a SQL filter over ``checkpoint_info`` (optionally in one space)."""
    clauses = []
    params: dict = {}
    if space_id is not None:
        clauses.append("space_id = :space_id")
        params["space_id"] = int(space_id)
    if where := db.selection(where):
        clauses.append(f"({where})")
    clause = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    what = f"selection '{where.strip()}' over checkpoint_info" if where else "SQL"

    def fetch(cols: str, how=read):
        try:
            return how(
                db.catalog,
                f"SELECT {cols} FROM checkpoint_info {clause} ORDER BY checkpoint_id",
                params,
                what=what,
            )
        except Exception as exc:
            mod = type(exc).__module__
            if "duckdb" in mod or mod.startswith("sqlalchemy"):
                msg = str(exc).splitlines()[0]
                raise BadInput(f"selection '{where}' over checkpoint_info failed: {msg}") from None
            raise

    keys = fetch("checkpoint_id, row", read_columns)
    ids = np.asarray(keys["checkpoint_id"], dtype=np.int64)
    rows = np.asarray(keys["row"], dtype=np.int64)
    info = LazyRecords(
        {"checkpoint_id": ids.tolist(), "row": rows.tolist()},
        lambda: fetch("checkpoint_id, row, sha256, run, step, kind, space_id"),
        f"the selection '{where}'" if where else "the selection",
    )
    return RefSet(ids, rows, info)


def _read(db, space, rows: np.ndarray) -> np.ndarray:
    return db.weights_store.read(space.array_path, rows)


# -- exact k-NN -------------------------------------------------------------------------------
def path_for(db, space, n_ref: int, budget: int) -> str:
    """``scan`` (exact, byte-bounded: ``wdb.query.scan``) or ``index`` (FAISS candidates, exact
    re-rank): the index only for more than ``BRUTE_MAX`` references and only while a flat copy
    of the space (every row as float32) fits the memory budget."""
    if n_ref <= BRUTE_MAX:
        return "scan"
    (count,) = db.catalog.query_rows(
        "SELECT count(*) FROM checkpoints WHERE space_id = :s", {"s": int(space.id)}
    )[1][0]
    return "index" if int(count) * space.n_params * 4 <= budget else "scan"


def stored(db, space, rows: np.ndarray):
    """The stored rows of ``space`` at Zarr rows ``rows`` as a scan source (read lazily)."""
    from wdb.query.scan import rows_of

    return rows_of(db, space.array_path, rows)


def _brute(
    db, space, q, q_ids: np.ndarray, ref: RefSet, k: int, budget: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scan of the whole reference set within the memory budget (``wdb.query.scan``)."""
    from wdb.memory import budget as resolve
    from wdb.query.scan import knn as scan_knn

    ids, dist, _ = scan_knn(stored(db, space, ref.rows), ref.ids, q, q_ids, k, resolve(budget))
    return ids, dist


def _fetch(db, space, ref: RefSet, pos: dict, cache: dict, ids) -> None:
    """Read the rows of ``ids`` not yet in ``cache`` (one Zarr read)."""
    todo = sorted({int(i) for i in ids} - cache.keys())
    if todo:
        rows = _read(db, space, np.array([ref.rows[pos[i]] for i in todo], dtype=np.int64))
        cache.update(zip(todo, rows, strict=True))


def _exact_to(cache: dict, ids: np.ndarray, q64: np.ndarray) -> np.ndarray:
    if not len(ids):
        return np.empty(0)
    diff = np.stack([cache[int(i)] for i in ids]).astype(np.float64) - q64
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def knn(
    db,
    space,
    q_rows,
    q_ids: Sequence[int | None],
    ref: RefSet,
    k: int,
    budget: int | None = None,
    path: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Exact k nearest references (L2) of each query row, each query's own id excluded.

    ``q_rows``: an array, or a row source (``stored``) read block by block. Returns ids
    ``[nq, k]`` (-1 where fewer exist), float64 distances ``[nq, k]`` (nan there), and info
    (``path``: scan or index, index version, whether approximate, candidates examined).
    ``path``: :func:`path_for`'s answer when the caller already read it.
    """
    from wdb.memory import budget as resolve
    from wdb.query.index import ensure, error_bound
    from wdb.query.scan import knn as scan_knn
    from wdb.query.scan import source

    budget = resolve(budget)
    src = source(q_rows)
    nq = len(src)
    qid = np.array([-1 if i is None else int(i) for i in q_ids], dtype=np.int64)
    k = max(1, int(k))
    if (path or path_for(db, space, len(ref), budget)) == "scan":
        ids, dist, plan = scan_knn(stored(db, space, ref.rows), ref.ids, src, qid, k, budget)
        info = {"path": "scan", "index_version": "scan", "approximate": False, "rounds": 0}
        return ids, dist, dict(info, plan=plan.describe())
    q_rows = src.read(slice(None))
    if nq > QUERY_BATCH:  # bounded memory: the row cache holds one batch's candidates
        parts = [
            knn(db, space, q_rows[s : s + QUERY_BATCH], qid[s : s + QUERY_BATCH], ref, k, budget)
            for s in range(0, nq, QUERY_BATCH)
        ]
        info = dict(parts[-1][2], rounds=max(p[2]["rounds"] for p in parts))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), info
    idx = ensure(db, space)
    pos = ref.position()
    qc = idx.centre(q_rows)
    bound = error_bound(
        np.sqrt(np.einsum("ij,ij->i", qc, qc, dtype=np.float64)),
        float(np.sqrt(idx.meta["r2max"])),
        space.n_params,
    )
    in_ref = np.isin(qid, ref.ids)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    out_d = np.full((nq, k), np.nan)
    pending = np.arange(nq)
    kp = max(4 * k, 32)
    rounds = 0
    cache: dict[int, np.ndarray] = {}
    q64 = q_rows.astype(np.float64)
    while len(pending):
        rounds += 1
        want = min(kp + 1, len(ref))
        approx_d, cand = idx.search(qc[pending], want, among=ref.ids)
        lists = []
        for r, qi in enumerate(pending):
            keep = (cand[r] >= 0) & (cand[r] != qid[qi])
            lists.append((cand[r][keep][:kp], approx_d[r][keep][:kp].astype(np.float64)))
        # Read lazily: the first k+2 candidates give an upper bound on the k-th exact distance;
        # only candidates whose approximate distance minus the error bound is below it can be
        # in the top k, so only those rows are read (typically a handful, not kp).
        first = [c[: k + 2] for c, _ in lists]
        _fetch(db, space, ref, pos, cache, np.concatenate(first) if first else [])
        prefix = []
        for (c_ids, c_ad), qi in zip(lists, pending, strict=True):
            ex = _exact_to(cache, c_ids[: k + 2], q64[qi])
            dk2 = np.sort(ex)[k - 1] ** 2 if len(ex) >= k else np.inf
            prefix.append(max(k + 2, int(np.searchsorted(c_ad - bound[qi], dk2, side="right"))))
        more = [c[:m] for (c, _), m in zip(lists, prefix, strict=True)]
        _fetch(db, space, ref, pos, cache, np.concatenate(more) if more else [])
        still = []
        for (c_ids, _), m, qi in zip(lists, prefix, pending, strict=True):
            ids_m = c_ids[:m]
            exact = _exact_to(cache, ids_m, q64[qi])
            o = np.lexsort((ids_m, exact))[:k]
            n_avail = len(ref) - int(in_ref[qi])
            done = (
                idx.approximate
                or m < len(c_ids)  # stopped by the bound: proven exact
                or len(c_ids) >= n_avail
                or len(c_ids) < kp
            )
            if done:
                out_i[qi, : len(o)] = ids_m[o]
                out_d[qi, : len(o)] = exact[o]
            else:
                still.append(qi)
        pending = np.array(still, dtype=np.int64)
        kp *= 4
        if len(pending) and kp + 1 >= len(ref):
            ids, dist = _brute(db, space, q_rows[pending], qid[pending], ref, k, budget)
            out_i[pending], out_d[pending] = ids, dist
            break
    info = {
        "path": "index",
        "index_version": idx.version,
        "approximate": idx.approximate,
        "rounds": rounds,
    }
    if idx.approximate:
        info["recall"] = idx.meta.get("recall")
    return out_i, out_d, info


def aligned_knn(
    db,
    space,
    q_rows: np.ndarray,
    q_ids: Sequence[int | None],
    ref: RefSet,
    k: int,
    budget: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Exact k nearest references by permutation-aligned L2 over the whole reference set,
    read a block of rows at a time within the memory budget (``wdb.query.align.scan_knn``)."""
    from wdb.memory import budget as resolve
    from wdb.query.align import neuron_layout, scan_knn

    nl = neuron_layout(space.layout)
    q_rows = np.atleast_2d(q_rows)
    nq = q_rows.shape[0]
    out_i = np.full((nq, k), -1, dtype=np.int64)
    out_d = np.full((nq, k), np.nan)
    pos = ref.position()
    solved = 0
    exclude = [pos.get(-1 if i is None else int(i), -1) for i in q_ids]
    found = scan_knn(stored(db, space, ref.rows), q_rows, nl, k, exclude, resolve(budget))
    for j, res in enumerate(found):
        out_i[j, : len(res.index)] = ref.ids[res.index]
        out_d[j, : len(res.index)] = res.distance
        solved += res.solved
    info = {"index_version": "aligned-scan", "approximate": False, "hungarian_solved": solved}
    return out_i, out_d, info


# -- nearest ----------------------------------------------------------------------------------
def nearest(
    db,
    run: str | int | dict,
    step: int | None = None,
    k: int = 3,
    among: str | None = None,
    aligned: bool = False,
    eval_set: int | str | None = None,
    memory: int | str | None = None,
) -> list[dict]:
    """The k nearest checkpoints of ``run`` (its last step unless ``step``), exact; ``run`` may
    also be a checkpoint id or a state dict (``wdb.query.probe``).

    Reference set: ``among`` (SQL over ``checkpoint_info``), default training checkpoints, always
    in the query's weight space and without the query itself. Each row: rank, run, step,
    checkpoint_id, kind, distance (exact L2, or exact aligned L2 with ``aligned``), the
    neighbour's metrics (one eval set per metric name), and ``error_iou`` of the two error sets
    where both have predictions on the same eval set (``eval_set`` forces which), and ``path``:
    ``scan`` (byte-bounded exact scan), ``index`` (FAISS candidates, exact re-rank) or
    ``aligned-scan``. ``memory`` (bytes or "512MB"; default ``WDB_MEMORY`` or 1 GB) bounds what
    the search holds at once.
    """
    from wdb.memory import budget

    mem = budget(memory)
    if k < 1:
        raise BadInput(f"k must be at least 1, not {k}")
    # one read-only connection for all its catalog reads: each connect costs 50-70 ms, and
    # splitting the reads around the search measured 0.81 s instead of 0.67 s (bench_query --cli).
    # The search is short here; novelty, which can run for minutes, holds no connection.
    with db.catalog.reading():
        return _nearest(db, run, step, k, among, aligned, eval_set, mem)


def _nearest(db, run, step, k, among, aligned, eval_set, mem) -> list[dict]:
    from wdb.query.probe import probe  # a run, a checkpoint id, or a state dict

    space, q_src, qid = probe(db, run, step)
    ref = select(db, among or DEFAULT_REFERENCE, space.id)
    if not len(ref):
        raise NotFound(
            f"no reference checkpoints in space '{space.name}' match '{among or DEFAULT_REFERENCE}'"
        )
    if aligned:
        q_rows = q_src if isinstance(q_src, np.ndarray) else q_src.read(slice(None))
        ids, dist, info = aligned_knn(db, space, q_rows, [qid], ref, k, mem)
    else:
        ids, dist, info = knn(db, space, q_src, [qid], ref, k, mem)
    if info.get("approximate"):
        import sys

        print(
            f"note: approximate index ({info['index_version']}, measured recall@10 "
            f"{info.get('recall')}): neighbours may be missed; distances are exact",
            file=sys.stderr,
        )
    pos = ref.position()
    found = [(int(i), float(d)) for i, d in zip(ids[0], dist[0], strict=True) if i >= 0]
    nb_ids = [i for i, _ in found]
    values, chosen = pick_metrics(metrics_of(db, nb_ids), nb_ids)
    fixed = ("rank", "run", "step", "checkpoint_id", "kind", "distance", "error_iou", "path")
    names = [n for n in chosen if n not in fixed]  # same keys in every row
    iou: dict[int, float] = {}
    sets = output_sets(db, [qid, *nb_ids]) if qid is not None else {}
    es = eval_set_id(db, eval_set)
    if es is None:
        es = pick_eval_set(sets, [qid], nb_ids)
    if es is not None and qid in sets.get(es, set()):
        from wdb.query.similarity import iou_matrix
        from wdb.store.outputs import error_masks

        have = [i for i in nb_ids if i in sets[es]]
        if have:
            masks = error_masks(db, [qid, *have], es)
            vals = iou_matrix(masks[:1], masks[1:])[0]
            iou = {i: float(v) for i, v in zip(have, vals, strict=True)}
    out = []
    for rank, (cid, d) in enumerate(found, 1):
        meta = ref.info[pos[cid]]
        row = {
            "rank": rank,
            "run": meta["run"],
            "step": meta["step"],
            "checkpoint_id": cid,
            "kind": meta["kind"],
            "distance": d,
        }
        row.update({n: values.get(cid, {}).get(n) for n in names})
        row["error_iou"] = iou.get(cid)
        row["path"] = info.get("path", info.get("index_version"))
        out.append(row)
    return out


# -- novelty ----------------------------------------------------------------------------------
def _novelty_outputs(
    db, t_ids: np.ndarray, ref: RefSet, forced_es: int | None, save: bool = True
) -> dict:
    """What :func:`novelty` reads besides the neighbours: the eval set, each target's max
    error-set IoU with the references (and which one), its metrics, the reference's
    fingerprint (only when the relation is saved: it is stored, not shown). Independent of the
    search, so it runs while a cluster searches."""
    from wdb.query.similarity import max_iou as engine_iou
    from wdb.store.outputs import error_masks

    t_list = t_ids.tolist()
    with db.catalog.reading():  # one connection for these reads, none held while computing
        sets = output_sets(db, np.concatenate([t_ids, ref.ids]))
        # Python ints: hashed 5x faster (and only made where some checkpoint has outputs)
        r_list = ref.ids.tolist() if sets else []
        es = forced_es if forced_es is not None else pick_eval_set(sets, t_list, r_list)
        t_metrics = metrics_of(db, t_ids)
        fingerprint = _reference_fingerprint(db, ref, es) if save else None
    max_iou = np.full(len(t_ids), np.nan)
    max_id = np.full(len(t_ids), -1, dtype=np.int64)
    if es is not None and sets.get(es):
        have_t = [j for j, i in enumerate(t_list) if i in sets[es]]
        have_r = [i for i in r_list if i in sets[es]]
        if have_t and have_r:
            r_pos = {i: j for j, i in enumerate(have_r)}
            tm = error_masks(db, [t_list[j] for j in have_t], es)
            rm = error_masks(db, have_r, es)
            exclude = np.array([r_pos.get(t_list[j], -1) for j in have_t])
            best, arg = engine_iou(tm, rm, exclude)
            max_iou[have_t] = best
            max_id[have_t] = np.where(arg >= 0, np.array(have_r)[np.maximum(arg, 0)], -1)
    mvals, _chosen = pick_metrics(t_metrics, t_ids)
    if es is not None:  # accuracy on the same eval set as the error sets when it exists
        acc_rows = [r for r in t_metrics if r["eval_set_id"] == es and r["name"] == "accuracy"]
        for r in acc_rows:
            mvals[int(r["checkpoint_id"])]["accuracy"] = r["value"]
    return {
        "es": es,
        "max_iou": max_iou,
        "max_id": max_id,
        "mvals": mvals,
        "fingerprint": fingerprint,
    }


def novelty(
    db,
    targets: str,
    reference: str | None = None,
    k: int = 1,
    aligned: bool = False,
    eval_set: int | str | None = None,
    save: bool = True,
    workers: int | None = None,
    memory: int | str | None = None,
) -> list[dict]:
    """Per target: min L2 to the reference set, nearest reference, max error-set IoU, accuracy.

    ``targets`` and ``reference`` are SQL filters over ``checkpoint_info``; the reference set is
    taken in each target's weight space, the target itself excluded; without ``reference``, a
    generator run's samples are compared with the reference set the run recorded
    (``reference_sets``) and other targets with ``kind = 'training'`` (a note on stderr says
    which). ``own_lineage``: the nearest reference is the target's own prompt, source or parent
    (``wdb.query.reference.own_lineage``). ``aligned`` uses permutation-aligned L2
    (one-hidden-layer MLPs). The error-set eval set is ``eval_set`` or the one where most targets
    have predictions. With ``save`` the result is stored as one ``relations`` row per space and
    reference set (kind 'novelty', with the selections, the
    reference fingerprint, index version and time), its ``neighbors`` (k per target) and
    ``similarity`` rows; ``relation_status`` tells whether it is still current. Rows carry
    ``relation_id``. ``workers`` (or ``WDB_ENGINE``) runs the neighbour search on Dask
    (``wdb.query.engine``), with the same results to the last bit. ``memory`` bounds what the
    search holds at once (as in :func:`nearest`); each row's ``path`` says how it was searched.
    """
    from wdb.memory import budget
    from wdb.query import engine as engines
    from wdb.query import reference as refs

    mem = budget(memory)
    run_on = engines.spec(workers)
    # the reads before a search share one connection (a DuckDB connect costs 20-40 ms, and on
    # a cluster nothing is searched until they are done); none is held while searching
    with db.catalog.reading():
        tgt = select(db, targets)
        if not len(tgt):
            raise NotFound(f"no checkpoints match targets '{targets}'")
        forced_es = eval_set_id(db, eval_set)
        by_space = refs.groups(db, tgt, reference, DEFAULT_REFERENCE)
    out: list[dict] = []
    for (space_id, ref_sql), picks in sorted(by_space.items()):
        t0 = time.time()
        t_ids = tgt.ids[picks]
        t_info = [tgt.info[p] for p in picks]
        with db.catalog.reading():
            space = db.space(space_id)
            ref = select(db, ref_sql, space_id)
            path = path_for(db, space, len(ref), mem) if len(ref) else None
        q_rows = stored(db, space, tgt.rows[picks])  # read block by block by the scan
        side: dict = {}

        def meanwhile(t_ids=t_ids, ref=ref, side=side) -> None:
            side.update(_novelty_outputs(db, t_ids, ref, forced_es, save))

        if len(ref):
            nn_ids, nn_d, info = engines.knn(
                db, space, q_rows, list(t_ids), ref, k, aligned, run_on, mem, meanwhile, path
            )
        else:
            nn_ids = np.full((len(picks), k), -1, dtype=np.int64)
            nn_d = np.full((len(picks), k), np.nan)
            info = {"index_version": None, "approximate": False}
            meanwhile()
        es, max_iou, max_id, mvals = side["es"], side["max_iou"], side["max_id"], side["mvals"]
        metric = ("aligned_l2" if aligned else "l2") + ("+error_iou" if es is not None else "")
        rel = {
            "kind": "novelty",
            "metric": metric,
            "space_id": space_id,
            "target_selection": targets,
            "reference_selection": ref_sql,
            "reference_fingerprint": side["fingerprint"],
            "index_version": info.get("index_version"),
            "params": json.dumps(
                {
                    "k": k,
                    "aligned": aligned,
                    "eval_set_id": es,
                    "n_targets": len(picks),
                    "n_reference": len(ref),
                    "target_fingerprint": _fp(
                        [f"{i}:{x['sha256']}" for i, x in zip(t_ids, t_info, strict=True)]
                    ),
                    "approximate": bool(info.get("approximate")),
                    "path": info.get("path"),
                    "seconds": round(time.time() - t0, 3),
                },
                sort_keys=True,
            ),
        }
        rows = []
        for j, (cid, ti) in enumerate(zip(t_ids, t_info, strict=True)):
            nid = int(nn_ids[j, 0])
            rows.append(
                {
                    "checkpoint_id": int(cid),
                    "run": ti["run"],
                    "step": ti["step"],
                    "kind": ti["kind"],
                    "min_l2": None if nid < 0 else float(nn_d[j, 0]),
                    "nearest_id": None if nid < 0 else nid,
                    "own_lineage": None,
                    "max_iou": None if max_id[j] < 0 else float(max_iou[j]),
                    "max_iou_id": None if max_id[j] < 0 else int(max_id[j]),
                    "accuracy": mvals.get(int(cid), {}).get("accuracy"),
                    "path": info.get("path", info.get("index_version")),
                }
            )
        refs.mark_lineage(db, rows)
        rid = _save(db, rel, rows, nn_ids, nn_d) if save else None
        for r in rows:
            r["relation_id"] = rid
        out.extend(rows)
    return out
