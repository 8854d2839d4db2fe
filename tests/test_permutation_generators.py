"""The permutation augmentation G.pt and HyperDiffusion use is function-preserving.

Both methods permute through ``generators.transformer.permutation_index`` (a gather index built
by ``wdb.query.symmetry.permute``); HyperDiffusion's ``augmented`` adds the permuted copies. A permuted
network must compute exactly the same function, through the tasks' own forward passes.
"""

from __future__ import annotations

import numpy as np
import torch

from generators import hyperdiffusion as hd
from generators.transformer import permutation_index, random_permutation_index
from wdb import plugin as P
from wdb.study.tasks import get
from wdb.study.tasks import mnist_mlp as M
from wdb.study.tasks import shapes as S
from wdb.study.tasks.base import stacked_params


def _space(layout):
    return type("S", (), {"layout": layout, "id": 1, "name": "s", "n_params": layout.n_params})()


def test_permutation_index_matches_symmetry_permute():
    from wdb.query.symmetry import permute, random_permutations

    layout = get("shapes-occupancy").layout()
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(3, layout.n_params)).astype(np.float32)
    perms = random_permutations(layout, np.random.default_rng(5))
    idx = permutation_index(layout, perms)
    assert sorted(idx.tolist()) == list(range(layout.n_params))  # a bijection of positions
    np.testing.assert_array_equal(rows[:, idx], permute(rows, layout, perms))


def test_permuted_mnist_mlp_computes_the_same_function():
    layout = get("mnist-mlp").layout()
    rng = np.random.default_rng(0)
    row = rng.normal(0, 0.1, layout.n_params).astype(np.float32)
    idx = np.stack([random_permutation_index(layout, rng) for _ in range(4)])
    permuted = row[idx]  # the gather G.pt applies to start and target alike
    assert all(not np.array_equal(p, row) for p in permuted)
    X = torch.from_numpy(rng.normal(size=(64, 784)).astype(np.float32))
    with torch.no_grad():
        ref = M.forward(stacked_params(layout, row[None]), X)
        out = M.forward(stacked_params(layout, permuted), X)
    torch.testing.assert_close(out, ref.expand_as(out), rtol=1e-5, atol=1e-5)
    # and it differs from a network whose neurons were NOT moved consistently
    broken = row.copy()
    broken[:784] = row[784:1568]  # swap two fc1 rows without touching fc2
    with torch.no_grad():
        other = M.forward(stacked_params(layout, broken[None]), X)
    assert not torch.allclose(other, ref, atol=1e-3)


def test_hyperdiffusion_augmentation_preserves_occupancy_functions():
    layout = get("shapes-occupancy").layout()
    rng = np.random.default_rng(1)
    W = rng.normal(0, 0.3, (3, layout.n_params)).astype(np.float32)
    ts = P.TrainingSet(np.arange(3), W, _space(layout), [{}] * 3, {}, {}, "t")
    aug = hd.augmented(ts, 3, seed=0)
    assert aug.shape == (12, layout.n_params)
    np.testing.assert_array_equal(aug[:3], W)
    pts = torch.from_numpy(rng.uniform(-1, 1, (256, 3)).astype(np.float32))
    with torch.no_grad():
        out = S.forward(stacked_params(layout, aug), S.encode(pts)).numpy()
    for copy in range(1, 4):
        block = aug[3 * copy : 3 * copy + 3]
        assert not np.allclose(block, W)  # the weights really moved
        np.testing.assert_allclose(out[3 * copy : 3 * copy + 3], out[:3], rtol=1e-4, atol=1e-4)
    assert np.array_equal(hd.augmented(ts, 3, seed=0), aug)  # fixed per seed
