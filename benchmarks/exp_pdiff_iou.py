"""Issue 28, item 4: can any eval set or zoo spacing bring P-diff's training checkpoints' max IoU
among themselves below 0.95?

Trains the demo zoo's base model once (``mnist_bn.train_base``, 8 epochs), caches its frozen
features, then for each setting runs the zoo's own BN-only training (``mnist_bn.bn_epoch``; its
batch order drawn from this script's seed, so not the demo zoo's exact checkpoints) to 300
checkpoints and measures, per eval set:

- the checkpoints' accuracy (mean, min, max);
- each checkpoint's max IoU of error sets with the other 299 (the paper's novelty of a training
  model, self excluded): median, 99th percentile, maximum, and the share at exactly 1;
- the median L2 distance to the nearest other checkpoint (how far apart the zoo's rows are).

Settings: ``lr`` (the zoo's 3e-3; P-diff's original 0.03) × ``every`` (1 = consecutive steps,
the zoo's recipe; k = a checkpoint every k steps, so 300 checkpoints span 300·k steps), over the
clean test split, the eval split ``test-perturbed-v1`` and a harder perturbation (±45°, ±4 px,
noise 0.3). Prints a markdown table (``--json`` writes the rows too). About 2 minutes on 2 cores.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/exp_pdiff_iou.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HARDER = dict(copies=9, rotate=45.0, shift=4.0, zoom=0.1, noise=0.3, seed=20261206)


def max_iou(errors: np.ndarray) -> np.ndarray:
    """Each row's max IoU (``|A∩B| / (|A∪B| + 1e-8)``, as ``METHODS.md``) with every other row."""
    e = errors.astype(np.float32)
    inter = e @ e.T
    count = e.sum(1)
    iou = inter / (count[:, None] + count[None] - inter + 1e-8)
    np.fill_diagonal(iou, -1.0)
    return iou.max(1)


def measure(base, h_tr, ytr, evals: dict, lr: float, every: int, n: int, seed: int) -> list:
    """One zoo setting: ``n`` checkpoints, one every ``every`` steps at ``lr``; a row per eval set."""
    import torch

    from wdb.study.tasks import mnist_bn as bn

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    kept = [
        torch.cat([a.detach()[0] for a in affine.values()]).clone()
        for affine in bn.bn_epoch(base, h_tr, ytr, n, rng, lr=lr, every=every)
    ]
    train_s = time.perf_counter() - t0
    rows = torch.stack(kept)
    dist = torch.cdist(rows.double(), rows.double())
    dist.fill_diagonal_(float("inf"))
    nn_l2 = float(dist.min(1).values.median())
    out = []
    for name, (h_eval, y_eval) in evals.items():
        with torch.no_grad():
            parts = torch.split(rows, 128, dim=1)
            logits = bn.head_logits(base, dict(zip(bn.BN_NAMES, parts, strict=True)), h_eval)
        errors = logits.argmax(-1).numpy() != y_eval[None]
        acc = 1.0 - errors.mean(1)
        mx = max_iou(errors)
        out.append(
            dict(
                lr=lr,
                every=every,
                eval_set=name,
                items=len(y_eval),
                errors=float(errors.sum(1).mean()),
                acc_mean=float(acc.mean()),
                acc_min=float(acc.min()),
                acc_max=float(acc.max()),
                iou_median=float(np.median(mx)),
                iou_p99=float(np.quantile(mx, 0.99)),
                iou_max=float(mx.max()),
                share_iou_1=float((mx >= 1.0 - 1e-9).mean()),
                nn_l2=nn_l2,
                train_s=train_s,
            )
        )
    return out


def table(rows: list[dict]) -> str:
    head = (
        "| lr | every | eval set | errors | accuracy (min–max) | max IoU: median | 99th pct "
        "| max | at 1 | nearest L2 |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(
        f"| {r['lr']:g} | {r['every']} | {r['eval_set']} | {r['errors']:.0f} "
        f"| {r['acc_mean']:.3f} ({r['acc_min']:.3f}–{r['acc_max']:.3f}) | {r['iou_median']:.4f} "
        f"| {r['iou_p99']:.4f} | {r['iou_max']:.4f} | {100 * r['share_iou_1']:.0f} % "
        f"| {r['nn_l2']:.3f} |"
        for r in rows
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lr", type=float, nargs="+", default=[3e-3, 3e-2])
    ap.add_argument("--every", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--checkpoints", type=int, default=300)
    ap.add_argument("--base-epochs", type=int, default=8, help="the demo zoo's: 8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)

    import torch

    from wdb.study.tasks import mnist_bn as bn
    from wdb.study.tasks.base import mnist_split

    torch.manual_seed(args.seed)
    Xtr, ytr = (torch.from_numpy(a) for a in mnist_split("train"))
    model = bn.train_base(Xtr, ytr, args.base_epochs, np.random.default_rng(args.seed))
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sets = {
        "test": mnist_split("test"),
        bn.EVAL_SPLIT: bn.perturbed_test(),
        "harder (±45°, ±4 px, σ 0.3)": bn.perturbed(*mnist_split("test"), **HARDER),
    }
    with torch.no_grad():
        h_tr = model.features(Xtr)
        evals = {k: (model.features(torch.from_numpy(X)), y) for k, (X, y) in sets.items()}
    rows: list[dict] = []
    for lr in args.lr:
        for every in args.every:
            rows += measure(base, h_tr, ytr, evals, lr, every, args.checkpoints, args.seed)
            print(f"lr {lr:g} every {every}: {rows[-1]['train_s']:.1f} s", flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
