"""Verified reads: every stored row that comes back out of the weight store matches a hash the
catalog holds for it, or the read fails with :class:`wdb.errors.DamagedChunk`.

What is hashed. ``checkpoints.chunk_hashes`` (revision 0006) holds, per checkpoint, the
xxh3_128 digest of each column block of its row (the row's part of one Zarr chunk): the text
``"<width>:<hex><hex>..."``, 32 hex digits per block of ``width`` columns (the array's chunk
width when the row was written). A full-row read hashes every block of the row; a column slice
(a few columns of many rows) decodes whole chunks anyway (a chunk is the unit Zarr decodes), so
it reads the blocks its columns fall in, checks those blocks' digests, and slices the columns
out: the check costs hashing bytes that were decoded regardless, and never a whole-row read.
A hash inside each chunk's encoding would also catch damage, but it is a format change and
cannot tell a deleted chunk (Zarr reads it as fill values, and zarr 3.1 has no setting that
makes a missing chunk an error) from a chunk of zeros; the catalog's hashes say what the bytes
*should* be, whatever the store holds.

Why xxh3_128 and not the catalog's sha256: on this machine sha256 runs at about the speed of
the codec's decode, so checking it on every read would nearly double read time; xxh3 is some
20x faster (``benchmarks/bench_verify.py`` measures both). Rows written before revision 0006
have no ``chunk_hashes``: their reads fall back to sha256 of the whole row (a column slice of
such a row reads the whole row), until ``wdb fsck`` records their block hashes.

Rows that no checkpoint references (a crashed write's tail) have nothing to be checked
against and are returned as read. The expected hashes are cached per array (a row's hash never
changes while a checkpoint holds it); a mismatch is re-checked against the catalog before it is
reported, so a cache entry made stale by a deleted checkpoint cannot raise a false alarm.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import xxhash

from wdb.errors import DamagedChunk

if TYPE_CHECKING:
    from wdb.store.arrays import ArrayStore

HEX = 32  # hex digits of one xxh3_128 digest
#: bytes of decoded blocks a column-slice read holds at once
SLICE_BYTES = 64 << 20


class Expected(NamedTuple):
    """What the catalog says one stored row holds."""

    checkpoint_id: int
    run: str | None
    step: int
    sha256: str
    chunk_hashes: str | None
    damaged: str | None


def chunk_hashes(row: np.ndarray, width: int) -> str:
    """``"<width>:<hex>..."``: xxh3_128 of each ``width``-column block of ``row`` (its bytes as
    stored: the storage dtype, native order)."""
    row = np.ascontiguousarray(row).reshape(-1)
    parts = [xxhash.xxh3_128_digest(row[a : a + width].data) for a in range(0, row.size, width)]
    return f"{width}:{b''.join(parts).hex()}"


def block_digest(segment: np.ndarray) -> bytes:
    """xxh3_128 of one block (what :func:`chunk_hashes` concatenates)."""
    return xxhash.xxh3_128_digest(np.ascontiguousarray(segment).data)


def _parse(text: str) -> tuple[int, str]:
    width, _, hexs = text.partition(":")
    return int(width), hexs


_COLUMNS = "c.chunk_hashes, c.damaged"
_NO_COLUMNS = "NULL AS chunk_hashes, NULL AS damaged"


class RowHashes:
    """The catalog's expectations for rows of the weight arrays, fetched on demand and cached.

    ``sql(query, params)`` runs a read-only query (``Database.sql``); ``duckdb`` picks the
    list-parameter idiom. Catalogs before revision 0006 (a ``Database`` opened without
    upgrading) lack the two columns: their rows are checked by sha256 alone."""

    def __init__(self, sql: Callable[[str, dict | None], list[dict]], duckdb: bool) -> None:
        self._sql = sql
        self._duckdb = duckdb
        self._columns: str | None = None
        self._by_path: dict[str, dict[int, Expected]] = {}

    def select(self, where: str, params: dict) -> list[dict]:
        """Checkpoint rows (``row``, ``id``, ``space_id``, ``run``, ``step``, ``sha256``,
        ``chunk_hashes``, ``damaged``) of ``checkpoints c`` matching ``where``."""
        for cols in [self._columns] if self._columns else [_COLUMNS, _NO_COLUMNS]:
            sql = (
                f"SELECT c.row, c.id, c.space_id, r.name AS run, c.step, c.sha256, {cols} "
                "FROM checkpoints c LEFT JOIN runs r ON r.id = c.run_id "
                f"JOIN spaces s ON s.id = c.space_id WHERE {where}"
            )
            try:
                out = self._sql(sql, params)
            except Exception as exc:
                if cols == _COLUMNS and "chunk_hashes" in str(exc):
                    continue  # a catalog before revision 0006
                raise
            self._columns = cols
            return out
        raise AssertionError("unreachable")

    def in_list(self, column: str, name: str) -> str:
        if self._duckdb:
            return f"{column} IN (SELECT unnest(CAST(:{name} AS BIGINT[])))"
        return f"{column} = ANY(:{name})"

    def prime(self, path: str, records: Iterable[dict]) -> None:
        """Remember expectations already fetched (``Database.weights`` gets them with the
        rows' locations, saving a second query)."""
        cache = self._by_path.setdefault(path, {})
        for r in records:
            cache[int(r["row"])] = _expected(r)

    def get(self, path: str, rows: np.ndarray, refresh: bool = False) -> dict[int, Expected]:
        """Expectations of ``rows`` (unique) that a checkpoint references."""
        cache = self._by_path.setdefault(path, {})
        want = [int(r) for r in rows if refresh or int(r) not in cache]
        if want:
            if refresh:
                for r in want:
                    cache.pop(r, None)
            if len(want) > 256:  # a scan: one range query, not a long list
                found = self.select(
                    "s.array_path = :p AND c.row BETWEEN :lo AND :hi",
                    {"p": path, "lo": min(want), "hi": max(want)},
                )
            else:
                found = self.select(
                    f"s.array_path = :p AND {self.in_list('c.row', 'rows')}",
                    {"p": path, "rows": want},
                )
            self.prime(path, found)
        return {int(r): cache[int(r)] for r in rows if int(r) in cache}

    # -- the read --------------------------------------------------------------------------
    def read(self, store: ArrayStore, path: str, rows: Any, cols: Any = None) -> np.ndarray:
        """``store.read`` checked against the catalog (see the module docstring)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return store.read(path, rows, cols, verify=False)
        expect = self.get(path, np.unique(rows))
        if not expect:
            return store.read(path, rows, cols, verify=False)
        arr = store.array(path)
        n_cols = int(arr.shape[1])
        widths = {_parse(e.chunk_hashes)[0] for e in expect.values() if e.chunk_hashes}
        whole = cols is None or len(widths) != 1 or any(not e.chunk_hashes for e in expect.values())
        if whole:
            data = self._guarded(store, path, rows, None, expect)
            self._check(store, path, rows, data, 0, None, expect)
            return data if cols is None else data[:, cols]
        (width,) = widths
        idx = np.arange(n_cols)[cols]
        scalar = np.ndim(idx) == 0
        idx = np.atleast_1d(idx)
        if idx.size == 0:
            return store.read(path, rows, cols, verify=False)
        blocks = np.unique(idx // width)
        c0, c1 = int(blocks[0]) * width, min(n_cols, (int(blocks[-1]) + 1) * width)
        out = np.empty((rows.size, idx.size), dtype=arr.dtype)
        step = max(1, SLICE_BYTES // max(1, (c1 - c0) * arr.dtype.itemsize))
        for a in range(0, rows.size, step):
            part = rows[a : a + step]
            data = self._guarded(store, path, part, slice(c0, c1), expect)
            self._check(store, path, part, data, c0, blocks, expect)
            out[a : a + step] = data[:, idx - c0]
        return out[:, 0] if scalar else out

    def _guarded(
        self, store: ArrayStore, path: str, rows: np.ndarray, cols: slice | None, expect: dict
    ) -> np.ndarray:
        """The raw read; a chunk that does not decode becomes a :class:`DamagedChunk`."""
        try:
            return store.read(path, rows, cols, verify=False)
        except Exception as exc:
            arr = store.array(path)
            rpc, cpc = int(arr.chunks[0]), int(arr.chunks[1])
            n_rows, n_cols = int(arr.shape[0]), int(arr.shape[1])
            c0, c1 = (0, n_cols) if cols is None else (cols.start, cols.stop)
            bad: dict[int, tuple[int, int]] = {}
            for g in np.unique(rows // rpc):
                for j in range(c0 // cpc, (c1 - 1) // cpc + 1):
                    try:
                        arr[g * rpc : min(n_rows, (g + 1) * rpc), j * cpc : (j + 1) * cpc]
                    except Exception:
                        for r in rows[rows // rpc == g]:
                            bad.setdefault(int(r), (int(g), j))
                        break
            if not bad:
                raise
            raise self._damaged(store, path, bad, expect, "does not decode") from exc

    def _check(
        self,
        store: ArrayStore,
        path: str,
        rows: np.ndarray,
        data: np.ndarray,
        c0: int,
        blocks: np.ndarray | None,
        expect: dict[int, Expected],
    ) -> None:
        """Compare ``data`` (columns from ``c0``) with the expected hashes: every block of a
        whole row, or ``blocks`` of a column-block read."""
        bad = _mismatches(rows, data, c0, blocks, expect)
        if not bad:
            return
        fresh = self.get(path, np.array(sorted(bad), dtype=np.int64), refresh=True)
        expect.update(fresh)
        for r in list(bad):
            if r not in fresh:  # no longer referenced: nothing to check
                expect.pop(r, None)
                del bad[r]
        still = _mismatches(rows, data, c0, blocks, {r: expect[r] for r in bad})
        if still:
            arr = store.array(path)
            where = {
                r: (r // int(arr.chunks[0]), (c0 + off) // int(arr.chunks[1]))
                for r, off in still.items()
            }
            raise self._damaged(store, path, where, expect, "does not match its hash")

    @staticmethod
    def _damaged(
        store: ArrayStore, path: str, bad: dict[int, tuple[int, int]], expect: dict, how: str
    ) -> DamagedChunk:
        from zarr.core.sync import sync

        named = sorted((expect[r], r) for r in bad if r in expect)
        arr = store.array(path)
        first_row = named[0][1] if named else min(bad)
        key = arr.metadata.encode_chunk_key(bad[first_row])
        try:
            sp = arr.store_path
            missing = not sync(sp.store.exists(f"{sp.path}/{key}"))
        except Exception:
            missing = False
        reason = f"chunk {path}/{key} " + ("is missing" if missing else how)
        fix = "run `wdb fsck` (`wdb fsck --fix` restores it from its source file if that is still there)"
        if not named:
            return DamagedChunk(f"weight store: {reason} (row {first_row}); {fix}")
        e = named[0][0]
        more = f"; {len(named) - 1} more damaged checkpoints in this read" if len(named) > 1 else ""
        marked = ", marked damaged by `wdb fsck`" if e.damaged else ""
        return DamagedChunk(
            f"checkpoint {e.checkpoint_id} (run '{e.run}' step {e.step}): stored weights are "
            f"damaged ({reason}{marked}){more}; {fix}",
            tuple(x.checkpoint_id for x, _ in named),
        )


def _expected(r: dict) -> Expected:
    return Expected(
        int(r["id"]),
        r.get("run"),
        int(r["step"]),
        r["sha256"],
        r.get("chunk_hashes"),
        r.get("damaged"),
    )


def _mismatches(
    rows: np.ndarray,
    data: np.ndarray,
    c0: int,
    blocks: np.ndarray | None,
    expect: dict[int, Expected],
) -> dict[int, int]:
    """Rows whose bytes in ``data`` differ from ``expect`` → column offset (in ``data``) of the
    first differing block."""
    bad: dict[int, int] = {}
    for i, r in enumerate(rows.tolist()):
        e = expect.get(r)
        if e is None or r in bad:
            continue
        if not e.chunk_hashes:  # a row written before revision 0006: its sha256
            if hashlib.sha256(np.ascontiguousarray(data[i]).data).hexdigest() != e.sha256:
                bad[r] = 0
            continue
        width, hexs = _parse(e.chunk_hashes)
        if blocks is None:
            if chunk_hashes(data[i], width) == e.chunk_hashes:
                continue
            got = _parse(chunk_hashes(data[i], width))[1]
            diff = [
                b
                for b in range(len(hexs) // HEX)
                if got[b * HEX : (b + 1) * HEX] != hexs[b * HEX : (b + 1) * HEX]
            ]
            bad[r] = (diff[0] if diff else 0) * width
            continue
        for b in blocks.tolist():
            a = b * width - c0
            seg = data[i, a : a + width]
            if block_digest(seg).hex() != hexs[b * HEX : (b + 1) * HEX]:
                bad[r] = a
                break
    return bad
