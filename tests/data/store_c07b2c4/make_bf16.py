"""The files behind ``store.tar.gz``: bfloat16 checkpoints, written by wdb at commit c07b2c4,
the last version that stored bf16 rows widened to float32 (later versions store a space whose
tensors are all bf16 as 2-byte bit patterns). The test regenerates these files (numpy's PCG64
stream is stable) and compares every export with them, so the archive holds only the store.
How the store was made::

    python make_bf16.py zoo
    wdb --db store ingest zoo/run      # wide: step 0 a key row, step 1 a delta row
    wdb --db store ingest zoo/tuned    # wide: no parent declared, found by its sketch
    wdb --db store ingest zoo/small    # a small bf16 space (torch.save files), steps 0-2
    tar czf store.tar.gz store
"""

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

N_BIG, N_SMALL = 786_432, 262_144  # 2^20 parameters together: one wide chunk


def _bf16(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)  # exact: a 1/4096 grid


def family() -> dict[str, dict[str, torch.Tensor]]:
    """``{"run/step_0": {tensor: bf16 tensor}, ...}``: values on a 1/4096 grid, steps that move
    a sparse 0.5 % of them by one grid step; ``small/step_k`` a 210-parameter MLP layer."""
    rng = np.random.default_rng(20261207)

    def grid(n: int) -> np.ndarray:
        return rng.integers(-4, 4, n) / 4096

    w = {"big": grid(N_BIG), "small": grid(N_SMALL)}
    out = {"run/step_0": {k: _bf16(v) for k, v in w.items()}}
    w = {k: v + (rng.random(v.size) < 0.005) / 4096 for k, v in w.items()}
    out["run/step_1"] = {k: _bf16(v) for k, v in w.items()}
    tuned = {k: v - (rng.random(v.size) < 0.01) / 4096 for k, v in w.items()}
    out["tuned/step_0"] = {k: _bf16(v) for k, v in tuned.items()}
    for step in range(3):
        out[f"small/step_{step}"] = {
            "fc.weight": _bf16(rng.normal(0, 0.1, (20, 10))),
            "fc.bias": _bf16(rng.normal(0, 0.1, 10)),
        }
    return out


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for key, tensors in family().items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        if key.startswith("small/"):
            torch.save(tensors, root / f"{key}.pt")
        else:
            save_file(tensors, str(root / f"{key}.safetensors"))
