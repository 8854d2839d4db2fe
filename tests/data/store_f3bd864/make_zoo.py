import os

import torch
from safetensors.torch import save_file

g = torch.Generator().manual_seed(0)
os.makedirs("zoo/run_a", exist_ok=True)
os.makedirs("zoo/run_b", exist_ok=True)
base = {
    "w": torch.randn(6, 5, generator=g),
    "b": torch.randn(5, generator=g),
    "n": torch.arange(4, dtype=torch.int64),
}
for s in range(3):
    st = {
        k: (v + 1e-3 * s * torch.randn(v.shape, generator=g) if v.is_floating_point() else v)
        for k, v in base.items()
    }
    torch.save(st, f"zoo/run_a/epoch_{s}.pt")
save_file(
    {"h": torch.randn(3, 4, generator=g).to(torch.bfloat16), "z": torch.tensor([-0.0, 1e-42, 3.5])},
    "zoo/run_b/step_7.safetensors",
)
