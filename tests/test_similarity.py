"""Bit-packed error-set similarity equals a plain boolean implementation, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from wdb.query import similarity as sim


def plain_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((len(a), len(b)))
    for i in range(len(a)):
        inter = (a[i] & b).sum(1)
        union = (a[i] | b).sum(1)
        out[i] = inter / (union + 1e-8)
    return out


@pytest.mark.parametrize("t", [1, 63, 64, 65, 200, 1000])
def test_iou_matrix_equals_plain(t):
    rng = np.random.default_rng(t)
    a = rng.random((17, t)) < rng.random((17, 1))
    b = rng.random((23, t)) < 0.2
    b[3] = False  # empty error set: union 0 -> IoU 0, no division by zero
    assert np.array_equal(sim.iou_matrix(a, b), plain_iou(a, b))


def test_max_iou_blocks_and_exclusion(monkeypatch):
    monkeypatch.setattr(sim, "BLOCK_WORDS", 7)  # force many small blocks
    rng = np.random.default_rng(0)
    ref = rng.random((40, 300)) < 0.3
    tgt = ref[[5, 9, 30]] ^ (rng.random((3, 300)) < 0.05)
    tgt = np.concatenate([tgt, ref[[12]]])  # last target is reference 12 itself
    exclude = np.array([-1, 9, -1, 12])
    best, arg = sim.max_iou(tgt, ref, exclude)
    full = plain_iou(tgt, ref)
    full[np.arange(4)[exclude >= 0], exclude[exclude >= 0]] = -np.inf
    assert np.array_equal(best, full.max(1))
    assert np.array_equal(arg, full.argmax(1))
    assert arg[0] == 5 and arg[2] == 30 and arg[3] != 12


def test_max_iou_nothing_left():
    a = np.ones((1, 10), bool)
    best, arg = sim.max_iou(a, a, np.array([0]))
    assert np.isnan(best[0]) and arg[0] == -1


def test_agreement():
    rng = np.random.default_rng(1)
    a = rng.random((6, 130)) < 0.3
    b = rng.random((4, 130)) < 0.3
    plain = (a[:, None, :] == b[None, :, :]).mean(-1)
    assert np.allclose(sim.agreement_matrix(a, b), plain, rtol=0, atol=1e-15)
    pa = rng.integers(0, 10, (6, 130))
    pb = rng.integers(0, 10, (4, 130))
    plain = (pa[:, None, :] == pb[None, :, :]).mean(-1)
    assert np.allclose(sim.agreement_matrix(pa, pb), plain, rtol=0, atol=1e-15)


def test_pack_counts():
    rng = np.random.default_rng(2)
    m = rng.random((5, 77)) < 0.5
    assert np.array_equal(sim.counts(sim.pack(m)), m.sum(1))
