"""Weight spaces: the ordered parameter layout that maps a state dict to one row of numbers.

A layout is a list of entries (name, shape, dtype, offset). Its identity is the sha256 of the
canonical JSON of (names, shapes, dtypes, storage dtype), so the same architecture always lands in
the same Zarr array, whoever ingests it.

Storage dtype: one per space, so a row is a plain numeric vector that FAISS and numpy use as is.
It is float32, unless every float tensor is float16 (then float16, and no integer buffers) or
bfloat16 (then ``bfloat16``, stored as its bit patterns: ``wdb.store.tensors``), or any is
float64 (then float64). bf16 and fp16 in a mixed space widen to float32 exactly (as every bf16
space did before: spaces made then keep their float32 rows, and ingest keeps using them);
integer buffers such as BatchNorm's ``num_batches_tracked`` are stored as numbers and checked to
round-trip exactly, so nothing is dropped and ``state_dict`` gives back the original dtypes bit
for bit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from math import prod
from typing import Any

import numpy as np

from wdb.errors import BadInput
from wdb.store.tensors import BITS, FLOAT_DTYPES, from_storage, numpy_storage, to_stored


@dataclass(frozen=True)
class Entry:
    """One tensor of a layout: where its values live in the row."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int

    @property
    def size(self) -> int:
        return prod(self.shape)

    @property
    def stop(self) -> int:
        return self.offset + self.size


def storage_dtype_of(dtypes: list[str]) -> str:
    """The row dtype that holds every tensor of these dtypes exactly (float64 > float16-only >
    bfloat16-only > float32)."""
    floats = [d for d in dtypes if d in FLOAT_DTYPES]
    if "float64" in floats:
        return "float64"
    for half in ("float16", "bfloat16"):
        if floats and all(d == half for d in floats) and len(floats) == len(dtypes):
            return half
    return "float32"


@dataclass(frozen=True)
class Layout:
    """An ordered parameter layout plus the dtype its rows are stored in."""

    entries: tuple[Entry, ...]
    storage_dtype: str

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, str] | None = None
    ) -> Layout:
        """Layout of a state dict given as numpy arrays (and original dtype names)."""
        dtypes = dtypes or {k: v.dtype.name for k, v in arrays.items()}
        entries, offset = [], 0
        for name, arr in arrays.items():
            shape = tuple(int(s) for s in np.shape(arr))
            entries.append(Entry(name, shape, dtypes[name], offset))
            offset += prod(shape)
        return cls(tuple(entries), storage_dtype_of([e.dtype for e in entries]))

    @classmethod
    def from_json(cls, text: str | list) -> Layout:
        """Parse the JSON form stored in ``spaces.layout`` (or a user's layout file)."""
        data = json.loads(text) if isinstance(text, str) else text
        if isinstance(data, dict):
            items, storage = data["entries"], data.get("storage_dtype")
        else:
            items, storage = data, None
        entries, offset = [], 0
        for item in items:
            shape = tuple(int(s) for s in item["shape"])
            entries.append(Entry(item["name"], shape, item.get("dtype", "float32"), offset))
            offset += prod(shape)
        storage = storage or storage_dtype_of([e.dtype for e in entries])
        return cls(tuple(entries), storage)

    def to_json(self) -> str:
        return json.dumps(
            {
                "storage_dtype": self.storage_dtype,
                "entries": [
                    {"name": e.name, "shape": list(e.shape), "dtype": e.dtype, "offset": e.offset}
                    for e in self.entries
                ],
            }
        )

    @cached_property
    def hash(self) -> str:
        canon = [[e.name, list(e.shape), e.dtype] for e in self.entries] + [self.storage_dtype]
        return hashlib.sha256(json.dumps(canon, separators=(",", ":")).encode()).hexdigest()

    @property
    def n_params(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def row_dtype(self) -> np.dtype:
        """The numpy dtype of a stored row (bf16: its ``uint16`` bit patterns)."""
        return numpy_storage(self.storage_dtype)

    def as_float32(self) -> Layout:
        """This layout as versions before 2-byte bf16 storage made it (rows of float32)."""
        return Layout(self.entries, "float32")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def entry(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def default_name(self) -> str:
        """A readable default space name: parameter count plus a short hash."""
        return f"{self.n_params}p-{self.hash[:8]}"

    def flatten(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """State dict (numpy form) → one storage row. Refuses anything not exactly storable."""
        row = np.empty(self.n_params, dtype=self.row_dtype)
        if set(arrays) != set(self.names):
            missing = sorted(set(self.names) - set(arrays))
            extra = sorted(set(arrays) - set(self.names))
            raise BadInput(f"tensor names differ from the space (missing {missing}, extra {extra})")
        for e in self.entries:
            self.put(row, e, arrays[e.name])
        return row

    def put(self, row: np.ndarray, e: Entry, value: np.ndarray) -> None:
        """Write one tensor into its place in ``row``, refusing a wrong shape or inexact value."""
        row[e.offset : e.stop] = self.segment(e, value)

    def segment(self, e: Entry, value: np.ndarray) -> np.ndarray:
        """One tensor as its flat slice of a row (storage dtype; a view when no cast is needed),
        refusing a wrong shape or a value the storage dtype cannot hold exactly."""
        arr = np.asarray(value)
        if tuple(arr.shape) != e.shape:
            raise BadInput(f"'{e.name}' has shape {list(arr.shape)}, expected {list(e.shape)}")
        if self.storage_dtype in BITS:  # bf16 bits as they are, or values narrowed exactly
            return to_stored(arr.reshape(-1), self.storage_dtype, e.name)
        if e.dtype == "bfloat16" and arr.dtype == np.uint16:  # bits, into a float32 row
            arr = from_storage(arr, e.dtype)
        flat = arr.reshape(-1).astype(self.storage_dtype, copy=False)
        if e.dtype not in FLOAT_DTYPES or e.dtype == "float64":  # narrowing: check it is exact
            back = from_storage(flat, e.dtype)
            if not np.array_equal(back, arr.reshape(-1)):
                raise BadInput(
                    f"'{e.name}' ({e.dtype}) is not exactly representable as {self.storage_dtype}"
                )
        return flat

    def unflatten(self, row: np.ndarray) -> dict[str, np.ndarray]:
        """One row (values, or a bf16 space's stored bits) → {name: array in the original dtype}
        (bf16 as float32)."""
        if row.shape[-1] != self.n_params:
            raise BadInput(f"row has {row.shape[-1]} values, space has {self.n_params}")
        return {
            e.name: from_storage(row[e.offset : e.stop], e.dtype).reshape(e.shape)
            for e in self.entries
        }

    def subset(self, names: list[str]) -> Layout:
        """A layout of some of the tensors (e.g. "last two BN layers"), offsets renumbered."""
        picked, offset = [], 0
        for e in self.entries:
            if e.name in names:
                picked.append(Entry(e.name, e.shape, e.dtype, offset))
                offset += e.size
        if len(picked) != len(set(names)):
            raise BadInput(f"unknown tensor names: {sorted(set(names) - set(self.names))}")
        return Layout(tuple(picked), storage_dtype_of([e.dtype for e in picked]))

    def columns(self, names: list[str]) -> np.ndarray:
        """Row indices of the given tensors, in layout order (for column slices)."""
        return np.concatenate(
            [np.arange(e.offset, e.stop) for e in self.entries if e.name in names]
        )


def old_bf16_layouts(db: Any) -> dict[str, Layout]:
    """bf16 spaces that versions before 2-byte bf16 storage made (float32 rows), by the
    layout hash the same tensors get today: the ingest keeps putting their architectures in
    them, so that an upgrade does not split a family across two spaces (None: no store yet)."""
    out: dict[str, Layout] = {}
    if db is None:
        return out
    for r in db.sql(
        "SELECT layout FROM spaces WHERE dtype = 'float32' AND layout LIKE '%bfloat16%'"
    ):
        old = Layout.from_json(r["layout"])
        if storage_dtype_of([e.dtype for e in old.entries]) == "bfloat16":
            out[Layout(old.entries, "bfloat16").hash] = old
    return out


def row_sha256(row: np.ndarray) -> str:
    """Content hash of a stored row: sha256 of its raw bytes in the storage dtype."""
    return hashlib.sha256(np.ascontiguousarray(row).tobytes()).hexdigest()
