"""A tiny synthetic database for testing analyses in seconds without zoos or generators.

A toy classifier task (an MLP ``F -> H -> C`` on Gaussian blobs), ``n_train`` trained-looking
weight vectors, a fake generator run whose samples are near-copies of training rows, and the two
noise baselines plus ``average``/``gaussian`` — all written through the public API
(``db.add_checkpoints``, ``wdb.store.outputs``, ``db.add_metrics``) exactly as the real pipeline does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from wdb.plugin import Layout


@dataclass
class ToyTask:
    """Just enough of ``wdb.study.tasks.base.Task`` for the analyses: data, predict, kind."""

    n_features: int = 6
    n_hidden: int = 5
    n_classes: int = 3
    n_items: int = 120
    name: str = "toy-mlp"
    kind: str = "classifier"
    eval_split: str = "test"

    def layout(self) -> Layout:
        F, H, C = self.n_features, self.n_hidden, self.n_classes
        arrays = {
            "fc1.weight": np.zeros((H, F), np.float32),
            "fc1.bias": np.zeros(H, np.float32),
            "fc2.weight": np.zeros((C, H), np.float32),
            "fc2.bias": np.zeros(C, np.float32),
        }
        return Layout.from_arrays(arrays, {k: "float32" for k in arrays})

    def data(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(7 if split == "test" else 8)
        centres = np.random.default_rng(0).normal(0, 2.0, (self.n_classes, self.n_features))
        y = rng.integers(0, self.n_classes, self.n_items)
        X = centres[y] + rng.normal(0, 1.0, (self.n_items, self.n_features))
        return X.astype(np.float32), y

    def predict(self, rows: np.ndarray, X: np.ndarray, context=None) -> np.ndarray:
        lay = self.layout()
        out = []
        for row in np.atleast_2d(rows):
            p = lay.unflatten(row)
            h = np.maximum(X @ p["fc1.weight"].T + p["fc1.bias"], 0)
            out.append((h @ p["fc2.weight"].T + p["fc2.bias"]).argmax(1))
        return np.stack(out)

    def evaluate_rows(self, rows: np.ndarray, context=None) -> dict:
        X, y = self.data("test")
        P = self.predict(rows, X)
        return {"accuracy": (y[None] == P).mean(1), "predictions": P}

    def fit_rows(self, n: int, seed: int) -> np.ndarray:
        """Rough 'trained' weights: random hidden layer, least-squares readout per model."""
        X, y = self.data("train")
        rng = np.random.default_rng(seed)
        lay = self.layout()
        rows = []
        Y = np.eye(self.n_classes)[y]
        for _ in range(n):
            W1 = rng.normal(0, 0.6, (self.n_hidden, self.n_features))
            b1 = rng.normal(0, 0.3, self.n_hidden)
            H = np.maximum(X @ W1.T + b1, 0)
            Hb = np.c_[H, np.ones(len(H))]
            sol = np.linalg.lstsq(Hb, Y, rcond=None)[0]
            rows.append(
                lay.flatten(
                    {
                        "fc1.weight": W1.astype(np.float32),
                        "fc1.bias": b1.astype(np.float32),
                        "fc2.weight": sol[:-1].T.astype(np.float32),
                        "fc2.bias": sol[-1].astype(np.float32),
                    }
                )
            )
        return np.stack(rows).astype(np.float32)


def _generator_run(db, method: str, config: dict, train_ids: list[int]) -> int:
    import sqlalchemy as sa

    from wdb.plugin import generator_runs_table as generator_runs

    with db.catalog.begin() as conn:
        gid = conn.execute(sa.text("SELECT nextval('generator_runs_id_seq')")).scalar_one()
        conn.execute(
            generator_runs.insert().values(
                id=gid,
                method=method,
                config=json.dumps(config),
                status="done",
                train_selection="synthetic",
                train_ids=json.dumps([int(i) for i in train_ids]),
                seed=0,
                code_version="synthetic",
                wall_time_s=0.0,
            )
        )
    return int(gid)


def build(
    db,
    task: ToyTask | None = None,
    n_train: int = 24,
    n_gen: int = 12,
    n_base: int = 10,
    method: str = "toygen",
    seed: int = 0,
) -> dict:
    """Fill ``db`` with a toy zoo, a generator's near-copies and the baselines; evaluate all."""
    task = task or ToyTask()
    rng = np.random.default_rng(seed)
    W = task.fit_rows(n_train, seed)
    space = db.ensure_space(task.layout(), task.name)
    train_ids = db.add_checkpoints(
        space, W, run=[f"toy_{i:03d}" for i in range(n_train)], kind="training", zoo="toy"
    )
    made = {"training": train_ids}
    gid = _generator_run(db, method, {"size": "small"}, train_ids)
    src = rng.choice(n_train, n_gen)
    G = W[src] + rng.normal(0, 0.01, (n_gen, W.shape[1])).astype(np.float32)
    made["generated"] = db.add_checkpoints(
        space, G, kind="generated", generator_run_id=gid, zoo="toy"
    )
    made["gen"] = gid
    for k, sigma in enumerate((0.05, 0.3)):
        b = _generator_run(db, "noise", {"sigma": sigma}, train_ids)
        pick = rng.choice(n_train, n_base)
        N = W[pick] + rng.normal(0, sigma, (n_base, W.shape[1])).astype(np.float32)
        made[f"noise_{k + 1}"] = db.add_checkpoints(
            space, N, kind="baseline", generator_run_id=b, zoo="toy"
        )
    b = _generator_run(db, "average", {"k": 4}, train_ids)
    A = np.stack([W[rng.choice(n_train, 4, replace=False)].mean(0) for _ in range(n_base)])
    made["average"] = db.add_checkpoints(space, A, kind="baseline", generator_run_id=b, zoo="toy")
    b = _generator_run(db, "gaussian", {}, train_ids)
    S = rng.normal(W.mean(0), W.std(0), (n_base, W.shape[1])).astype(np.float32)
    made["gaussian"] = db.add_checkpoints(space, S, kind="baseline", generator_run_id=b, zoo="toy")
    # evaluate everything: predictions + accuracy on the toy eval set
    es = evaluate(db, task, [i for k, v in made.items() if k != "gen" for i in v])
    made["eval_set_id"] = es
    made["task"] = task
    return made


def evaluate(db, task: ToyTask, ids: list[int]) -> int:
    """What ``wdb evaluate`` does for a registered task: predictions + accuracy on its eval set."""
    from wdb.plugin import outputs

    X, y = task.data("test")
    es = outputs.ensure_eval_set(db, f"{task.name}:test", task.name, "test", y)
    ids = [int(i) for i in ids]
    if not ids:
        return es
    P = task.predict(db.weights(ids), X)
    outputs.write_outputs(db, es, "predictions", ids, P)
    acc = (y[None] == P).mean(1)
    db.add_metrics(
        [
            {"checkpoint_id": i, "eval_set_id": es, "name": "accuracy", "value": float(a)}
            for i, a in zip(ids, acc, strict=True)
        ]
    )
    return es


def evaluator(task: ToyTask):
    """A ``db.evaluate``-like callable (``where=``) for the toy task, for the experiments."""

    def run(db, where: str) -> None:
        done = {
            r["checkpoint_id"]
            for r in db.sql("SELECT checkpoint_id FROM metrics WHERE name = 'accuracy'")
        }
        ids = [c["checkpoint_id"] for c in db.checkpoints(where) if c["checkpoint_id"] not in done]
        evaluate(db, task, ids)

    return run
