"""Export a stored checkpoint back to a file: safetensors or a torch state dict, bit-exact.

Files are written to a temporary name beside the target and renamed into place, so an interrupted
export never leaves a half-written file under the requested name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from wdb.errors import BadInput

FORMATS = ("safetensors", "pt")


@contextlib.contextmanager
def _atomic_write(out: Path) -> Iterator[Path]:
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


def export_checkpoint(db, run: str, step: int | None, fmt: str, out: str | os.PathLike) -> dict:
    """Write the checkpoint (run, step or last step) to ``out``; returns what was written."""
    if fmt not in FORMATS:
        raise BadInput(f"--format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    info = db.checkpoint(run, step)
    state = db.state_dict(info)
    out = Path(out)
    with _atomic_write(out) as tmp:
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


def export_mesh(db, run: str, step: int | None, out: str | os.PathLike) -> dict:
    """Decode a neural-field checkpoint to a mesh (marching cubes) and write it (.ply/.obj/.stl)."""
    from wdb.tasks.shapes import mesh_for_checkpoint

    info = db.checkpoint(run, step)
    mesh = mesh_for_checkpoint(db, info["checkpoint_id"])
    if mesh is None or len(mesh.faces) == 0:
        raise BadInput(f"run '{run}' step {info['step']}: the occupancy field has no surface")
    out = Path(out)
    suffix = out.suffix.lstrip(".") or "ply"
    with _atomic_write(out) as tmp:
        mesh.export(str(tmp), file_type=suffix)
    return {
        "run": run,
        "step": info["step"],
        "vertices": len(mesh.vertices),
        "faces": len(mesh.faces),
        "out": str(out),
    }
