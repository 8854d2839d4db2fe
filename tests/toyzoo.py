"""A toy mnist-mlp zoo written straight to a store: five runs of three steps, the fifth run the
test split (its step 0 is what G.pt prompts with). Shared by the G.pt and reference-set tests."""

from __future__ import annotations

import numpy as np


def write_toy_mlp_zoo(db) -> None:
    """Runs ``toy-0`` .. ``toy-4`` (zoo ``toy``), steps 0-2, loss falling with the step."""
    from wdb.store.write import NewCheckpoint
    from wdb.study.tasks import get

    layout = get("mnist-mlp").layout()
    space = db.ensure_space(layout)
    rng = np.random.default_rng(0)
    items = []
    for r in range(5):
        base = rng.normal(0, 0.03, layout.n_params).astype(np.float32)
        for s in range(3):
            items.append(
                NewCheckpoint(
                    run=f"toy-{r}",
                    step=s,
                    row=base + 0.01 * s,
                    zoo="toy",
                    split="test" if r == 4 else "train",
                    metrics={"loss": 2.3 - 0.5 * s},
                    run_config={"task": "mnist-mlp", "seed": r},
                )
            )
    db.write_checkpoints(space, items)
