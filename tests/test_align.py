"""Aligned L2: batched branch-and-bound equals per-pair Hungarian; permuted copies are at 0."""

from __future__ import annotations

import numpy as np
import pytest

from wdb.errors import BadInput
from wdb.query.align import AlignedSearch, neuron_layout, pair_distance
from wdb.query.symmetry import permute
from wdb.store.spaces import Layout


def mlp_layout(n_in=784, hidden=10, n_out=10) -> Layout:
    z = np.zeros
    return Layout.from_arrays(
        {
            "fc1.weight": z((hidden, n_in), np.float32),
            "fc1.bias": z(hidden, np.float32),
            "fc2.weight": z((n_out, hidden), np.float32),
            "fc2.bias": z(n_out, np.float32),
        }
    )


def brute_aligned(q, refs, nl):
    from scipy.optimize import linear_sum_assignment

    out = []
    for r in refs:
        qa, ra = q.astype(np.float64), r.astype(np.float64)
        qn, rn = qa[nl.unit_cols], ra[nl.unit_cols]
        cost = ((qn[:, None, :] - rn[None, :, :]) ** 2).sum(-1)
        i, j = linear_sum_assignment(cost)
        out.append(np.sqrt(cost[i, j].sum() + ((qa[nl.rest_cols] - ra[nl.rest_cols]) ** 2).sum()))
    return np.array(out)


def test_neuron_groups_cover_layout():
    lay = mlp_layout(20, 4, 3)
    nl = neuron_layout(lay)
    assert nl.unit_cols.shape == (4, 20 + 1 + 3)
    assert sorted(np.concatenate([nl.unit_cols.ravel(), nl.rest_cols])) == list(range(lay.n_params))
    row = np.arange(lay.n_params, dtype=np.float64)
    arr = lay.unflatten(row)
    g = row[nl.unit_cols[2]]
    assert np.array_equal(g[:20], arr["fc1.weight"][2])
    assert g[20] == arr["fc1.bias"][2]
    assert np.array_equal(g[21:], arr["fc2.weight"][:, 2])


@pytest.mark.parametrize("structured", [False, True])
def test_aligned_knn_matches_per_pair_hungarian(structured):
    lay = mlp_layout(30, 6, 5)
    nl = neuron_layout(lay)
    rng = np.random.default_rng(3)
    refs = rng.normal(size=(120, lay.n_params)).astype(np.float32)
    if structured:  # permuted noisy copies of a few prototypes: pruning must still be exact
        protos = refs[:4]
        refs = np.stack(
            [
                permute(protos[i % 4], lay, [rng.permutation(6)])
                + 0.05 * rng.normal(size=lay.n_params)
                for i in range(120)
            ]
        ).astype(np.float32)
    search = AlignedSearch(refs, nl)
    many = search.knn_many(refs[:5], 7, exclude=list(range(5)))  # one block of 5 queries
    for qi in range(5):
        q = refs[qi]
        res = search.knn(q, 7, exclude=qi)
        assert np.array_equal(many[qi].index, res.index)
        assert np.array_equal(many[qi].distance, res.distance)
        ref = brute_aligned(q, refs, nl)
        ref[qi] = np.inf
        order = np.argsort(ref, kind="stable")[:7]
        assert np.array_equal(res.index, order)
        assert np.allclose(res.distance, ref[order], rtol=1e-9, atol=0)
        d, _ = pair_distance(q, refs[order[0]], nl)
        assert d == pytest.approx(ref[order[0]], rel=1e-12)


def test_permuted_copy_is_at_zero():
    lay = mlp_layout()
    nl = neuron_layout(lay)
    rng = np.random.default_rng(4)
    refs = (0.1 * rng.normal(size=(50, lay.n_params))).astype(np.float32)
    q = permute(refs[17], lay, [rng.permutation(10)])
    assert np.linalg.norm(q.astype(np.float64) - refs[17]) > 1.0
    res = AlignedSearch(refs, nl).knn(q, 3)
    assert res.index[0] == 17 and res.distance[0] == 0.0
    assert res.solved < 50  # the lower bound pruned most pairs


def test_deeper_mlp_refused():
    z = np.zeros
    lay = Layout.from_arrays(
        {"a.weight": z((4, 3)), "a.bias": z(4), "b.weight": z((4, 4)), "c.weight": z((2, 4))}
    )
    with pytest.raises(BadInput, match="exactly one hidden layer"):
        neuron_layout(lay)


@pytest.mark.parametrize("budget", [6_000, 40_000, 1 << 30])
def test_aligned_scan_in_blocks_within_a_budget_is_exact(budget):
    # references read a block of rows at a time (a few rows under the tiny budgets): the
    # branch and bound of each block starts from the best of the blocks before it
    from wdb.query.align import scan_knn
    from wdb.query.scan import MemoryRows

    lay = mlp_layout(30, 6, 5)
    nl = neuron_layout(lay)
    rng = np.random.default_rng(5)
    protos = rng.normal(size=(4, lay.n_params))
    refs = np.stack(
        [
            permute(protos[i % 4], lay, [rng.permutation(6)]) + 0.05 * rng.normal(size=lay.n_params)
            for i in range(60)
        ]
    ).astype(np.float32)
    qs = refs[[3, 17, 40]]
    got = scan_knn(MemoryRows(refs), qs, nl, 5, [3, 17, -1], budget)
    whole = AlignedSearch(refs, nl).knn_many(qs, 5, [3, 17, -1])
    for j, q in enumerate(qs):
        ref = brute_aligned(q, refs, nl)
        if j < 2:
            ref[[3, 17][j]] = np.inf
        order = np.argsort(ref, kind="stable")[:5]
        assert got[j].index.tolist() == order.tolist() == whole[j].index.tolist()
        assert np.allclose(got[j].distance, ref[order], rtol=1e-9, atol=0)
        assert np.array_equal(got[j].distance, whole[j].distance)
