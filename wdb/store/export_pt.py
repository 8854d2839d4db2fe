"""Write torch checkpoint files (``torch.save``'s zip format) tensor by tensor, in bounded memory.

``torch.save`` needs the whole state dict in memory: one copy of a model that may be bigger than
the budget. Instead, each file is first written by torch itself from untouched tensors under
``torch.serialization.skip_data`` (torch's own pickle, alignment and zip layout, with space
reserved for every storage), then each tensor's bytes are written into its reserved record as
the store yields it (:meth:`wdb.db.Database.iter_tensors`), and the records' CRC-32s (which
``skip_data`` leaves 0) are patched in the local and central zip headers. Where each record lives
is what torch reports when it loads the skeleton on the ``meta`` device
(``storage._checkpoint_offset``), cross-checked against the zip's own headers. The result loads
with ``torch.load(..., weights_only=True)`` and passes a zip CRC check.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wdb.store.verify import crc32

#: bytes per value of the dtypes numpy cannot name (stored widened to float32)
ITEMSIZE = {"bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header, 30 bytes
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # central directory entry, 46 bytes


def raw_bytes(dtype: str, arr: np.ndarray) -> np.ndarray:
    """A tensor's values (storage form, :func:`wdb.store.tensors.from_storage`) as the bytes
    its original dtype has in a file (flat ``uint8``): bf16 is narrowed back from its exact
    float32 widening (or taken as the bits a bf16 space stores), float8 to its bit patterns."""
    from wdb.store.tensors import FLOAT8, float8_narrow

    if dtype in FLOAT8:
        return float8_narrow(arr, dtype).reshape(-1)
    if dtype == "bfloat16" and arr.dtype == np.uint16:  # a bf16 space's bits, as stored
        return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    if dtype == "bfloat16":
        import torch

        from wdb.store.tensors import to_torch

        arr = to_torch(arr, dtype).view(torch.int16).numpy()
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def meta_state(entries: Iterable[Any]) -> dict[str, Any]:
    """Tensors of the entries' names, shapes and dtypes on the ``meta`` device (no bytes)."""
    import torch

    return {
        e.name: torch.empty(tuple(e.shape), dtype=getattr(torch, e.dtype), device="meta")
        for e in entries
    }


class _Slot:
    __slots__ = ("path", "offset", "nbytes", "local", "central", "crc", "done")

    def __init__(self, path: Path, offset: int, nbytes: int, local: int, central: int):
        self.path, self.offset, self.nbytes = path, offset, nbytes
        self.local, self.central = local, central
        self.crc, self.done = 0, 0


def _skeleton(path: Path, entries: list) -> dict[str, _Slot]:
    """Write ``path`` with every storage reserved; where each tensor's bytes go."""
    import torch

    # ``torch.empty``: allocated, never touched (skip_data writes no bytes), so the pages are
    # not resident; FakeTensorMode would do the same at 75 MB and seconds of imports
    empty = {e.name: torch.empty(tuple(e.shape), dtype=getattr(torch, e.dtype)) for e in entries}
    with torch.serialization.skip_data():
        torch.save(empty, path)
    del empty
    meta = torch.load(path, map_location="meta", weights_only=True)
    with zipfile.ZipFile(path) as zf, path.open("rb") as fh:
        records: dict[int, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            fh.seek(info.header_offset)
            head = _LOCAL.unpack(fh.read(_LOCAL.size))
            records[info.header_offset + _LOCAL.size + head[9] + head[10]] = info
        central: dict[str, int] = {}
        at = zf.start_dir
        for _ in zf.infolist():
            fh.seek(at)
            ent = _CENTRAL.unpack(fh.read(_CENTRAL.size))
            n, m, k = ent[10], ent[11], ent[12]
            central[fh.read(n).decode()] = at
            at += _CENTRAL.size + n + m + k
    slots: dict[str, _Slot] = {}
    for e in entries:
        storage = meta[e.name].untyped_storage()
        info = records.get(int(storage._checkpoint_offset))
        if info is None or info.file_size != storage.nbytes() or info.CRC != 0:
            raise RuntimeError(f"{path}: torch's layout of '{e.name}' is not what was reserved")
        slots[e.name] = _Slot(
            path, int(storage._checkpoint_offset), info.file_size, info.header_offset,
            central[info.filename],
        )  # fmt: skip
    return slots


def write_torch_files(files: dict[Path, list], tensors: Iterator[tuple[Any, np.ndarray]]) -> None:
    """Write each file of ``files`` (path → its layout entries, in order) from ``tensors``
    (``(entry, array)`` as :meth:`Database.iter_tensors` yields them, each entry once), holding
    one tensor (or the store's read group) at a time."""
    slots: dict[str, _Slot] = {}
    for path, entries in files.items():
        slots.update(_skeleton(path, entries))
    fds = {path: os.open(path, os.O_RDWR) for path in files}
    try:
        for e, arr in tensors:
            slot = slots[e.name]
            raw = raw_bytes(e.dtype, arr)
            if raw.nbytes != slot.nbytes:
                raise RuntimeError(f"'{e.name}': {raw.nbytes} bytes for {slot.nbytes} reserved")
            os.pwrite(fds[slot.path], raw, slot.offset)
            slot.crc, slot.done = crc32(raw), slot.nbytes
        for name, slot in slots.items():
            if slot.done != slot.nbytes:
                raise RuntimeError(f"'{name}': no bytes came from the store")
            crc = struct.pack("<L", slot.crc)
            os.pwrite(fds[slot.path], crc, slot.local + 14)
            os.pwrite(fds[slot.path], crc, slot.central + 16)
        for fd in fds.values():
            os.fsync(fd)
    finally:
        for fd in fds.values():
            os.close(fd)
