"""Reading a family's delta rows: which rows are deltas (from the catalog, cached) and their
values decoded against their key rows (``wdb.store.family`` writes them; its docstring says
how they are stored).

Why a module of its own: the read side has grown its own concerns (the catalog read-only, a
scan's column blocks decoding only their chunks, a damaged parent named with the row), and
it is what every verified read of a wide space goes through (``ArrayStore.family``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from wdb.store.family import DamagedFamily, _fill_borrowed, digest, parse_tokens

if TYPE_CHECKING:
    from wdb.store.arrays import ArrayStore


class DeltaIndex:
    """Which stored rows are deltas, per array path, read from the catalog and cached.

    Rows at or below the highest row a checkpoint referenced when the cache was filled never
    change (rows are append-only; only unreferenced tail rows are ever rewritten), so a read
    of a higher row refreshes the cache first: another process's new delta rows are never read
    as values."""

    def __init__(self, catalog: Any):
        self.catalog = catalog
        self._local = threading.local()  # the last row decoded whole, per reader thread
        self._cache: dict[
            str, tuple[int, int, dict[int, tuple[int, dict[int, tuple[str, int]], str]]]
        ] = {}

    def _load(self, path: str) -> tuple[int, int, dict]:
        try:
            return self._query(path)
        except Exception as exc:  # a catalog before revision 0007: no delta rows
            if "family_rows" not in str(exc):
                raise
            entry = (-1, 1 << 62, {})
            self._cache[path] = entry
            return entry

    def _query(self, path: str) -> tuple[int, int, dict]:
        """Read-only (``Catalog.query_rows``): a read of rows opens no write transaction."""
        q = self.catalog.query_rows
        _, got = q(
            "SELECT s.id, (SELECT max(row) FROM checkpoints c WHERE c.space_id = s.id) "
            "FROM spaces s WHERE s.array_path = :p",
            {"p": path},
        )
        if not got:  # no space yet: nothing to cache
            return (-1, -1, {})
        sid, top = got[0]
        rows = {}
        for r, p, chunks, dig in q(
            "SELECT row, parent_row, delta_chunks, digest FROM family_rows "
            "WHERE space_id = :s AND parent_row IS NOT NULL",
            {"s": sid},
        )[1]:
            rows[int(r)] = (int(p), parse_tokens(chunks, int(r)), dig)
        entry = (int(sid), -1 if top is None else int(top), rows)
        self._cache[path] = entry
        return entry

    def deltas(
        self, path: str, rows: np.ndarray
    ) -> dict[int, tuple[int, dict[int, tuple[str, int]], str]]:
        entry = self._cache.get(path)
        if entry is None or (rows.size and int(rows.max()) > entry[1]):
            entry = self._load(path)
        return entry[2]

    def _name(self, path: str, row: int) -> str:
        sid = self._cache.get(path, (None,))[0]
        _, got = self.catalog.query_rows(
            "SELECT c.id, r.name, c.step FROM checkpoints c JOIN runs r ON r.id = c.run_id "
            "WHERE c.space_id = :s AND c.row = :r ORDER BY c.id LIMIT 1",
            {"s": sid, "r": row},
        )
        if not got:
            return f"row {row} (no checkpoint)"
        return f"checkpoint {got[0][0]} (run '{got[0][1]}' step {got[0][2]})"

    def decode(
        self,
        store: ArrayStore,
        path: str,
        row: int,
        depth: int = 0,
        raw: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """The values of ``row`` (``raw``: its stored row, when already read; ``out``: where
        to put them), the key row decoded first; digest-checked."""
        arr = store.array(path)
        info = self.deltas(path, np.array([row]))
        if row not in info:
            if raw is None:
                raw = np.asarray(arr[row])
            if out is not None:
                out[:] = raw
                return out
            return raw
        parent_row, tokens, want = info[row]
        if depth > 64:
            raise DamagedFamily(f"{self._name(path, row)}: delta chain loops in {path}")

        with self._faults(path, row, parent_row):
            direct = None if raw is not None else self._direct(store, path, row, info, out)
            if direct is not None:
                raw = direct
            else:
                if raw is None:
                    raw = np.asarray(arr[row])
                if out is not None:
                    out[:] = raw
                    raw = out
                key = None
                if any(kind == "x" for kind, _ in tokens.values()):
                    if parent_row >= arr.shape[0]:
                        raise IndexError(f"row {parent_row} is past the array end")
                    key = self.decode(store, path, parent_row, depth + 1)
                _fill_borrowed(arr, row, raw, tokens, key)
        if digest(raw) != want:
            raise DamagedFamily(
                f"{self._name(path, row)}: decoded bytes do not match their digest against "
                f"delta parent {self._name(path, parent_row)} in {path}: the parent or the "
                "row is damaged"
            )
        return raw

    @contextlib.contextmanager
    def _faults(self, path: str, row: int, parent_row: int) -> Iterator[None]:
        """A decoding error of delta row ``row``: its own chunk's (the verified reader names
        the chunk) or, otherwise, its parent's (:class:`DamagedFamily` naming both)."""
        from wdb.store.widechunk import OwnChunk

        try:
            yield
        except OwnChunk as exc:
            raise exc.__cause__ from None
        except Exception as exc:
            raise DamagedFamily(
                f"{self._name(path, row)}: its delta parent {self._name(path, parent_row)} "
                f"is missing or damaged in {path} ({exc})"
            ) from exc

    def _direct(
        self,
        store: ArrayStore,
        path: str,
        row: int,
        info: dict,
        out: np.ndarray | None,
        cols: slice | None = None,
    ) -> np.ndarray | None:
        """Delta row ``row`` decoded chunk by chunk straight into ``out`` (None: a new array)
        by ``wdb.store.widechunk.read_row``; None (nothing done) where that does not apply:
        another codec, or a key row that is itself a delta (a first-round chain)."""
        from wdb.store import widechunk

        arr = store.array(path)
        if not widechunk.direct(arr):
            return None
        parent_row, tokens, _ = info[row]
        key_tokens: dict[int, tuple[str, int]] = {}
        if any(kind == "x" for kind, _ in tokens.values()):
            if parent_row >= arr.shape[0]:
                raise IndexError(f"row {parent_row} is past the array end")
            if parent_row in info:
                key_tokens = info[parent_row][1]
                if any(kind == "x" for kind, _ in key_tokens.values()):
                    return None
        if cols is not None:  # only the chunks the columns fall in (checked block by block
            n, width = int(arr.shape[1]), int(arr.chunks[1])  # by the verified reader)
            lo, hi, _ = cols.indices(n)
            span = range(lo // width, (max(lo, hi - 1)) // width + 1)
            size = min(n, span.stop * width) - span.start * width
            if out is None or size != hi - lo:  # not whole chunks: decode them aside
                out = np.empty(size, dtype=arr.dtype)
            with self._faults(path, row, parent_row):
                widechunk.read_row(arr, row, tokens, parent_row, key_tokens, out, span)
            base = span.start * width
            return out[lo - base : hi - base]
        if out is None:
            out = np.empty(int(arr.shape[1]), dtype=arr.dtype)
        widechunk.read_row(arr, row, tokens, parent_row, key_tokens, out)
        return out

    def read(self, store: ArrayStore, path: str, rows: np.ndarray, cols: Any) -> np.ndarray:
        """``store``'s rows with the delta rows decoded. Whole rows: the delta rows are not
        read as stored first (their chunks are decoded once, with their key row's: see
        :meth:`_direct`), only the others."""
        info = self.deltas(path, rows)
        listed = rows.tolist()
        contiguous = isinstance(cols, slice) and cols.step in (None, 1)
        if (cols is not None and not contiguous) or not any(r in info for r in listed):
            return self.patch(store, path, rows, cols, store._read_raw(path, rows, cols))
        arr = store.array(path)
        width = int(arr.shape[1]) if cols is None else len(range(*cols.indices(arr.shape[1])))
        out = np.empty((rows.size, width), dtype=arr.dtype)
        plain = [i for i, r in enumerate(listed) if r not in info]
        if plain:  # a column block too: the delta rows' stored residuals are not read as values
            out[plain] = store._read_raw(path, rows[plain], cols)
        first: dict[int, int] = {}
        for i, r in enumerate(listed):
            if r in info:
                if r in first:
                    out[i] = out[first[r]]
                elif cols is None:
                    self.decode(store, path, int(r), out=out[i])
                else:
                    self._columns(store, path, int(r), info, cols, out[i])
                first[r] = i
        return out

    def patch(
        self, store: ArrayStore, path: str, rows: np.ndarray, cols: Any, out: np.ndarray
    ) -> np.ndarray:
        """Replace the delta rows of a read result by their decoded values (a whole-row read
        decodes in place: the stored row is not read twice)."""
        info = self.deltas(path, rows)
        if not info:
            return out
        for i, r in enumerate(rows.tolist()):
            if r in info:
                if cols is None:
                    self.decode(store, path, int(r), raw=out[i])
                else:
                    out[i] = self._whole(store, path, int(r))[cols]
        return out

    def _columns(
        self, store: ArrayStore, path: str, row: int, info: dict, cols: slice, out: np.ndarray
    ) -> None:
        """Columns ``cols`` of delta row ``row``: only the chunks they fall in are decoded
        (:meth:`_direct`), so a scan's column blocks decode each chunk of a row once, not the
        whole row once per block (whole chunks are decoded straight into ``out``); else
        (another codec, a chained key) the row decoded whole and kept for the next block
        (:meth:`_whole`)."""
        last = getattr(self._local, "last", None)
        if last is None or last[0] != (store.root, path, row):
            part = self._direct(store, path, row, info, out, cols)
            if part is not None:
                if not np.may_share_memory(part, out):  # decoded aside: not whole chunks
                    out[:] = part
                return
        out[:] = self._whole(store, path, row)[cols]

    def _whole(self, store: ArrayStore, path: str, row: int) -> np.ndarray:
        """A delta row decoded whole for a column read, the last one kept per thread: a scan
        reads one row's column blocks in turn, and decoding it once per block would repeat
        the work for every block. Rows over ``KEEP_BYTES`` are not kept (memory)."""
        key = (store.root, path, row)
        last = getattr(self._local, "last", None)
        if last is not None and last[0] == key:
            return last[1]
        values = self.decode(store, path, row)
        self._local.last = (key, values) if values.nbytes <= KEEP_BYTES else None
        return values


#: the largest decoded row a reader thread keeps for the next column block of the same row
KEEP_BYTES = 256 << 20
