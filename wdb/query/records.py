"""Query rows read as dicts, made only when asked for.

Why: a selection of 200k checkpoints (a reference set) spent ~0.4 s building a dict per row that
a query then mostly did not look at; its ids and Zarr rows are taken as arrays, and a row's
dict is made when a result names it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from wdb.errors import WdbError


class Records(Sequence):
    """Read-only rows (tuples) with their column names; ``r[i]`` is row ``i`` as a new dict."""

    def __init__(self, columns: Sequence[str], rows: Sequence[tuple]) -> None:
        self.columns = list(columns)
        self._rows = rows
        self._at = {c: j for j, c in enumerate(self.columns)}

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return Records(self.columns, self._rows[i])
        return dict(zip(self.columns, self._rows[i], strict=True))

    def __iter__(self) -> Iterator[dict]:
        cols = self.columns
        return (dict(zip(cols, r, strict=True)) for r in self._rows)

    def column(self, name: str) -> list[Any]:
        """One column's values, in row order (no dicts made)."""
        j = self._at[name]
        return [r[j] for r in self._rows]


class LazyRecords(Records):
    """Records whose key columns are read up front and the rest on first use.

    Why: a reference set of 200k checkpoints is needed at once only as ids and Zarr rows (the
    scan's input, 0.03 s to fetch); its hashes, runs and kinds (0.3 s more) are wanted later, by
    a saved relation's fingerprint or by the few rows a result names, and a cluster reads them
    while its workers scan. ``load`` returns the whole selection's (columns, rows) in the same
    order; rows it has beyond the keys' are dropped, and a key row it lacks (deleted between the
    two reads) is an error, never a silent gap."""

    def __init__(
        self, keys: dict[str, list], load: Callable[[], tuple[list[str], list[tuple]]], what: str
    ) -> None:
        self.columns = list(keys)  # until loaded: the key columns
        self._at = {c: j for j, c in enumerate(self.columns)}
        self._keys = keys
        self._load = load
        self._what = what
        self._got: list[tuple] | None = None
        self._n = len(next(iter(keys.values())))

    def __len__(self) -> int:
        return self._n

    @property
    def _rows(self) -> list[tuple]:  # type: ignore[override]
        if self._got is None:
            cols, rows = self._load()
            self.columns, self._at = list(cols), {c: j for j, c in enumerate(cols)}
            name, want = next(iter(self._keys.items()))
            j = self._at[name]
            if len(rows) != self._n or any(r[j] != w for r, w in zip(rows, want, strict=False)):
                by = {r[j]: r for r in rows}
                if any(w not in by for w in want):
                    raise WdbError(
                        f"{self._what} changed while it was read (a checkpoint was deleted); "
                        "run the query again"
                    )
                rows = [by[w] for w in want]
            self._got = rows
        return self._got

    def __reduce__(self) -> tuple:
        """Shipped (to a Dask worker) as the plain records it stands for: its loader is a
        connection of this process."""
        rows = self._rows
        return Records, (self.columns, rows)

    def column(self, name: str) -> list[Any]:
        if name in self._keys:
            return self._keys[name]
        self._rows  # noqa: B018 (loads the columns)
        return super().column(name)

    def __getitem__(self, i):  # type: ignore[override]
        self._rows  # noqa: B018
        return super().__getitem__(i)

    def __iter__(self) -> Iterator[dict]:
        self._rows  # noqa: B018
        return super().__iter__()
