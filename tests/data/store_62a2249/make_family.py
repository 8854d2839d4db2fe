"""The files behind ``store.tar.gz``: a family of 1,048,576-parameter checkpoints (one wide
chunk each), written by wdb at commit 62a2249 with delta rows, a shared re-save and a found
parent. The test regenerates these files (numpy's PCG64 stream is stable) and compares every
export with them, so the archive holds only the store. How the store was made::

    python make_family.py zoo
    wdb --db store ingest zoo/run        # steps 0-2: step 0 a key row, 1-2 deltas (previous_step)
    wdb --db store ingest zoo/resave     # the same bytes as run step 0: a shared row
    wdb --db store ingest zoo/tuned      # no parent declared: found by its sketch
    wdb --db store ingest zoo/frozen --base run:2   # declared parent
    tar czf store.tar.gz store
"""

import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

N_BIG, N_SMALL = 786_432, 262_144  # 2^20 parameters together: one wide chunk


def family() -> dict[str, dict[str, np.ndarray]]:
    """``{"run/step_0": {tensor: array}, ...}``: values on a 1/4096 grid (exact in float32, so
    the key row compresses), steps that move a sparse 0.5 % of the values by one grid step."""
    rng = np.random.default_rng(20261206)

    def grid(n: int) -> np.ndarray:
        return (rng.integers(-4, 4, n) / 4096).astype(np.float32)

    w = {"big": grid(N_BIG), "small": grid(N_SMALL)}
    out = {}
    for step in range(3):
        if step:
            w = {k: v.copy() for k, v in w.items()}
            for v in w.values():
                hit = rng.random(v.size) < 0.005
                v[hit] += np.float32(1 / 4096)
        out[f"run/step_{step}"] = w
    out["resave/step_0"] = {k: v.copy() for k, v in out["run/step_0"].items()}
    tuned = {k: v.copy() for k, v in w.items()}
    for v in tuned.values():
        hit = rng.random(v.size) < 0.01
        v[hit] -= np.float32(1 / 4096)
    out["tuned/step_0"] = tuned
    frozen = {"big": w["big"].copy(), "small": w["small"] + np.float32(1 / 2048)}
    out["frozen/step_0"] = frozen
    return out


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for key, tensors in family().items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(root / f"{key}.safetensors"))
