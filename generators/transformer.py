"""The small transformer pieces G.pt and HyperDiffusion share: weight tokens and an encoder.

Both methods cut a flat weight row into tokens (G.pt: each tensor in chunks of at most 1000
values; HyperDiffusion: one token per tensor), project every token with its *own* linear layer
(tokens have different lengths), run a non-causal pre-LayerNorm transformer, and project each
output token back with its own linear layer. ``TokenCodec`` does the per-token projections,
``Encoder`` the transformer; the method files keep their models, losses and loops.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from wdb.plugin import Layout


def token_slices(layout: Layout, chunk: int | None = None) -> list[tuple[int, int]]:
    """``(start, stop)`` offsets in a row: each tensor split into pieces of ≤ ``chunk`` values
    (``None``: one token per tensor). Non-float entries (none in these zoos) are kept too."""
    out: list[tuple[int, int]] = []
    for e in layout.entries:
        step = e.size if not chunk else int(chunk)
        for a in range(e.offset, e.stop, max(1, step)):
            out.append((a, min(a + step, e.stop)))
    return out


def permutation_index(layout: Layout, perms: list[np.ndarray | None]) -> np.ndarray:
    """The gather index ``idx`` with ``permute(row) == row[idx]`` for these hidden-unit perms.

    Computed by running :func:`wdb.query.symmetry.permute` on ``arange(D)`` (exact in float64), so the
    augmentation is literally the shared function-preserving permutation, applied as one cheap
    gather per batch.
    """
    from wdb.plugin import permute

    base = np.arange(layout.n_params, dtype=np.float64)
    return permute(base, layout, perms).astype(np.int64)


def random_permutation_index(layout: Layout, rng: np.random.Generator) -> np.ndarray:
    from wdb.plugin import random_permutations

    return permutation_index(layout, random_permutations(layout, rng))


class TokenCodec(nn.Module):
    """Row ``[B, D]`` ↔ tokens ``[B, K, width]``, one linear map per token each way."""

    def __init__(
        self, slices: list[tuple[int, int]], width: int, decode: bool = True, zero_out: bool = False
    ):
        super().__init__()
        self.slices = [(int(a), int(b)) for a, b in slices]
        self.enc = nn.ModuleList(nn.Linear(b - a, width) for a, b in self.slices)
        self.dec = (
            nn.ModuleList(nn.Linear(width, b - a) for a, b in self.slices) if decode else None
        )
        if decode and zero_out:
            for lin in self.dec:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def encode(self, row: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [f(row[:, a:b]) for f, (a, b) in zip(self.enc, self.slices, strict=True)], dim=1
        )

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        assert self.dec is not None
        return torch.cat([f(tokens[:, i]) for i, f in enumerate(self.dec)], dim=1)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), x + MLP(LN(x)); no mask (non-causal)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0, mlp_ratio: int = 4):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width),
            nn.GELU(),
            nn.Linear(mlp_ratio * width, width),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class Encoder(nn.Module):
    """Learned position embeddings + ``depth`` blocks + final LayerNorm over ``n_tokens`` tokens."""

    def __init__(
        self,
        n_tokens: int,
        width: int,
        depth: int,
        heads: int,
        dropout: float = 0.0,
        mlp_ratio: int = 4,
    ):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, n_tokens, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads, dropout, mlp_ratio) for _ in range(depth))
        self.ln = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos
        for b in self.blocks:
            x = b(x)
        return self.ln(x)


class EMA:
    """Exponential moving average of a module's parameters (with the usual short warm-up)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.n = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        state = model.state_dict()
        keys = [k for k, v in state.items() if v.dtype.is_floating_point]
        torch._foreach_lerp_([self.shadow[k] for k in keys], [state[k] for k in keys], 1 - d)
        for k, v in state.items():
            if not v.dtype.is_floating_point:
                self.shadow[k].copy_(v)


def adamw(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused where this torch build supports it on CPU (5x faster on ~4M parameters)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
