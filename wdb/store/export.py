"""Export a stored checkpoint back to a file: safetensors or a torch state dict, bit-exact.

Files are written to a temporary name beside the target and renamed into place, so an interrupted
export never leaves a half-written file under the requested name. ``max_shard_size`` writes a
Hugging Face sharded set instead (shards + ``*.index.json`` in a folder, split by
``huggingface_hub.split_torch_state_dict_into_shards``), so a model ingested from shards goes back
to the format it came from.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from wdb.errors import BadInput
from wdb.store.export_pt import ITEMSIZE, meta_state, raw_bytes, write_torch_files

FORMATS = ("safetensors", "pt")


@contextlib.contextmanager
def atomic_write(out: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; rename it into place only if the block succeeds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def export_checkpoint(
    db,
    run: str,
    step: int | None,
    fmt: str,
    out: str | os.PathLike,
    max_shard_size: int | str | None = None,
    memory: int | str | None = None,
) -> dict:
    """Write the checkpoint (run, step or last step) to ``out``; returns what was written.

    With ``max_shard_size`` (bytes or ``"50MB"``), ``out`` is a folder that receives
    ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json`` (``pt``:
    ``pytorch_model-...bin`` + ``pytorch_model.bin.index.json``), or one unsharded file when the
    model fits in one shard, as ``save_pretrained`` does. Every format is streamed tensor by
    tensor within the memory budget (``memory``, ``WDB_MEMORY``): the model is never held whole.
    """
    if fmt not in FORMATS:
        raise BadInput(f"--format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    info = db.checkpoint(run, step)
    out = Path(out)
    space = db.space(int(info["space_id"]))
    entries = list(space.layout.entries)
    done = {"run": run, "step": info["step"], "checkpoint_id": info["checkpoint_id"]}
    if max_shard_size is not None:
        files = _export_sharded(db, info, entries, fmt, out, max_shard_size, memory)
        return {**done, "tensors": len(entries), "files": files, "out": str(out)}
    with atomic_write(out) as tmp:
        _write_files(db, info, {tmp: entries}, fmt, memory)
    return {**done, "tensors": len(entries), "out": str(out)}


def _write_files(db, info: dict, files: dict[Path, list], fmt: str, memory) -> None:
    """Write every file of ``files`` (path → its layout entries) in one pass over the
    checkpoint's tensors, one read group in memory at a time."""
    tensors = db.iter_tensors(info, memory, bits=True)
    if fmt == "pt":
        write_torch_files(files, tensors)
        return
    where: dict[str, tuple[int, int]] = {}
    fds = {}
    try:
        for path, entries in files.items():
            fds[path] = fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            head, offsets = _safetensors_header(entries)
            os.write(fd, head)
            for e, off in zip(entries, offsets, strict=True):
                where[e.name] = (fd, len(head) + off)
        for e, arr in tensors:
            fd, off = where[e.name]
            os.pwrite(fd, raw_bytes(e.dtype, arr), off)
        for fd in fds.values():
            os.fsync(fd)
    finally:
        for fd in fds.values():
            os.close(fd)


_ST_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def _safetensors_header(entries: list) -> tuple[bytes, list[int]]:
    """The safetensors header (8-byte length + JSON of names, dtypes, shapes and byte offsets,
    all known from the layout) and each tensor's offset after it. The format is simple enough
    to stream: ``safetensors.torch.save_file`` takes the whole dict and copies every tensor to
    bytes, two copies of a model that may not fit the budget."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offsets, offset = [], 0
    for e in entries:
        size = e.size * (ITEMSIZE.get(e.dtype) or np.dtype(e.dtype).itemsize)
        header[e.name] = {
            "dtype": _ST_DTYPES[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [offset, offset + size],
        }
        offsets.append(offset)
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head, offsets


def _export_sharded(
    db, info: dict, entries: list, fmt: str, out: Path, max_shard_size: int | str, memory
) -> int:
    """Write a sharded set into the new folder ``out`` (built in a temporary folder beside it and
    renamed into place), streamed like a single file; returns the number of files written."""
    try:
        from huggingface_hub import split_torch_state_dict_into_shards
    except ImportError:
        raise BadInput("--max-shard-size needs huggingface_hub (pip install 'wdb[hf]')") from None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(
            f"{out}: exists and is not an empty folder (a sharded export writes a folder)"
        )
    pattern = "model{suffix}.safetensors" if fmt == "safetensors" else "pytorch_model{suffix}.bin"
    try:  # sizes and names only: meta tensors (each its own storage, as exported tensors are)
        split = split_torch_state_dict_into_shards(
            meta_state(entries), filename_pattern=pattern, max_shard_size=max_shard_size
        )
    except ValueError as exc:
        raise BadInput(f"--max-shard-size {max_shard_size!r}: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        by_name = {e.name: e for e in entries}
        files = {
            tmp / name: [by_name[k] for k in keys]
            for name, keys in split.filename_to_tensors.items()
        }
        for path in files:
            path.touch()
        _write_files(db, info, files, fmt, memory)
        if split.is_sharded:
            index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
            (tmp / (pattern.format(suffix="") + ".index.json")).write_text(
                json.dumps(index, indent=2, sort_keys=True) + "\n"
            )
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(split.filename_to_tensors) + int(split.is_sharded)
