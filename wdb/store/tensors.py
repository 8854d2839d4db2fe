"""Convert state-dict values between torch, numpy and wdb's storage form without losing bits.

wdb stores numpy arrays plus a dtype *name*: numpy has no bfloat16 or float8, so bf16 and float8
(``float8_e4m3fn``, ``float8_e5m2``) tensors travel as their exact float32 widening and are
narrowed back on the way out. float8 goes through a 256-entry table of its own rather than
torch's conversion, because torch maps several float8 NaN bit patterns to one float32 NaN:
the table gives each of the 256 bit patterns its own float32 bit pattern, so the way back is
bit-exact (wdb refuses NaN in weights at ingest anyway; the table does not rely on it). torch is imported only when a
torch tensor is actually seen, so commands that never touch torch stay fast.

Stored bf16. A space whose tensors are all bf16 stores its rows as the 2-byte bit patterns
(storage dtype ``bfloat16``, a ``uint16`` Zarr array): half the bytes to hash, code, write and
read of the float32 widening stores before (which spaces made by earlier versions keep).
Reads give float32 values (:func:`values_of`) as for every other space; only the store, its
codec and its hashes see the bits. Where a bf16 tensor's array is ``uint16``, it is the bit
patterns; where it is a float array, its values (:func:`to_stored` takes either).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from wdb.errors import BadInput

#: dtype names wdb accepts, as numpy/torch spell them.
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2")
INT_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64")
#: float8 formats: (exponent bits, mantissa bits, has infinities). e4m3fn ("fn": finite) has
#: no infinities and one NaN pattern per sign (S.1111.111); e5m2 is IEEE-like (the top byte
#: of a float16): exponent 11111 is Inf with mantissa 0, NaN otherwise.
FLOAT8 = {"float8_e4m3fn": (4, 3, False), "float8_e5m2": (5, 2, True)}
_F8_TABLES: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _f8_table(dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float32 bits of each of the 256 float8 patterns, those bits sorted, the pattern of each
    sorted entry): widening is a lookup, narrowing a binary search."""
    if dtype not in _F8_TABLES:
        ebits, mbits, has_inf = FLOAT8[dtype]
        b = np.arange(256, dtype=np.uint32)
        sign, e, m = b >> 7, (b >> mbits) & ((1 << ebits) - 1), b & ((1 << mbits) - 1)
        bias, top = (1 << (ebits - 1)) - 1, (1 << ebits) - 1
        frac = m.astype(np.float64) / (1 << mbits)
        mag = np.where(e == 0, np.ldexp(frac, 1 - bias), np.ldexp(1 + frac, e.astype(int) - bias))
        val = np.where(sign == 1, -mag, mag).astype(np.float32)
        bits = val.view(np.uint32).copy()
        nan = (e == top) & (m != 0) if has_inf else (e == top) & (m == (1 << mbits) - 1)
        inf = (e == top) & (m == 0) if has_inf else np.zeros(256, bool)
        bits[inf] = (sign[inf] << 31) | 0x7F800000
        # a quiet float32 NaN carrying the pattern's low 7 bits: distinct, and kept by casts
        bits[nan] = (sign[nan] << 31) | 0x7FC00000 | (b[nan] & 0x7F)
        order = np.argsort(bits, kind="stable")
        _F8_TABLES[dtype] = (bits, bits[order], order.astype(np.uint8))
    return _F8_TABLES[dtype]


#: storage dtypes with no numpy dtype of their own, and the numpy dtype that holds their bits
BITS = {"bfloat16": np.dtype(np.uint16)}


def numpy_storage(storage: str) -> np.dtype:
    """The numpy dtype of a space's stored rows (``uint16`` bit patterns for ``bfloat16``)."""
    return BITS.get(storage) or np.dtype(storage)


def value_dtype(storage: str) -> np.dtype:
    """The dtype reads give for a space's rows (float32 for ``bfloat16``)."""
    return np.dtype(np.float32) if storage in BITS else np.dtype(storage)


def bf16_narrow(values: np.ndarray, name: str = "?", exact: bool = True) -> np.ndarray:
    """float32 values → bfloat16 bit patterns (uint16). ``exact``: a value with bits below
    bf16's refuses (the values came from a bf16 file); otherwise rounded to nearest even, as
    torch's cast rounds (a generator's float32 sample written into a bf16 space)."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    if exact:
        if np.any(u & np.uint32(0xFFFF)):
            raise BadInput(f"'{name}' holds values that are not bfloat16 (not stored exactly)")
        return np.right_shift(u, 16).astype(np.uint16)
    bias = np.bitwise_and(np.right_shift(u, 16), np.uint32(1)) + np.uint32(0x7FFF)
    return np.right_shift(u + bias, 16).astype(np.uint16)


def to_stored(values: np.ndarray, storage: str, name: str = "?", exact: bool = True) -> np.ndarray:
    """Values (or, for ``bfloat16``, already its ``uint16`` bits) → a space's stored form."""
    arr = np.asarray(values)
    if storage not in BITS:
        return arr.astype(storage, copy=False)
    if arr.dtype == np.uint16:
        return arr
    if arr.dtype.kind != "f":
        raise BadInput(f"'{name}': {arr.dtype} values cannot be stored as {storage}")
    return bf16_narrow(arr, name, exact)


def values_of(stored: np.ndarray, storage: str) -> np.ndarray:
    """A space's stored form → values (bf16 bits widened to float32; others as they are)."""
    return bf16_widen(stored) if storage in BITS else stored


_BITS = contextvars.ContextVar("wdb_bf16_bits", default=False)


@contextlib.contextmanager
def bf16_as_bits() -> Iterator[None]:
    """Within it (in this thread), wdb's own readers give bf16 tensors as their ``uint16`` bit
    patterns rather than widened: the ingest, which stores bf16 spaces' bits (widening, then
    narrowing back, had been a third of a bf16 family's ingest). Outside it, and in readers
    that do not look, bf16 tensors are float32 values, as the reader contract says."""
    token = _BITS.set(True)
    try:
        yield
    finally:
        _BITS.reset(token)


def bits_wanted() -> bool:
    """Whether the caller is inside :func:`bf16_as_bits`."""
    return _BITS.get()


def bf16_out(bits: np.ndarray, keep: bool | None = None) -> np.ndarray:
    """A bf16 tensor's bit patterns as a reader gives them: as they are inside
    :func:`bf16_as_bits` (or with ``keep``), else widened to float32."""
    keep = _BITS.get() if keep is None else keep
    return np.asarray(bits).view(np.uint16) if keep else bf16_widen(bits)


def bf16_widen(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32 values, exactly (bf16 is a float32's top half).
    One pass into one new array: ``astype`` then ``<<`` made two (1.7x slower, measured)."""
    return np.left_shift(np.asarray(bits).view(np.uint16), 16, dtype=np.uint32).view(np.float32)


def float8_widen(bits: np.ndarray, dtype: str) -> np.ndarray:
    """float8 bit patterns (uint8) → float32 values, exactly and one-to-one."""
    table = _f8_table(dtype)[0]
    return table[np.asarray(bits, dtype=np.uint8)].view(np.float32)


def float8_narrow(values: np.ndarray, dtype: str, name: str = "?") -> np.ndarray:
    """float32 values (as :func:`float8_widen` made them) → float8 bit patterns (uint8); a
    value that is not one of the 256 is refused rather than rounded."""
    _, keys, patterns = _f8_table(dtype)
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    at = np.minimum(np.searchsorted(keys, u), 255)
    if not np.array_equal(keys[at], u):
        raise BadInput(f"'{name}' holds values that are not {dtype} (not stored exactly)")
    return patterns[at]


def to_numpy(value: Any, name: str = "?") -> tuple[np.ndarray, str]:
    """One state-dict value → (numpy array, dtype name). bf16 becomes float32 (exact)."""
    if type(value).__module__.startswith("torch"):
        import torch

        if not isinstance(value, torch.Tensor):
            raise BadInput(f"entry '{name}' is a {type(value).__name__}, not a tensor")
        t = value.detach().cpu()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype == "bfloat16":
            if _BITS.get():
                return t.view(torch.int16).numpy().view(np.uint16), "bfloat16"
            return t.float().numpy(), "bfloat16"
        if dtype in FLOAT8:
            return float8_widen(t.view(torch.uint8).numpy(), dtype), dtype
        if dtype not in FLOAT_DTYPES + INT_DTYPES:
            raise BadInput(f"entry '{name}' has unsupported dtype {dtype}")
        return t.numpy().copy(), dtype
    if isinstance(value, np.ndarray | np.generic):
        arr = np.asarray(value)
        dtype = arr.dtype.name
        if dtype not in FLOAT_DTYPES + INT_DTYPES:
            raise BadInput(f"entry '{name}' has unsupported dtype {dtype}")
        return arr, dtype
    raise BadInput(f"entry '{name}' is a {type(value).__name__}, not a tensor")


def state_to_numpy(state: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A whole state dict → (arrays, dtype names), in the state dict's own order."""
    if not isinstance(state, Mapping):
        raise BadInput(f"not a state dict (a {type(state).__name__})")
    if not state:
        raise BadInput("empty state dict")
    arrays, dtypes = {}, {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise BadInput(f"state dict key {key!r} is not a string")
        arrays[key], dtypes[key] = to_numpy(value, key)
    return arrays, dtypes


def to_torch(arr: np.ndarray, dtype: str) -> Any:
    """numpy array in storage form → torch tensor of the original dtype (bit-exact)."""
    import torch

    if dtype in FLOAT8:
        bits = float8_narrow(arr, dtype)
        return torch.from_numpy(bits.reshape(np.shape(arr))).view(getattr(torch, dtype))
    if dtype == "bfloat16" and arr.dtype == np.uint16:  # the bits, as a bf16 space stores them
        bits = np.array(arr, copy=True, order="C").view(np.int16)
        return torch.from_numpy(bits).view(torch.bfloat16)
    t = torch.from_numpy(np.array(arr, copy=True, order="C"))
    return t.to(getattr(torch, dtype))


def from_storage(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Storage-dtype values → numpy array of the original dtype (bf16, float8 stay float32;
    a bf16 tensor given as its ``uint16`` bits is widened)."""
    if dtype == "bfloat16" and arr.dtype == np.uint16:
        return bf16_widen(arr)
    if dtype == "bfloat16" or dtype in FLOAT8:
        return arr.astype(np.float32, copy=False)
    return arr.astype(dtype, copy=False)
