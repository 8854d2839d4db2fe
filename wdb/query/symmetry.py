"""Function-preserving transformations of weights: hidden-unit permutation and positive scaling.

A layout is read as a chain of layers: each tensor with two or more dimensions starts a layer
(axis 0 = output units, axis 1 = input units), and the 1-D tensors after it whose length equals its
output count belong to it (bias, BatchNorm affine and running statistics). A layer whose input count
is a multiple ``k`` of the previous layer's outputs follows a flatten of ``[C, H, W]`` maps, so each
previous unit owns a contiguous block of ``k`` inputs (channel-major flatten).

Permuting the output units of a hidden layer, together with the matching inputs of the next layer,
leaves the network's function unchanged. Scaling a hidden unit's incoming weights and bias by
``c > 0`` and its outgoing weights by ``1/c`` does too for (Leaky)ReLU networks without
normalisation between the two layers. Used by G.pt / HyperDiffusion augmentation, the aligned
distance, and the symmetry experiments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wdb.errors import BadInput
from wdb.store.spaces import Entry, Layout
from wdb.store.tensors import FLOAT_DTYPES


@dataclass
class Layer:
    """One layer: its weight entry and the per-unit 1-D entries attached to it."""

    weight: Entry
    attached: list[Entry] = field(default_factory=list)

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]


def layers(layout: Layout) -> list[Layer]:
    """The layer chain of a layout; raises BadInput when it is not a plain feed-forward chain."""
    chain: list[Layer] = []
    for e in layout.entries:
        if len(e.shape) >= 2:
            chain.append(Layer(e))
        elif chain and len(e.shape) == 1 and e.shape[0] == chain[-1].n_out:
            chain[-1].attached.append(e)
        elif len(e.shape) == 0 or e.dtype not in FLOAT_DTYPES:
            continue  # scalars such as num_batches_tracked carry no units
        else:
            raise BadInput(f"cannot read '{e.name}' {list(e.shape)} as part of a layer chain")
    if len(chain) < 2:
        raise BadInput("layout has fewer than two layers: no hidden units to transform")
    for prev, nxt in zip(chain, chain[1:], strict=False):
        if nxt.n_in % prev.n_out:
            raise BadInput(
                f"'{nxt.weight.name}' has {nxt.n_in} inputs, not a multiple of "
                f"'{prev.weight.name}' outputs ({prev.n_out})"
            )
    return chain


def hidden_sizes(layout: Layout) -> list[int]:
    """Number of hidden units per hidden layer (every layer but the last)."""
    return [layer.n_out for layer in layers(layout)[:-1]]


def random_permutations(layout: Layout, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.permutation(n) for n in hidden_sizes(layout)]


def _view(row: np.ndarray, e: Entry) -> np.ndarray:
    return row[..., e.offset : e.stop].reshape(*row.shape[:-1], *e.shape)


def _apply(row: np.ndarray, layout: Layout, per_layer, out_fn, in_fn) -> np.ndarray:
    out = np.array(row, copy=True)
    chain = layers(layout)
    for i, arg in enumerate(per_layer):
        if arg is None:
            continue
        layer, nxt = chain[i], chain[i + 1]
        for e in [layer.weight, *layer.attached]:
            v = _view(out, e)
            out[..., e.offset : e.stop] = out_fn(v, arg, e).reshape(*out.shape[:-1], -1)
        w = _view(out, nxt.weight)
        block = nxt.n_in // layer.n_out
        out[..., nxt.weight.offset : nxt.weight.stop] = in_fn(w, arg, block).reshape(
            *out.shape[:-1], -1
        )
    return out


def permute(row: np.ndarray, layout: Layout, perms: list[np.ndarray | None]) -> np.ndarray:
    """Permute hidden units (one permutation or None per hidden layer); works on [D] or [n, D]."""
    lead = row.ndim - 1

    def out_fn(v, p, e):
        return np.take(v, p, axis=lead)

    def in_fn(w, p, block):
        idx = (p[:, None] * block + np.arange(block)[None, :]).reshape(-1)
        return np.take(w, idx, axis=lead + 1)

    return _apply(row, layout, perms, out_fn, in_fn)


def scale(row: np.ndarray, layout: Layout, scales: list[np.ndarray | None]) -> np.ndarray:
    """Scale hidden units by c > 0 (incoming × c, outgoing ÷ c); ReLU networks without BN only."""
    lead = row.ndim - 1
    for c in scales:
        if c is not None and np.any(np.asarray(c) <= 0):
            raise BadInput("scaling factors must be positive")

    def out_fn(v, c, e):
        if e.name.endswith(("running_var", "running_mean")):
            raise BadInput(f"'{e.name}': scaling is not function-preserving across BatchNorm")
        shape = [1] * v.ndim
        shape[lead] = -1
        return v * np.asarray(c, dtype=v.dtype).reshape(shape)

    def in_fn(w, c, block):
        shape = [1] * w.ndim
        shape[lead + 1] = -1
        return w / np.repeat(np.asarray(c, dtype=w.dtype), block).reshape(shape)

    return _apply(row, layout, scales, out_fn, in_fn)
