"""A checkpoint file (or a shard set) as arrays: unwrap containers, validate values, keep metadata."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wdb.errors import BadInput
from wdb.files.torch import _STORAGE_NAMES, _np_dtype, _Tensor, torch_load
from wdb.store.spaces import Entry, Layout, storage_dtype_of
from wdb.store.tensors import (
    FLOAT8,
    FLOAT_DTYPES,
    bf16_as_bits,
    bf16_out,
    bits_wanted,
    float8_widen,
    state_to_numpy,
)
from wdb.store.write import RowStream

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", "")
STATE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".npz")
#: containers whose value is the weights, in the order they are tried (Lightning's
#: ``state_dict``, the common training-loop names, DeepSpeed's ``module``, an EMA copy last).
CONTAINER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "module",
    "ema",
    "state",
    "params",
)
#: top-level numbers of a bundle that count training progress: the checkpoint's step when the
#: reader only guessed it (first present wins; they must agree when both are present).
STEP_KEYS = ("global_step", "step")


@dataclass
class Loaded:
    """One checkpoint as read from its file(s): the tensors, plus what the file says about itself.

    ``meta`` holds the JSON-able non-tensor entries (``checkpoints.meta``) and, under
    ``not_stored``, the names of entries that are neither (optimizer state, callbacks);
    ``numbers`` the numeric top-level entries of a training bundle (``epoch``, ``global_step``,
    ``best_score``). A reader that gives a checkpoint as one row sets ``layout`` and ``row``
    instead of ``arrays``, or ``layout`` and ``stream`` for a row too large to hold twice.
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    numbers: dict[str, float] = field(default_factory=dict)
    layout: Layout | None = None
    row: np.ndarray | None = None
    #: a row too large to hold twice: its segments in layout order, regenerated on each call
    stream: Callable[[], Iterable[np.ndarray]] | None = None

    def materialise(self) -> np.ndarray:
        """The streamed row as one array (for callers that need it whole)."""
        if self.row is None and self.stream is not None and self.layout is not None:
            self.row = np.empty(self.layout.n_params, dtype=self.layout.row_dtype)
            pos = 0
            for seg in self.stream():
                self.row[pos : pos + seg.size] = seg
                pos += seg.size
        return self.row

    def step(self) -> int | None:
        """The file's own step counter, when it has one unambiguous integer value."""
        got = {int(self.numbers[k]) for k in STEP_KEYS if k in self.numbers}
        got |= {int(v) for k, v in self.meta.items() if k in STEP_KEYS and _is_number(v)}
        return got.pop() if len(got) == 1 else None


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_tensor(v: Any) -> bool:
    return isinstance(v, _Tensor | np.ndarray) or (
        type(v).__module__.startswith("torch") and hasattr(v, "untyped_storage")
    )


#: limits on the metadata one file may put in the catalog (``checkpoints.meta``): nesting
#: depth, values visited (a shared reference counts each time it is reached, so a dict shared
#: 2^20 times through references costs its visits, never 2^20 copies), and string characters.
META_DEPTH = 8
META_ITEMS = 10_000
META_CHARS = 1 << 20


class _NotJson(Exception):
    """A value with no JSON form (a tensor, an object): the whole entry is named, not kept."""


class _MetaBudget:
    """What is left of the limits while one file's metadata is converted."""

    def __init__(self) -> None:
        self.items, self.chars = META_ITEMS, META_CHARS
        self.path: set[int] = set()  # ids of the containers being converted: a cycle's guard
        self.notes: set[str] = set()

    def cut(self, why: str) -> dict:
        self.notes.add(why)
        return {"_truncated": why}


def _to_json(v: Any, budget: _MetaBudget, depth: int = 0) -> Any:
    """``v`` as plain JSON data within ``budget``; what is past a limit becomes a
    ``{"_truncated": why}`` note. Raises :class:`_NotJson` for a value with no JSON form."""
    if v is None or isinstance(v, bool) or _is_number(v):
        budget.items -= 1
        return v
    if isinstance(v, str):
        budget.items -= 1
        if len(v) > min(10_000, budget.chars):
            return budget.cut(f"string of {len(v)} characters")
        budget.chars -= len(v)
        return v
    if not isinstance(v, list | tuple | Mapping):
        raise _NotJson(type(v).__name__)
    if depth >= META_DEPTH:
        return budget.cut(f"depth > {META_DEPTH}")
    if id(v) in budget.path:
        return budget.cut("refers to itself")
    budget.path.add(id(v))
    try:
        budget.items -= 1
        if isinstance(v, Mapping):
            out: dict[str, Any] = {}
            for k, x in v.items():
                if budget.items <= 0:
                    out["_truncated"] = budget.cut(f"more than {META_ITEMS} values")["_truncated"]
                    break
                if not (isinstance(k, str | int | bool) or k is None):
                    raise _NotJson(f"a {type(k).__name__} key")
                out[k if isinstance(k, str) else json.dumps(k)] = _to_json(x, budget, depth + 1)
            return out
        items: list[Any] = []
        for x in v:
            if budget.items <= 0:
                items.append(budget.cut(f"more than {META_ITEMS} values"))
                break
            items.append(_to_json(x, budget, depth + 1))
        return items
    finally:
        budget.path.discard(id(v))


def _set_aside(entries: Mapping, meta: dict, numbers: dict | None, budget: _MetaBudget) -> None:
    """Non-tensor entries into ``meta`` (numbers also into ``numbers``); the rest named.

    Values are converted within one budget per file (:func:`_to_json`): hostile metadata (a
    list holding itself, references shared millions of times, deep nesting) is kept cut short,
    with ``{"_truncated": why}`` where it was cut and the reasons under ``meta["_truncated"]``,
    in time and memory bounded by the limits, never followed to the end.
    """
    for k, v in entries.items():
        spent = (budget.items, budget.chars, set(budget.notes))
        try:
            meta[str(k)] = _to_json(v, budget)
        except _NotJson:  # what the entry's walk used is given back to the others
            budget.items, budget.chars, budget.notes = spent
            meta.setdefault("not_stored", []).append(str(k))
            continue
        if numbers is not None and _is_number(v):
            numbers[str(k)] = float(v)
    if budget.notes:
        meta["_truncated"] = sorted(budget.notes)


def unbundle(obj: Any) -> Loaded:
    """A loaded object → its tensors and its metadata, refusing what cannot be weights.

    Containers (:data:`CONTAINER_KEYS`, up to three levels: Lightning ``.ckpt``,
    ``{'model': ..., 'optimizer': ...}`` bundles, DeepSpeed ``module``) are unwrapped; their other
    entries are metadata, never a reason to refuse the weights. Inside the state dict, non-tensor
    entries (a ``step`` int, a ``note`` string) become metadata too. Complex tensors are refused
    with one line: weights are real, and a silent split into two columns would change the layout.
    """
    meta: dict = {}
    numbers: dict[str, float] = {}
    budget = _MetaBudget()
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        key = next(
            (k for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping) and obj.get(k)), None
        )
        if key is None:
            break
        _set_aside({k: v for k, v in obj.items() if k != key}, meta, numbers, budget)
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise BadInput(f"not a state dict (a {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if _is_tensor(v)}
    _set_aside({k: v for k, v in obj.items() if k not in tensors}, meta, None, budget)
    if not tensors:
        rest = ", ".join(f"'{k}'" for k in list(obj)[:5])
        raise BadInput(f"no tensors in the state dict (entries: {rest or 'none'})")
    arrays, dtypes = _tensors_to_numpy(tensors)
    return Loaded(arrays, dtypes, meta, numbers)


def _tensors_to_numpy(state: Mapping) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not all(isinstance(k, str) for k in state):
        raise BadInput("state dict keys are not all strings")
    if all(isinstance(v, _Tensor) for v in state.values()):
        arrays = {k: v.array for k, v in state.items()}
        dtypes = {k: v.dtype for k, v in state.items()}
        for k in arrays:  # the pickle could have rewritten these attributes (BUILD)
            if not isinstance(arrays[k], np.ndarray) or dtypes[k] not in _STORAGE_NAMES:
                raise BadInput(f"entry '{k}' is not a plain tensor")
    else:
        for k, v in state.items():
            if type(v).__module__.startswith("torch"):
                if v.is_complex():
                    raise BadInput(
                        f"entry '{k}' is a complex tensor ({str(v.dtype).removeprefix('torch.')}): "
                        "not stored; save its real and imaginary parts as two tensors"
                    )
                if v.numel() > v.untyped_storage().nbytes() // max(1, v.element_size()):
                    raise BadInput(f"entry '{k}' is a broadcast view larger than its storage")
        state = {k: (v.array if isinstance(v, _Tensor) else v) for k, v in state.items()}
        arrays, dtypes = state_to_numpy(state)
    for name, arr in arrays.items():
        check_finite(name, arr, dtypes[name])
    return arrays, dtypes


def check_finite(name: str, arr: np.ndarray, dtype: str) -> None:
    """Refuse NaN/Inf in a float tensor (one line naming the tensor); a bf16 tensor given as
    its bits (``uint16``) by its exponent bits."""
    if dtype == "bfloat16" and arr.dtype == np.uint16:
        # exponent all ones: 0x7F80-0x7FFF (the largest as int16) or 0xFF80-0xFFFF (the
        # largest as uint16); two reductions, no temporary (a masked copy took twice as long)
        if arr.size and (int(arr.max()) >= 0xFF80 or int(arr.view(np.int16).max()) >= 0x7F80):
            top = int(np.bitwise_and(arr, np.uint16(0x7FFF)).max())
            raise BadInput(f"'{name}' contains {'NaN' if top > 0x7F80 else 'Inf'} values")
        return
    # a sum is NaN/Inf if any value is; one that overflows (float32 sums of huge values)
    # falls through to the exact test. Summed in float32 (float64 rows in float64): half the
    # time of a float64 sum (which had been a sixth of the ingest reading thread's time)
    acc = np.float64 if arr.dtype == np.float64 else np.float32
    if dtype in FLOAT_DTYPES and not np.isfinite(arr.sum(dtype=acc)) and not np.isfinite(arr).all():
        kind = "NaN" if np.isnan(arr).any() else "Inf"
        raise BadInput(f"'{name}' contains {kind} values")


def normalise(state: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Any loaded object → (arrays, dtype names); see :func:`unbundle` for what is kept."""
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        arrays, dtypes = state
        for name, arr in arrays.items():
            check_finite(name, arr, dtypes[name])
        return arrays, dtypes
    got = state if isinstance(state, Loaded) else unbundle(state)
    return got.arrays, got.dtypes


def _sha256(row: np.ndarray) -> str:
    """``wdb.store.spaces.row_sha256`` without the ``tobytes`` copy (same digest)."""
    return hashlib.sha256(np.ascontiguousarray(row).data).hexdigest()


def digest(row: np.ndarray | RowStream) -> str:
    """The row's content hash; a streamed row is read (and validated) once, segment by segment."""
    if not isinstance(row, RowStream):
        return _sha256(row)
    h, n = hashlib.sha256(), 0
    for seg in row.segments():
        h.update(np.ascontiguousarray(seg).data)
        n += seg.size
    if n != row.n:
        raise BadInput(f"the checkpoint's tensors hold {n} values, its layout {row.n}")
    return h.hexdigest()


def load_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load one checkpoint file of any supported kind safely → (arrays, dtype names)."""
    got = read_checkpoint(path)
    if got.layout is not None and not got.arrays:
        row = got.materialise()
        return got.layout.unflatten(row), {e.name: e.dtype for e in got.layout.entries}
    return got.arrays, got.dtypes


def _first_line(exc: BaseException) -> str:
    """An exception's message cut to one line (its type's name when it has none)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def read_checkpoint(path: str | os.PathLike, kind: str | None = None) -> Loaded:
    """Load one checkpoint file safely → :class:`Loaded` (tensors plus the file's metadata).

    A ``*.index.json`` (Hugging Face's sharded safetensors or ``.bin``) is read as the one
    checkpoint its shards make up (:func:`read_sharded`). ``kind`` (``safetensors``, ``npz``,
    ``torch``; see ``wdb.files.formats.sniff``) overrides the file's suffix; other kinds
    (ONNX, TorchScript, GGUF, Keras) are read by ``wdb.files.formats.read_weights``.
    """
    path = Path(path)
    if path.name.endswith(".index.json"):
        return read_sharded(path)
    if kind not in (None, "torch", "torch-legacy", "safetensors", "npz"):
        from wdb.files.formats import read_weights

        return read_weights(path, kind)
    suffix = path.suffix.lower()
    kind = kind or {".safetensors": "safetensors", ".npz": "npz"}.get(suffix, "torch")
    size = path.stat().st_size
    if size == 0:
        raise BadInput("empty file (truncated?)")
    if kind == "safetensors" and size >= STREAM_MIN_BYTES:
        streamed = _stream_safetensors(path)
        if streamed is not None:
            return streamed
    if kind == "safetensors":
        try:
            from safetensors.torch import load_file as st_load

            state = st_load(str(path), device="cpu")
        except Exception as exc:
            raise BadInput(f"corrupt safetensors file ({_first_line(exc)})") from None
    elif kind == "npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                state = {k: npz[k] for k in npz.files}
        except ValueError as exc:
            raise BadInput(f"refused .npz ({_first_line(exc)})") from None
        except Exception as exc:
            raise BadInput(f"corrupt .npz file ({_first_line(exc)})") from None
    else:
        state = torch_load(path)
    return unbundle(state)


SHARD_NAME = re.compile(r"^(?P<base>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})(?P<ext>\.safetensors|\.bin)$")


def read_index(index: Path) -> list[tuple[Path, list[str]]]:
    """A sharded checkpoint's index → [(shard file, its tensor names in index order)]."""
    try:
        data = json.loads(index.read_text())
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise TypeError("empty")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"not a shard index ('weight_map' missing or invalid: {exc})") from None
    shards: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        if not isinstance(file, str) or Path(file).name != file:
            raise BadInput(f"shard '{file}' of '{name}' is not a file name beside the index")
        shards.setdefault(file, []).append(name)
    out = []
    for file, names in shards.items():
        if not (index.parent / file).is_file():
            raise BadInput(f"shard '{file}' is missing")
        out.append((index.parent / file, names))
    return out


def read_sharded(index: Path) -> Loaded:
    """A sharded checkpoint (``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``
    with its shards) → one :class:`Loaded` whose row is streamed, never held whole.

    The layout comes from the safetensors headers (a ``.bin`` shard is read once for its
    shapes); ``Loaded.stream`` yields the row tensor by tensor, shard by shard, so ingest hashes
    it in one pass and writes it into the store chunk by chunk in another: memory holds one
    shard's pages and one chunk, not the model. Tensor order is shard by shard, each shard's
    tensors in ``weight_map`` order; every shard must hold exactly the tensors the index names.
    """
    shards = read_index(index)
    meta = {"shards": len(shards), "shard_format": shards[0][0].suffix.lstrip(".")}
    return _streamed(shards, meta)


def _streamed(shards: list[tuple[Path, list[str]]], meta: dict) -> Loaded:
    """Files' named tensors, in that order, as one streamed row (:class:`Loaded` ``stream``)."""
    entries, offset = [], 0
    for path, names in shards:
        for name, shape, dtype in _shard_specs(path, names):
            entries.append(Entry(name, shape, dtype, offset))
            offset += math.prod(shape)
    layout = Layout(tuple(entries), storage_dtype_of([e.dtype for e in entries]))
    bits = bits_wanted()  # decided now: the stream runs later, maybe on another thread

    def stream() -> Iterable[np.ndarray]:
        for path, names in shards:
            for name, arr, dtype in _shard_tensors(path, names, bits):
                check_finite(name, arr, dtype)
                yield layout.segment(layout.entry(name), arr)

    return Loaded(meta=meta, layout=layout, stream=stream)


#: a single ``.safetensors`` file this large or larger is streamed tensor by tensor: loaded
#: whole, a 512 MB bf16 file had peaked at 1.9 GB (its tensors, then widened to float32)
STREAM_MIN_BYTES = 64 << 20


def _stream_safetensors(path: Path) -> Loaded | None:
    """A big ``.safetensors`` file as a streamed row, its tensors in offset order: the order
    ``safetensors.torch.load_file`` gives them, so the layout (and the space) is the one the
    whole-file read makes. None where the library should read it: a header the streamed read
    refuses (the library's error then names the problem) or tensors sharing an offset (empty
    ones, whose order the library decides)."""
    try:
        header, _ = _safetensors_header(path)
    except BadInput:
        return None
    starts = sorted((int(info["data_offsets"][0]), name) for name, info in header.items())
    if len({start for start, _ in starts}) != len(starts):
        return None
    return _streamed([(path, [name for _, name in starts])], {})


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """(tensor entries of the header, offset of the data) of a ``.safetensors`` file: an 8-byte
    little-endian header length, then a JSON header (the format's whole specification).

    Checked as the ``safetensors`` library checks it, so that a shard is accepted exactly when
    ``safetensors.torch.load_file`` would accept it: every entry a known dtype, a shape of
    non-negative integers and ``data_offsets`` whose length is the shape's bytes; the entries,
    in offset order, tile the data with no gap or overlap, up to the end of the file.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100 << 20 or 8 + n > size:
                raise ValueError(f"header length {n} past the end of the file")
            header = json.loads(fh.read(n).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        meta = header.pop("__metadata__", None)
        if meta is not None and not (
            isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
        ):
            raise ValueError("__metadata__ is not a map of strings")
        spans = []
        for name, info in header.items():
            spans.append((*_st_entry(name, info), name))
        end = 0
        for start, stop, name in sorted(spans):
            if start != end:
                raise ValueError(f"'{name}' does not start where the previous tensor ends")
            end = stop
        if 8 + n + end != size:
            cut = "truncated: " if 8 + n + end > size else ""
            raise ValueError(f"{cut}data is {size - 8 - n} bytes, the tensors need {end}")
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path.name}: corrupt safetensors shard ({_first_line(exc)})") from None
    return header, 8 + n


def _st_entry(name: str, info: Any) -> tuple[int, int]:
    """(start, stop) of one header entry, its dtype, shape and length checked."""
    if not isinstance(info, dict):
        raise ValueError(f"'{name}' is not a tensor entry")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
        raise ValueError(f"'{name}' has unsupported dtype {str(dtype)[:20]}")
    ints = (list, tuple)
    if not isinstance(shape, ints) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"'{name}' has an invalid shape")
    if not (
        isinstance(offsets, ints)
        and len(offsets) == 2
        and all(type(x) is int and x >= 0 for x in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise ValueError(f"'{name}' has invalid data_offsets")
    if offsets[1] - offsets[0] != math.prod(shape) * _np_dtype(_ST_DTYPES[dtype]).itemsize:
        raise ValueError(f"'{name}': data_offsets do not match its shape and dtype")
    return offsets[0], offsets[1]


def _shard_specs(path: Path, names: list[str]) -> Iterable[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of a shard's tensors in index order, checked against the index."""
    if path.suffix == ".safetensors":
        header, _ = _safetensors_header(path)
        _same_names(path, names, set(header))
        for name in names:
            info = header[name]
            yield name, tuple(info["shape"]), _ST_DTYPES[info["dtype"]]
        return
    for name, arr, dtype in _shard_tensors(path, names):
        yield name, tuple(arr.shape), dtype


def _shard_tensors(
    path: Path, names: list[str], bits: bool = False
) -> Iterable[tuple[str, np.ndarray, str]]:
    """(name, array, dtype name) per tensor of one shard, one at a time (``bits``: bf16 as its
    bit patterns, ``wdb.store.tensors.bf16_as_bits``).

    safetensors shards are read tensor by tensor with plain reads into a fresh array (not
    through a memory map, whose touched pages would count against this process until the whole
    shard is done); bf16 and float8 are widened exactly to float32, as everywhere in wdb.
    """
    if path.suffix == ".safetensors":
        header, base = _safetensors_header(path)
        with path.open("rb") as fh:
            for name in names:
                info = header[name]
                dtype = _ST_DTYPES[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                start, stop = (int(x) for x in info["data_offsets"])
                raw = np.empty(math.prod(shape), dtype=_np_dtype(dtype).newbyteorder("<"))
                fh.seek(base + start)
                if (
                    stop - start != raw.nbytes
                    or fh.readinto(memoryview(raw).cast("B")) != raw.nbytes
                ):
                    raise BadInput(f"{path.name}: '{name}' is truncated or its offsets are wrong")
                if dtype == "bfloat16":
                    arr = bf16_out(raw, bits)
                else:
                    arr = float8_widen(raw, dtype) if dtype in FLOAT8 else raw
                yield name, arr.reshape(shape), dtype
        return
    try:
        if bits:
            with bf16_as_bits():
                got = unbundle(torch_load(path))
        else:
            got = unbundle(torch_load(path))
    except BadInput as exc:
        raise BadInput(f"{path.name}: {exc}") from None
    _same_names(path, names, set(got.arrays))
    for name in names:
        yield name, got.arrays[name], got.dtypes[name]


def _same_names(path: Path, names: list[str], have: set[str]) -> None:
    if set(names) != have:
        missing, extra = sorted(set(names) - have)[:3], sorted(have - set(names))[:3]
        raise BadInput(
            f"{path.name} does not match the index (missing {missing}, not listed {extra})"
        )


#: safetensors dtype codes wdb stores (others are refused by name).
_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def step_from_name(stem: str) -> int | None:
    """The last integer in a file or folder name (``p_data_12`` → 12), or None. Kept for
    readers whose format says every file is a step (``pdiff``); the generic folder reader uses
    ``wdb.files.names.step_token``, which reads only step tokens (``epoch_012``, ``step=20``)."""
    digits, out = "", None
    for ch in stem:
        if ch.isdigit():
            digits += ch
        elif digits:
            out, digits = int(digits), ""
    return int(digits) if digits else out


def as_loaded(obj: Any) -> Loaded:
    """What a reader's ``load()`` returned, as a :class:`Loaded`: already one, normalised
    ``(arrays, dtype names)``, or a state dict or training bundle (:func:`unbundle`)."""
    if isinstance(obj, Loaded):
        return obj
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], dict):
        return Loaded(*normalise(obj))
    return unbundle(obj)
