"""Permutation-aligned L2 distance between one-hidden-layer MLPs (METHODS.md, G.pt evaluation).

Each hidden neuron is the group (fc1 row, fc1 bias — and any other per-unit 1-D tensor of the
layer — , fc2 column). The aligned distance between models ``q`` and ``r`` is

    sqrt( min_perm  sum_i ||n_i(q) - n_perm(i)(r)||^2  +  ||rest(q) - rest(r)||^2 )

where ``rest`` is every parameter outside the neuron groups (fc2 bias). The minimum over
permutations is a linear assignment problem, solved with ``scipy.optimize.linear_sum_assignment``
(Hungarian / Jonker-Volgenant) on the H x H matrix of squared distances between neuron groups.

Speed without giving up exactness (``AlignedSearch``):

- cost matrices for many pairs are built at once from Gram products in float64
  (``|a|^2 + |b|^2 - 2 a.b``), in bounded-memory chunks of references;
- a lower bound of every reference's aligned distance is free from the same matrices: each query
  neuron must be matched to *some* reference neuron, so ``sum_i min_j C_ij`` (and the same over
  columns) bounds the assignment from below;
- references are visited in increasing lower-bound order and the exact assignment is solved only
  until the next lower bound exceeds the current k-th best exact distance (branch and bound).
  The result is therefore exact over the whole reference set, not over a candidate set.

The final distances of the k winners are recomputed from direct differences under their optimal
permutation, so a permuted copy has distance exactly 0. Deeper MLPs (two or more hidden layers)
are refused: their neuron matchings interact and per-layer Hungarian would not be exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wdb.errors import BadInput
from wdb.store.spaces import Layout

#: References per chunk of cost matrices: chunk x H x F float64 stays a few tens of MiB.
CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class NeuronLayout:
    """Where the neuron groups and the remaining parameters live in a row."""

    hidden: int
    unit_cols: np.ndarray  # [H, F] column indices of each neuron's group
    rest_cols: np.ndarray  # [R] columns outside every group

    @property
    def features(self) -> int:
        return int(self.unit_cols.shape[1])


def neuron_layout(layout: Layout) -> NeuronLayout:
    """Neuron groups of a one-hidden-layer MLP layout (via ``wdb.query.symmetry.layers``)."""
    from wdb.query.symmetry import layers

    chain = layers(layout)
    if len(chain) != 2:
        raise BadInput(
            f"aligned distance needs an MLP with exactly one hidden layer; this layout has "
            f"{len(chain) - 1} hidden layers"
        )
    first, second = chain
    h = first.n_out
    block = second.n_in // h
    parts = []
    w = first.weight
    per_in = int(np.prod(w.shape[1:]))
    parts.append(w.offset + np.arange(h)[:, None] * per_in + np.arange(per_in)[None, :])
    for e in first.attached:
        per = e.size // h
        parts.append(e.offset + np.arange(h)[:, None] * per + np.arange(per)[None, :])
    w2 = second.weight
    n_out2 = w2.shape[0]
    in2 = int(np.prod(w2.shape[1:]))  # = h * block (times spatial size for conv, not used here)
    # column block of unit i in fc2: rows o, columns i*block .. i*block+block-1
    cols = (
        w2.offset
        + np.arange(n_out2)[None, :, None] * in2
        + (np.arange(h)[:, None, None] * block + np.arange(block)[None, None, :])
    )
    parts.append(cols.reshape(h, -1))
    unit_cols = np.concatenate(parts, axis=1).astype(np.int64)
    used = np.zeros(layout.n_params, dtype=bool)
    used[unit_cols.ravel()] = True
    if used.sum() != unit_cols.size:
        raise BadInput("neuron groups overlap: layout is not a plain MLP")
    return NeuronLayout(h, unit_cols, np.nonzero(~used)[0].astype(np.int64))


def split(rows: np.ndarray, nl: NeuronLayout) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[n, D]`` -> (neurons ``[n, H, F]``, rest ``[n, R]``) in float64."""
    rows = np.asarray(rows)
    return (
        np.ascontiguousarray(rows[:, nl.unit_cols], dtype=np.float64),
        np.ascontiguousarray(rows[:, nl.rest_cols], dtype=np.float64),
    )


def cost_matrices(qn: np.ndarray, rn: np.ndarray) -> np.ndarray:
    """Squared distances between neuron groups: query ``[H, F]`` x refs ``[n, H, F]`` -> ``[n, H, H]``."""
    n, h, f = rn.shape
    qq = np.einsum("if,if->i", qn, qn)
    rr = np.einsum("nif,nif->ni", rn, rn)
    cross = (qn @ rn.reshape(n * h, f).T).reshape(h, n, h).transpose(1, 0, 2)
    return np.maximum(qq[None, :, None] + rr[:, None, :] - 2.0 * cross, 0.0)


def _lsap():
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment


def pair_distance(q: np.ndarray, r: np.ndarray, nl: NeuronLayout) -> tuple[float, np.ndarray]:
    """Aligned distance of one pair, plain per-pair Hungarian on direct differences (reference)."""
    qn, qr = split(q[None], nl)
    rn, rr = split(r[None], nl)
    diff = qn[0][:, None, :] - rn[0][None, :, :]
    cost = np.einsum("ijf,ijf->ij", diff, diff)
    rows, cols = _lsap()(cost)
    total = cost[rows, cols].sum() + float(((qr - rr) ** 2).sum())
    return float(np.sqrt(total)), cols


def _exact(
    qn: np.ndarray, qr: np.ndarray, rn: np.ndarray, rr: np.ndarray, perm: np.ndarray
) -> float:
    d = qn - rn[perm]
    return float(np.sqrt((d * d).sum() + ((qr - rr) ** 2).sum()))


@dataclass
class AlignedResult:
    """k nearest references by aligned distance: positions into the reference array, distances."""

    index: np.ndarray
    distance: np.ndarray
    solved: int  # Hungarian problems actually solved (the rest were pruned by the lower bound)


class AlignedSearch:
    """Exact aligned k-NN over a fixed reference set (branch and bound, see the module doc).

    Holds the references' neuron groups in float64 (8 bytes x n x D) so that many queries share
    the split; cost matrices are built per query in chunks of ``CHUNK_BYTES``.
    """

    def __init__(self, reference: np.ndarray, nl: NeuronLayout):
        self.nl = nl
        self.rn, self.rr = split(reference, nl)
        self.rnorm = np.einsum("nif,nif->ni", self.rn, self.rn)
        self.n = self.rn.shape[0]

    def costs(self, qn: np.ndarray, qr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cost matrices ``[b, n, H, H]`` and rest terms ``[b, n]`` of a block of queries.

        One matrix product per block of queries and chunk of references: a block shares each
        pass over the reference neurons (8·n·D bytes), which otherwise dominates the time.
        """
        h, f = self.nl.hidden, self.nl.features
        b = qn.shape[0]
        qq = np.einsum("bif,bif->bi", qn, qn)
        chunk = max(1, CHUNK_BYTES // (8 * h * max(f, b * h)))
        costs = np.empty((b, self.n, h, h))
        q2 = qn.reshape(b * h, f)
        for s in range(0, self.n, chunk):
            rn = self.rn[s : s + chunk]
            m = rn.shape[0]
            cross = (q2 @ rn.reshape(m * h, f).T).reshape(b, h, m, h).transpose(0, 2, 1, 3)
            costs[:, s : s + m] = (
                qq[:, None, :, None] + self.rnorm[None, s : s + m, None, :] - 2.0 * cross
            )
        np.maximum(costs, 0.0, out=costs)
        rest = ((self.rr[None] - qr[:, None]) ** 2).sum(2)
        return costs, rest

    def knn(self, query: np.ndarray, k: int, exclude: int = -1) -> AlignedResult:
        """k nearest references of one row ``[D]``; ``exclude`` a position to skip (itself)."""
        return self.knn_many(query[None], k, [exclude])[0]

    def knn_many(
        self, queries: np.ndarray, k: int, exclude: list[int] | None = None
    ) -> list[AlignedResult]:
        """``knn`` for each row of ``queries`` ``[nq, D]``, cost matrices built per block."""
        h = self.nl.hidden
        exclude = [-1] * len(queries) if exclude is None else list(exclude)
        block = max(1, min(64, CHUNK_BYTES // max(1, 8 * self.n * h * h)))
        out = []
        for b0 in range(0, len(queries), block):
            qn, qr = split(queries[b0 : b0 + block], self.nl)
            costs, rest = self.costs(qn, qr)
            for j in range(qn.shape[0]):
                out.append(self._solve(qn[j], qr[j], costs[j], rest[j], k, exclude[b0 + j]))
        return out

    def _solve(self, qn, qr, costs, rest, k: int, exclude: int) -> AlignedResult:
        best: list[tuple[float, int, float]] = []
        tol = _tolerance(self.nl.hidden, costs, rest)
        solved = self.visit(qn, qr, costs, rest, k, exclude, best, tol)
        return _finish(best, k, solved)

    def visit(
        self, qn, qr, costs, rest, k: int, exclude: int, best: list, tol: float, offset: int = 0
    ) -> int:
        """Branch and bound over these references for one query: solve the assignment in
        increasing lower-bound order until the next bound exceeds the k-th best found so far
        (``best``, which may hold earlier blocks' references, their positions plus ``offset``),
        and add ``(gram cost, position, exact distance)`` for each solved one to ``best``. The
        exact distance (direct differences under the optimal permutation) is computed while
        the reference is in memory. Returns how many assignments were solved."""
        lsap = _lsap()
        lower = np.maximum(costs.min(2).sum(1), costs.min(1).sum(1)) + rest
        if 0 <= exclude < self.n:
            lower[exclude] = np.inf
        order = np.argsort(lower, kind="stable")
        # Gram-form costs carry float64 rounding: keep visiting while a reference could still
        # tie within it; the winners are ranked by their exact distances (``_finish``).
        solved = 0
        for pos in order:
            lb = lower[pos]
            if not np.isfinite(lb) or (len(best) >= k and lb > best[k - 1][0] + tol):
                break
            c = costs[pos]
            rows, cols = lsap(c)
            solved += 1
            exact = _exact(qn, qr, self.rn[pos], self.rr[pos], cols)
            best.append((float(c[rows, cols].sum() + rest[pos]), int(pos) + offset, exact))
            best.sort(key=lambda t: (t[0], t[1]))
            del best[k + 8 :]
        return solved


def _tolerance(h: int, costs: np.ndarray, rest: np.ndarray) -> float:
    return 1e-9 * h * (1.0 + float(costs.max(initial=0.0)) + float(rest.max(initial=0.0)))


def _finish(best: list, k: int, solved: int) -> AlignedResult:
    final = sorted((d, p) for _, p, d in best)[:k]
    return AlignedResult(
        np.array([p for _, p in final], dtype=np.int64),
        np.array([d for d, _ in final], dtype=np.float64),
        solved,
    )


def scan_knn(
    refs, queries: np.ndarray, nl: NeuronLayout, k: int, exclude: list[int], budget: int
) -> list[AlignedResult]:
    """Exact aligned k-NN of each query over references read a block of rows at a time, so
    that the float64 neuron groups and cost matrices stay within ``budget`` bytes (issue 25):
    ``refs`` is a row source (``wdb.query.scan``); each block is searched by branch and bound
    against the best found in the blocks before it."""
    from wdb.query.scan import READ_FACTOR

    n, d = refs.shape
    h = nl.hidden
    qb = max(1, min(64, len(queries)))
    per_ref = d * (refs.dtype.itemsize * READ_FACTOR + 8) + 8 * h * (h * qb + 2)
    m = max(1, min(n, budget // per_ref))
    best: list[list] = [[] for _ in range(len(queries))]
    tol = [0.0] * len(queries)
    solved = [0] * len(queries)
    for s in range(0, n, m):
        block = refs.read(slice(s, min(n, s + m)))
        search = AlignedSearch(block, nl)
        del block
        for b0 in range(0, len(queries), qb):
            qn, qr = split(queries[b0 : b0 + qb], nl)
            costs, rest = search.costs(qn, qr)
            for j in range(qn.shape[0]):
                g = b0 + j
                tol[g] = max(tol[g], _tolerance(h, costs[j], rest[j]))
                ex = exclude[g] - s
                solved[g] += search.visit(
                    qn[j], qr[j], costs[j], rest[j], k, ex, best[g], tol[g], s
                )
            del costs, rest
    return [_finish(b, k, n_) for b, n_ in zip(best, solved, strict=True)]


def aligned_knn(
    query: np.ndarray, reference: np.ndarray, nl: NeuronLayout, k: int, exclude: int = -1
) -> AlignedResult:
    """Exact k nearest references of one query row by aligned L2 (see ``AlignedSearch``)."""
    return AlignedSearch(reference, nl).knn(query, k, exclude)
