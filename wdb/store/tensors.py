"""Convert state-dict values between torch, numpy and wdb's storage form without losing bits.

wdb stores numpy arrays plus a dtype *name*: numpy has no bfloat16, so bf16 tensors travel as
their exact float32 widening and are narrowed back on the way out. torch is imported only when a
torch tensor is actually seen, so commands that never touch torch stay fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from wdb.errors import BadInput

#: dtype names wdb accepts, as numpy/torch spell them.
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64")


def to_numpy(value: Any, name: str = "?") -> tuple[np.ndarray, str]:
    """One state-dict value → (numpy array, dtype name). bf16 becomes float32 (exact)."""
    if type(value).__module__.startswith("torch"):
        import torch

        if not isinstance(value, torch.Tensor):
            raise BadInput(f"entry '{name}' is a {type(value).__name__}, not a tensor")
        t = value.detach().cpu()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype == "bfloat16":
            return t.float().numpy(), "bfloat16"
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

    t = torch.from_numpy(np.array(arr, copy=True, order="C"))
    return t.to(getattr(torch, dtype))


def from_storage(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Storage-dtype values → numpy array of the original dtype (bf16 stays float32)."""
    if dtype == "bfloat16":
        return arr.astype(np.float32, copy=False)
    return arr.astype(dtype, copy=False)
