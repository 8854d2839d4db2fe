"""benchmarks/exp_pdiff_iou.py: the novelty of a training model (max IoU with the others) and a
tiny run of the experiment through the zoo's own BN training."""

from __future__ import annotations

import json

import numpy as np

from tests.benchmod import load


def _module():
    return load("exp_pdiff_iou")


def test_max_iou_excludes_self():
    errors = np.array(
        [[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]],
        dtype=bool,
    )
    got = _module().max_iou(errors)
    # rows 0 and 1 are equal (IoU 1); row 2 shares 1 of 3 with each of them; row 3 nothing
    np.testing.assert_allclose(got, [1.0, 1.0, 1 / 3, 0.0], atol=1e-6)


def test_tiny_run_measures_every_setting(tmp_path, capsys):
    out = tmp_path / "rows.json"
    args = ["--lr", "0.003", "--every", "1", "2", "--checkpoints", "6", "--base-epochs", "0"]
    assert _module().main([*args, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["every"], r["items"]) for r in rows] == [
        (e, n) for e in (1, 2) for n in (1000, 10_000, 10_000)
    ]
    for r in rows:
        assert 0.0 <= r["iou_median"] <= r["iou_max"] <= 1.0
        assert r["acc_min"] <= r["acc_mean"] <= r["acc_max"]
    # twice the steps between checkpoints moves them farther apart
    assert rows[3]["nn_l2"] > rows[0]["nn_l2"] > 0
    assert "| 0.003 | 2 | test-perturbed-v1 |" in capsys.readouterr().out
