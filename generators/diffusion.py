"""Shared diffusion pieces: the linear beta schedule, DDPM/DDIM steps, timestep embeddings.

P-diff, G.pt and HyperDiffusion all use a linear schedule; each method file keeps its own model and
training loop and calls these few functions, so the sampling maths exists once.
"""

from __future__ import annotations

import math

import torch


class LinearSchedule:
    """``T`` steps, betas linear from ``beta_start`` to ``beta_end`` (DDPM, Ho et al. 2020)."""

    def __init__(self, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2):
        self.steps = steps
        self.betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = values.to(like.device)[t].to(like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noised ``x_t`` from clean ``x0`` at integer steps ``t``."""
        ab = self._at(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        ab = self._at(self.alpha_bar, t, x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        ab = self._at(self.alpha_bar, t, x_t)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    @torch.no_grad()
    def sample(
        self,
        model,
        shape: tuple[int, ...],
        predict: str = "eps",
        method: str = "ddpm",
        generator: torch.Generator | None = None,
        desc: str = "sampling",
        steps: int | None = None,
    ) -> torch.Tensor:
        """Run the reverse process. ``model(x_t, t) -> eps or x0`` as ``predict`` says.

        ``ddpm``: ancestral sampling with the posterior variance (all steps). ``ddim``: the
        deterministic DDIM update (eta = 0) over all steps. ``steps`` (fewer than the schedule's)
        visits that many evenly spaced timesteps instead (DDIM's respacing; ``ddpm`` then draws
        from the posterior between consecutive visited steps, DDIM's eta = 1). ``desc`` labels
        the progress bar (``wdb.progress``: a bar on a terminal, a line every 10 s in a log,
        else silent).
        """
        from wdb.plugin import progress

        x = torch.randn(shape, generator=generator)
        if steps is not None and 0 < steps < self.steps:
            return self._strided(model, x, steps, predict, method, generator, desc)
        steps = range(self.steps - 1, -1, -1)
        for i in progress(steps, total=self.steps, desc=desc):
            t = torch.full((shape[0],), i, dtype=torch.long)
            out = model(x, t)
            x0 = out if predict == "x0" else self.x0_from_eps(x, t, out)
            eps = out if predict == "eps" else self.eps_from_x0(x, t, out)
            ab = self.alpha_bar[i].item()
            ab_prev = self.alpha_bar[i - 1].item() if i > 0 else 1.0
            if method == "ddim":
                x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
                continue
            beta = self.betas[i].item()
            mean = (math.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (
                math.sqrt(self.alphas[i].item()) * (1 - ab_prev) / (1 - ab)
            ) * x
            if i > 0:
                var = beta * (1 - ab_prev) / (1 - ab)
                x = mean + math.sqrt(var) * torch.randn(shape, generator=generator)
            else:
                x = mean
        return x

    def _strided(self, model, x, steps, predict, method, generator, desc) -> torch.Tensor:
        """The reverse process over ``steps`` evenly spaced timesteps (Song et al. 2021, eq. 12)."""
        from wdb.plugin import progress

        ts = torch.linspace(self.steps - 1, 0, steps).round().long().tolist()
        eta = 1.0 if method == "ddpm" else 0.0
        for k in progress(range(len(ts)), total=len(ts), desc=desc):
            i = ts[k]
            t = torch.full((x.shape[0],), i, dtype=torch.long)
            out = model(x, t)
            x0 = out if predict == "x0" else self.x0_from_eps(x, t, out)
            eps = out if predict == "eps" else self.eps_from_x0(x, t, out)
            ab = self.alpha_bar[i].item()
            ab_prev = self.alpha_bar[ts[k + 1]].item() if k + 1 < len(ts) else 1.0
            sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
            x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator)
        return x


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) scalars ``t`` → ``[len(t), dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
