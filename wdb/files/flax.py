"""Flax checkpoints (``flax.serialization.to_bytes``: ``flax_model.msgpack``, ``*.msgpack``), read
without Flax or JAX.

The format, as Flax writes it: one msgpack object, a tree of maps (lists and tuples become maps
keyed ``"0"``, ``"1"``, …) whose array leaves are msgpack extension objects: type 1 an ndarray,
packed as the msgpack triple ``(shape, dtype name, C-order bytes)``; type 3 a numpy scalar, the
same triple with shape ``()``; type 2 a Python complex. An array bigger than 2**30 bytes is split
into ``{"__msgpack_chunked_array__": True, "shape": {...}, "chunks": {"0": flat, ...}}``.

Unpacking msgpack runs no code, but the bytes are a stranger's: every triple is checked (shape
of non-negative ints, a known dtype, exactly as many bytes as the shape needs) and anything else
is one ``corrupt Flax msgpack`` line. Tensors are named by their path joined with ``.``
(``params.Dense_0.kernel``), in file order; bf16 is widened exactly like everywhere in wdb;
scalars that are not arrays (a train state's ``step``) go to the checkpoint's ``meta``. The file
is mapped, not read: the arrays are views of the unpacked bytes, so the peak is about the file's
size once, not twice.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np

from wdb.errors import BadInput

_NDARRAY, _COMPLEX, _SCALAR = 1, 2, 3
_CHUNKED = "__msgpack_chunked_array__"
_DTYPES = {
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "float16",
    "float32",
    "float64",
    "bfloat16",
}


class _Corrupt(Exception):
    pass


def _array(data: bytes) -> np.ndarray:
    import msgpack

    try:
        triple = msgpack.unpackb(data, raw=True)
    except Exception as exc:  # noqa: BLE001 - msgpack's many error types
        raise _Corrupt(f"an array does not unpack ({exc})") from None
    if not (isinstance(triple, list | tuple) and len(triple) == 3):
        raise _Corrupt("an array is not (shape, dtype, bytes)")
    shape, name, buf = triple
    if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _Corrupt(f"an array's shape is {shape!r}")
    name = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
    if name not in _DTYPES:
        raise _Corrupt(f"an array's dtype '{name}' is not one wdb stores")
    if not isinstance(buf, bytes | bytearray | memoryview):
        raise _Corrupt("an array's data is not bytes")
    itemsize = 2 if name == "bfloat16" else np.dtype(name).itemsize
    if len(buf) != int(np.prod(shape, dtype=np.int64)) * itemsize:
        raise _Corrupt(f"an array of shape {tuple(shape)} {name} has {len(buf)} bytes")
    if name == "bfloat16":
        from wdb.store.tensors import bf16_widen

        return _Bf16(bf16_widen(np.frombuffer(buf, np.uint16)).reshape(shape))
    return np.frombuffer(buf, dtype=name).reshape(shape)


class _Bf16(np.ndarray):
    """A widened bf16 array (so its dtype name survives the tree walk)."""

    def __new__(cls, arr: np.ndarray) -> _Bf16:
        return np.asarray(arr).view(cls)


def _ext(code: int, data: bytes) -> Any:
    import msgpack

    if code == _NDARRAY:
        return _array(data)
    if code == _SCALAR:
        return _array(data).reshape(())
    if code == _COMPLEX:
        raise _Corrupt("a complex number (wdb stores real tensors)")
    return msgpack.ExtType(code, data)


def _unchunk(node: dict) -> np.ndarray:
    try:
        shape = tuple(int(node["shape"][str(i)]) for i in range(len(node["shape"])))
        parts = [node["chunks"][str(i)] for i in range(len(node["chunks"]))]
        flat = np.concatenate([np.asarray(p).reshape(-1) for p in parts])
        out = flat.reshape(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise _Corrupt(f"a chunked array does not reassemble ({exc})") from None
    return _Bf16(out) if parts and isinstance(parts[0], _Bf16) else out


def _walk(node: Any, prefix: str, arrays: dict, dtypes: dict, values: dict) -> None:
    if isinstance(node, dict) and node.get(_CHUNKED) is True:
        node = _unchunk(node)
    if isinstance(node, np.ndarray):
        bf16 = isinstance(node, _Bf16)
        arr = np.asarray(node)
        arrays[prefix] = arr if bf16 else np.ascontiguousarray(arr)
        dtypes[prefix] = "bfloat16" if bf16 else arr.dtype.name
    elif isinstance(node, dict):
        for key, value in node.items():
            _walk(value, f"{prefix}.{key}" if prefix else str(key), arrays, dtypes, values)
    elif isinstance(node, int | float | str | bool) or node is None:
        values[prefix] = node
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            _walk(value, f"{prefix}.{i}" if prefix else str(i), arrays, dtypes, values)
    else:
        raise _Corrupt(f"'{prefix}' is a msgpack {type(node).__name__}")


def read_flax(path: Path):
    """A Flax msgpack checkpoint → ``wdb.files.checkpoint.Loaded`` (see the module docstring)."""
    import msgpack

    from wdb.files.formats import _loaded

    with path.open("rb") as fh:
        if path.stat().st_size == 0:
            raise BadInput("corrupt Flax msgpack (empty file)")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            try:
                tree = msgpack.unpackb(mapped, ext_hook=_ext, raw=False, strict_map_key=False)
            except _Corrupt as exc:
                raise BadInput(f"corrupt Flax msgpack ({exc})") from None
            except Exception as exc:  # noqa: BLE001 - truncation, extra bytes, bad types
                raise BadInput(f"corrupt Flax msgpack ({type(exc).__name__}: {exc})") from None
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    values: dict[str, Any] = {}
    try:
        _walk(tree, "", arrays, dtypes, values)
    except _Corrupt as exc:
        raise BadInput(f"corrupt Flax msgpack ({exc})") from None
    meta: dict[str, Any] = {"format": "flax"}
    if values:
        meta["values"] = values
    return _loaded(arrays, dtypes, meta)
