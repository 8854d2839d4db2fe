"""Query rows read as dicts, made only when asked for.

Why: a selection of 200k checkpoints (a reference set) spent ~0.4 s building a dict per row that
a query then mostly did not look at; its ids and Zarr rows are taken as arrays, and a row's
dict is made when a result names it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any


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
