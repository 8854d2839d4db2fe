"""The distributed engine: ``wdb query novelty`` on a local Dask cluster of 2 workers gives the
in-process result to the last bit (neighbour ids and float64 distances)."""

from __future__ import annotations

import numpy as np
import pytest

from wdb import query

pytest.importorskip("distributed", reason="Dask is not installed (pip install -e '.[dask]')")


@pytest.mark.parametrize("n_ref", [120, 700])  # brute-force scan, and the FAISS index path
def test_novelty_on_two_workers_is_bit_identical(db, n_ref):
    from wdb.spaces import Layout

    rng = np.random.default_rng(n_ref)
    layout = Layout.from_arrays({"w": np.zeros((6, 10), np.float32), "b": np.zeros(6, np.float32)})
    base = rng.normal(size=layout.n_params).astype(np.float32)
    train = (base + rng.normal(0, 0.3, (n_ref, layout.n_params))).astype(np.float32)
    db.add_checkpoints(layout, train, run="train", kind="training", zoo="z")
    gen = (base + rng.normal(0, 0.3, (90, layout.n_params))).astype(np.float32)
    db.add_checkpoints(layout, gen, run="gen", kind="generated", zoo="z")
    local = query.novelty(db, "kind = 'generated'", k=3, save=False)
    dist = query.novelty(db, "kind = 'generated'", k=3, save=False, workers=2)
    assert len(local) == len(dist) == 90
    for a, b in zip(local, dist, strict=True):
        assert a["checkpoint_id"] == b["checkpoint_id"] and a["nearest_id"] == b["nearest_id"]
        assert np.float64(a["min_l2"]).tobytes() == np.float64(b["min_l2"]).tobytes()
    # the training set's own novelty (each target excluded from its reference) also matches
    local = query.novelty(db, "kind = 'training'", k=2, save=False)
    dist = query.novelty(db, "kind = 'training'", k=2, save=False, workers=2)
    assert [(r["nearest_id"], r["min_l2"]) for r in local] == [
        (r["nearest_id"], r["min_l2"]) for r in dist
    ]
