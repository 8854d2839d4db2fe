"""FAISS index per weight space: built on demand, persisted, keyed by checkpoint id, kept fresh.

Files under ``<db>/index/space-<id>/``::

    index.faiss   IndexIDMap2 over IndexFlatL2 (exact, default) or IndexIVFFlat (``approx``)
    mean.npy      the float64 vector subtracted from every row before it enters the index
    ids.npy       the indexed checkpoint ids, sorted
    meta.json     count, max id, fingerprint of the indexed (id, row, sha256), kind, version, ...

Centring (STACK.md): checkpoints of one run differ by ~1e-5 while their values are ~0.1, so
uncentred float32 distances drown in rounding. The mean is estimated once from a random sample of
up to ``MEAN_SAMPLE`` rows (any constant shift keeps L2 distances; the mean only has to shrink
the norms) and kept for incremental adds, so one pass over Zarr builds the index in bounded memory.

Freshness: the catalog's (id, row, sha256) of the space are hashed and compared with the
fingerprint stored at build time. Only additions → ``stale`` and updated incrementally (new rows
added, same mean); removed or rewritten rows → rebuilt. Queries call ``ensure`` and so never read
a stale index. The FAISS distances are only used to choose candidates: ``wdb.query.nearest`` re-ranks them
exactly in float64 from Zarr and widens the candidate set until the float32 error bound
(``error_bound``) proves the exact top-k is inside it.

GPU: when faiss-gpu is installed and ``faiss.get_num_gpus() > 0``, batched searches (many query
rows, e.g. ``novelty``) run on a GPU copy of the reference vectors; single queries stay on CPU
where the transfer would cost more than the search.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wdb.errors import BadInput, WdbError

INDEX_FORMAT = 1
MEAN_SAMPLE = 2048
READ_BATCH = 2048
#: unit roundoff of float32
U32 = 2.0**-24


#: the most bytes a flat copy of a reference subset may take for a fast search (else IDSelector)
SUBSET_COPY_BYTES = 1 << 30


def _faiss():
    import faiss

    return faiss


def gpu_available() -> bool:
    """True when a GPU build of FAISS sees a GPU."""
    faiss = _faiss()
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover - broken CUDA setups
        return False


def space_rows(db, space_id: int) -> list[tuple[int, int, str]]:
    """Catalog (id, row, sha256) of every checkpoint in a space, by id."""
    _, rows = db.catalog.query_rows(
        "SELECT id, row, sha256 FROM checkpoints WHERE space_id = :s ORDER BY id", {"s": space_id}
    )
    return [(int(i), int(r), s) for i, r, s in rows]


def fingerprint(rows: Sequence[tuple[int, int, str]]) -> str:
    """Hash of a set of (id, row, sha256): changes when any checkpoint is added, removed or moved."""
    h = hashlib.sha256()
    h.update("\n".join(f"{i}:{r}:{s}" for i, r, s in sorted(rows)).encode())
    return h.hexdigest()


def error_bound(q_norm: np.ndarray | float, r_max: float, dim: int) -> np.ndarray | float:
    """Bound on |FAISS squared distance − exact squared distance| for centred float32 vectors.

    Rounding the centred vectors to float32 moves each by at most ``u·|v|`` (u = 2^-24) and
    float32 accumulation of a D-term sum (direct or Gram form) errs by about ``√D·u`` of the norms
    involved; the factor 8 and the constant are safety margins. The bound is used only to decide
    when the candidate set provably contains the exact top-k, so being loose costs time, not
    correctness.
    """
    return (8.0 * np.sqrt(dim) + 64.0) * U32 * (np.asarray(q_norm) + r_max) ** 2


@dataclass
class SpaceIndex:
    """A loaded index of one space."""

    space: Any  # wdb.db.Space
    index: Any  # faiss.Index
    mean: np.ndarray
    ids: np.ndarray
    meta: dict

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def approximate(self) -> bool:
        return self.meta["kind"] != "flat"

    def centre(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rows.astype(np.float64) - self.mean, dtype=np.float32)

    def search(
        self, queries: np.ndarray, k: int, among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate (float32) search of centred queries; ``among`` restricts to these ids.

        Returns squared distances and ids ``[nq, k]`` (id -1 where fewer exist).
        """
        faiss = _faiss()
        k = max(1, int(k))
        subset = among is not None and not (
            len(among) == len(self.ids) and np.array_equal(among, self.ids)
        )
        if queries.shape[0] >= 64 and not self.approximate and gpu_available():
            return self._flat_search(queries, k, among if subset else self.ids, gpu=True)
        if (
            subset
            and not self.approximate
            and queries.shape[0] >= 64
            and len(among) * queries.shape[1] * 4 <= SUBSET_COPY_BYTES
        ):
            # FAISS's IDSelector search scans vector by vector (no BLAS): for many queries a
            # flat copy of the subset is several times faster (2,000 x 10,000 x 2,000: measured
            # in benchmarks/bench_scale.py --only-novelty); the exact refinement is unchanged
            return self._flat_search(queries, k, np.asarray(among, dtype=np.int64), gpu=False)
        params = None
        if self.approximate:
            params = faiss.SearchParametersIVF(nprobe=int(self.meta.get("nprobe", 8)))
        if subset:
            sel = faiss.IDSelectorBatch(np.ascontiguousarray(among, dtype=np.int64))
            if params is None:
                params = faiss.SearchParameters(sel=sel)
            else:
                params.sel = sel
        dist, ids = self.index.search(queries, k, params=params)
        return dist, ids

    def _flat_search(self, queries: np.ndarray, k: int, among: np.ndarray, gpu: bool):
        """Exact float32 search over a flat copy of the ``among`` vectors (GPU or CPU)."""
        faiss = _faiss()
        vecs = self.index.reconstruct_batch(np.ascontiguousarray(among, dtype=np.int64))
        if gpu:
            flat = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), vecs.shape[1])
        else:
            flat = faiss.IndexFlatL2(vecs.shape[1])
        flat.add(vecs)
        dist, pos = flat.search(queries, min(k, len(among)))
        ids = np.where(pos >= 0, among[np.maximum(pos, 0)], -1)
        if ids.shape[1] < k:
            pad = k - ids.shape[1]
            dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return dist, ids


def index_dir(db, space_id: int) -> Path:
    return Path(db.index_dir) / f"space-{space_id}"


def read_meta(db, space_id: int) -> dict | None:
    path = index_dir(db, space_id) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return meta if meta.get("format") == INDEX_FORMAT else None


def freshness(db, space, rows: list[tuple[int, int, str]] | None = None) -> dict:
    """How the index of ``space`` relates to the catalog now.

    ``state``: ``missing`` | ``fresh`` | ``stale`` (only additions: ``new`` lists them, an
    incremental add fixes it) | ``changed`` (rows removed or rewritten: needs a rebuild).
    """
    rows = space_rows(db, space.id) if rows is None else rows
    fp = fingerprint(rows)
    meta = read_meta(db, space.id)
    out = {"state": "missing", "fingerprint": fp, "meta": meta, "new": [], "n_catalog": len(rows)}
    if meta is None or meta.get("dim") != space.n_params:
        return out
    if meta["fingerprint"] == fp:
        out["state"] = "fresh"
        return out
    indexed = np.load(index_dir(db, space.id) / "ids.npy")
    known = np.isin(np.array([r[0] for r in rows], dtype=np.int64), indexed)
    old = [r for r, k in zip(rows, known, strict=True) if k]
    if len(old) == len(indexed) and fingerprint(old) == meta["fingerprint"]:
        out["state"] = "stale"
        out["new"] = [r for r, k in zip(rows, known, strict=True) if not k]
    else:
        out["state"] = "changed"
    return out


@contextlib.contextmanager
def _lock(db) -> Iterator[None]:
    Path(db.index_dir).mkdir(parents=True, exist_ok=True)
    with (Path(db.index_dir) / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load(db, space, mmap: bool = True) -> SpaceIndex | None:
    """The persisted index as is (no freshness check); memory-mapped unless it will be modified."""
    faiss = _faiss()
    folder = index_dir(db, space.id)
    for _ in range(3):  # a concurrent writer replaces files one by one; meta.json goes last
        meta = read_meta(db, space.id)
        if meta is None:
            return None
        flags = faiss.IO_FLAG_MMAP_IFC if mmap and meta["kind"] == "flat" else 0
        try:
            index = faiss.read_index(str(folder / "index.faiss"), flags)
            ids = np.load(folder / "ids.npy")
            mean = np.load(folder / "mean.npy")
        except (RuntimeError, FileNotFoundError, ValueError):
            time.sleep(0.05)
            continue
        if index.ntotal == meta["count"] == len(ids):
            return SpaceIndex(space, index, mean, ids, meta)
        time.sleep(0.05)
    raise WdbError(
        f"{folder}: index files disagree with meta.json; run `wdb index build --rebuild`"
    )


def _atomic_save(folder: Path, index, ids: np.ndarray, mean: np.ndarray, meta: dict) -> None:
    faiss = _faiss()
    folder.mkdir(parents=True, exist_ok=True)
    tag = f".tmp{os.getpid()}"
    np.save(folder / f"ids{tag}.npy", ids)
    np.save(folder / f"mean{tag}.npy", mean)
    faiss.write_index(index, str(folder / f"index{tag}.faiss"))
    (folder / f"meta{tag}.json").write_text(json.dumps(meta, indent=1))
    for name in ("ids.npy", "mean.npy", "index.faiss", "meta.json"):
        stem, ext = name.split(".")
        os.replace(folder / f"{stem}{tag}.{ext}", folder / name)


def _read_rows(db, space, rows: np.ndarray) -> np.ndarray:
    return db.weights_store.read(space.array_path, rows)


def _stream(db, space, rows: list[tuple[int, int, str]], desc: str):
    from wdb.progress import progress

    starts = range(0, len(rows), READ_BATCH)
    for s in progress(starts, total=len(starts), desc=desc):
        chunk = rows[s : s + READ_BATCH]
        ids = np.array([r[0] for r in chunk], dtype=np.int64)
        block = _read_rows(db, space, np.array([r[1] for r in chunk], dtype=np.int64))
        yield ids, block


def _new_index(dim: int, n: int, approx: str | None, sample: np.ndarray, nlist: int | None):
    faiss = _faiss()
    if approx is None:
        return faiss.IndexIDMap2(faiss.IndexFlatL2(dim)), {"kind": "flat"}
    if approx != "ivf":
        raise BadInput(f"approximate index kind must be 'ivf', not '{approx}'")
    nlist = int(nlist or max(1, min(int(4 * np.sqrt(n)), sample.shape[0] // 39)))
    quantizer = faiss.IndexFlatL2(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist)
    ivf.train(sample)
    ivf.make_direct_map()
    index = faiss.IndexIDMap2(ivf)
    index.own_fields = True  # the C++ objects own each other; Python lets go of both
    ivf.own_fields = True
    ivf.this.disown()
    quantizer.this.disown()
    return index, {"kind": "ivf", "nlist": nlist, "nprobe": max(1, nlist // 8)}


def build_space(
    db,
    space,
    approx: str | None = None,
    rebuild: bool = False,
    nlist: int | None = None,
    nprobe: int | None = None,
) -> dict:
    """Build, update or leave alone the index of one space; returns its status row."""
    with _lock(db):
        rows = space_rows(db, space.id)
        fr = freshness(db, space, rows)
        meta = fr["meta"]
        kind = "flat" if approx is None else approx
        if meta is not None and meta["kind"] != kind:
            rebuild = True
        t0 = time.perf_counter()
        if fr["state"] == "fresh" and not rebuild:
            if nprobe and meta.get("nprobe") != nprobe:
                meta["nprobe"] = int(nprobe)
                (index_dir(db, space.id) / "meta.json").write_text(json.dumps(meta, indent=1))
            return _status_row(db, space, fr, action="none")
        if not rows:
            raise BadInput(f"space '{space.name}' has no checkpoints to index")
        if fr["state"] == "stale" and not rebuild:
            loaded = load(db, space, mmap=False)
            index, mean, todo = loaded.index, loaded.mean, fr["new"]
            ids_all = list(loaded.ids)
            r2 = float(meta["r2max"])
            new_meta = dict(meta)
            action = f"added {len(todo)}"
        else:
            rng = np.random.default_rng(0)
            pick = np.sort(rng.choice(len(rows), min(len(rows), MEAN_SAMPLE), replace=False))
            sample = _read_rows(db, space, np.array([rows[i][1] for i in pick], dtype=np.int64))
            mean = sample.astype(np.float64).mean(0)
            centred_sample = np.ascontiguousarray(sample - mean, dtype=np.float32)
            index, extra = _new_index(space.n_params, len(rows), approx, centred_sample, nlist)
            todo, ids_all, r2 = rows, [], 0.0
            new_meta = {"format": INDEX_FORMAT, "space_id": space.id, "dim": space.n_params}
            new_meta.update(extra)
            if nprobe:
                new_meta["nprobe"] = int(nprobe)
            new_meta["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            action = "built"
        for ids, block in _stream(db, space, todo, f"index {space.name}"):
            centred = np.ascontiguousarray(block.astype(np.float64) - mean, dtype=np.float32)
            r2 = max(r2, float(np.einsum("ij,ij->i", centred, centred).max()))
            index.add_with_ids(centred, ids)
            ids_all.extend(ids.tolist())
        ids_arr = np.array(sorted(ids_all), dtype=np.int64)
        new_meta.update(
            count=int(index.ntotal),
            max_id=int(ids_arr[-1]),
            fingerprint=fr["fingerprint"],
            version=f"{new_meta['kind']}-{fr['fingerprint'][:16]}",
            r2max=r2,
            faiss=_faiss().__version__,
            updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            build_s=round(time.perf_counter() - t0, 3),
        )
        if new_meta["kind"] != "flat":
            new_meta["recall"] = _measure_recall(db, space, index, mean, rows, new_meta)
        _atomic_save(index_dir(db, space.id), index, ids_arr, mean, new_meta)
        fr = freshness(db, space, rows)
        return _status_row(db, space, fr, action=action)


def _measure_recall(db, space, index, mean, rows, meta, n_queries: int = 32, k: int = 10) -> float:
    """recall@k of the approximate index's candidates (k·4 of them, as queries use) vs exact L2."""
    faiss = _faiss()
    rng = np.random.default_rng(1)
    pick = rng.choice(len(rows), min(n_queries, len(rows)), replace=False)
    qids = np.array([rows[i][0] for i in pick])
    q = _read_rows(db, space, np.array([rows[i][1] for i in pick])).astype(np.float64)
    k = min(k, len(rows) - 1)
    if k < 1:
        return 1.0
    best_d = np.full((len(q), k), np.inf)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    for ids, block in _stream(db, space, rows, "recall"):
        b = block.astype(np.float64)
        d = (q * q).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * q @ b.T
        d[qids[:, None] == ids[None, :]] = np.inf
        d = np.concatenate([best_d, d], 1)
        i = np.concatenate([best_i, np.broadcast_to(ids, (len(q), len(ids)))], 1)
        o = np.argsort(d, 1)[:, :k]
        best_d, best_i = np.take_along_axis(d, o, 1), np.take_along_axis(i, o, 1)
    params = faiss.SearchParametersIVF(nprobe=int(meta["nprobe"]))
    qc = np.ascontiguousarray(q - mean, dtype=np.float32)
    _, cand = index.search(qc, 4 * k + 1, params=params)
    hits = sum(len(set(best_i[j]) & set(cand[j])) for j in range(len(q)))
    return round(hits / best_i.size, 4)


def _status_row(db, space, fr: dict, action: str | None = None) -> dict:
    meta = fr["meta"] or {}
    folder = index_dir(db, space.id)
    size = sum(p.stat().st_size for p in folder.glob("*") if p.is_file()) if folder.exists() else 0
    row = {
        "space": space.name,
        "space_id": space.id,
        "state": fr["state"],
        "checkpoints": fr["n_catalog"],
        "indexed": meta.get("count", 0),
        "new": len(fr["new"]),
        "kind": meta.get("kind"),
        "version": meta.get("version"),
        "recall": meta.get("recall"),
        "size_mb": round(size / 2**20, 2),
        "updated_at": meta.get("updated_at"),
    }
    if action is not None:
        row["action"] = action
        row["seconds"] = meta.get("build_s")
    return row


def _spaces(db, space) -> list:
    if space is not None:
        return [db.space(space)]
    return [db.space(int(r["id"])) for r in db.sql("SELECT id FROM spaces ORDER BY id")]


def build(
    db,
    space: int | str | None = None,
    approx: str | None = None,
    rebuild: bool = False,
    nlist: int | None = None,
    nprobe: int | None = None,
) -> list[dict]:
    """Build or update the index of one space (or of every space); status rows."""
    return [
        build_space(db, s, approx=approx, rebuild=rebuild, nlist=nlist, nprobe=nprobe)
        for s in _spaces(db, space)
    ]


def status(db, space: int | str | None = None) -> list[dict]:
    """Per space: fresh / stale / changed / missing, counts, kind, size."""
    return [_status_row(db, s, freshness(db, s)) for s in _spaces(db, space)]


def ensure(db, space) -> SpaceIndex:
    """A fresh index of ``space``: loaded as is when fresh, else updated or built first."""
    rows = space_rows(db, space.id)
    fr = freshness(db, space, rows)
    if fr["state"] != "fresh":
        meta = fr["meta"] or {}
        approx = None if meta.get("kind", "flat") == "flat" else meta["kind"]
        row = build_space(db, space, approx=approx, nlist=meta.get("nlist"))
        print(
            f"note: index of space '{space.name}': {row.get('action')} ({row['indexed']} checkpoints)",
            file=sys.stderr,
        )
    loaded = load(db, space)
    if loaded is None:  # pragma: no cover - removed between build and load
        raise WdbError(f"index of space '{space.name}' vanished while loading")
    return loaded
