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
from wdb.store.tensors import FLOAT8, float8_narrow

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
    model fits in one shard, as ``save_pretrained`` does. A single safetensors file is streamed
    tensor by tensor within the memory budget (``memory``, ``WDB_MEMORY``); ``pt`` and sharded
    sets hold the state dict (one copy of the model).
    """
    if fmt not in FORMATS:
        raise BadInput(f"--format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    info = db.checkpoint(run, step)
    out = Path(out)
    if fmt == "safetensors" and max_shard_size is None:
        with atomic_write(out) as tmp:
            n = _stream_safetensors(db, info, tmp, memory)
        return {
            "run": run,
            "step": info["step"],
            "checkpoint_id": info["checkpoint_id"],
            "tensors": n,
            "out": str(out),
        }
    state = db.state_dict(info, memory=memory)
    if max_shard_size is not None:
        files = _export_sharded(state, fmt, out, max_shard_size)
        return {
            "run": run,
            "step": info["step"],
            "checkpoint_id": info["checkpoint_id"],
            "tensors": len(state),
            "files": files,
            "out": str(out),
        }
    with atomic_write(out) as tmp:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        else:
            import torch

            torch.save(state, tmp)
    return {
        "run": run,
        "step": info["step"],
        "checkpoint_id": info["checkpoint_id"],
        "tensors": len(state),
        "out": str(out),
    }


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


#: bytes per value of the dtypes numpy cannot name
_ITEMSIZE = {"bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}


def _stream_safetensors(db, info: dict, path: Path, memory: int | str | None) -> int:
    """Write a safetensors file tensor by tensor: the header (JSON of names, dtypes, shapes and
    byte offsets: all known from the layout) and then each tensor's bytes as it is read.
    ``safetensors.torch.save_file`` takes the whole dict and copies every tensor to bytes, two
    copies of a model that may not fit the budget; the format is simple enough to stream."""
    space = db.space(int(info["space_id"]))
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in space.layout.entries:
        size = e.size * (_ITEMSIZE.get(e.dtype) or np.dtype(e.dtype).itemsize)
        header[e.name] = {
            "dtype": _ST_DTYPES[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(head)))
        fh.write(head)
        for e, arr in db.iter_tensors(info, memory):
            if e.dtype == "bfloat16":
                import torch

                from wdb.store.tensors import to_torch

                arr = to_torch(arr, e.dtype).view(torch.int16).numpy()
            elif e.dtype in FLOAT8:
                arr = float8_narrow(arr, e.dtype, e.name)  # the bit patterns, no torch needed
            fh.write(np.ascontiguousarray(arr).data)
    return len(space.layout.entries)


def _export_sharded(state: dict, fmt: str, out: Path, max_shard_size: int | str) -> int:
    """Write a sharded set into the new folder ``out`` (built in a temporary folder beside it and
    renamed into place); returns the number of files written."""
    try:
        from huggingface_hub import split_torch_state_dict_into_shards
    except ImportError:
        raise BadInput("--max-shard-size needs huggingface_hub (pip install 'wdb[hf]')") from None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(
            f"{out}: exists and is not an empty folder (a sharded export writes a folder)"
        )
    pattern = "model{suffix}.safetensors" if fmt == "safetensors" else "pytorch_model{suffix}.bin"
    try:
        split = split_torch_state_dict_into_shards(
            state, filename_pattern=pattern, max_shard_size=max_shard_size
        )
    except ValueError as exc:
        raise BadInput(f"--max-shard-size {max_shard_size!r}: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, keys in split.filename_to_tensors.items():
            shard = {k: state[k].contiguous() for k in keys}
            if fmt == "safetensors":
                from safetensors.torch import save_file

                save_file(shard, str(tmp / name), metadata={"format": "pt"})
            else:
                import torch

                torch.save(shard, tmp / name)
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
