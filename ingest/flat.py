"""The flat layout of the paper's evaluation code (Zeng et al. 2025)::

    <name>_weights.npy             [N, D] one checkpoint per row
    <name>_accs.npy                [N]    optional: accuracy (fraction; > 1 read as percent)
    <name>_incorrect_indices.npy   [N, T] optional: boolean error sets on a test set of T items

Rows carry no tensor names, so a layout is required: ``--space`` naming an existing space, or a
JSON layout file (``Layout.from_json``: a list of ``{name, shape, dtype}``). Each row becomes run
``<name>_<i:05d>`` at step 0. Error sets are stored as ``errors`` outputs on one eval set per zoo,
``flat:<zoo>`` (``n_items = T``, no labels: the paper's files do not carry them), so training and
generated files of one zoo (``pdiff_weights.npy`` next to ``train_weights.npy``) share it and their
error-set IoU can be computed; files whose T differ are refused (ingest them with another
``--zoo``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from wdb.plugin import BadInput, Found

#: detection order among readers (lower first).
PRIORITY = 20

SUFFIX = "_weights.npy"


def weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.name.endswith(SUFFIX) else []
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(SUFFIX))


def detect(path: Path) -> bool:
    return bool(weight_files(path))


def _load(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def scan(path: Path, options: dict) -> Iterable[Found]:
    layout = options.get("layout")
    if layout is None:
        given = options.get("space")
        raise BadInput(
            f"{path}: the flat format needs a layout: --space naming an existing space or a "
            "JSON layout file" + (f" ('{given}' is neither)" if given else "")
        )
    zoo = options.get("zoo") or path.name
    items: int | None = None  # T of the zoo's error sets: one eval set holds one T
    for wfile in weight_files(path):
        name = wfile.name[: -len(SUFFIX)]
        src = str(wfile.resolve())
        try:
            weights = _load(wfile)
        except Exception as exc:
            yield Found(src, name, 0, lambda: None, problem=f"unreadable .npy ({exc})")
            continue
        if weights.ndim != 2 or weights.shape[1] != layout.n_params:
            yield Found(
                src,
                name,
                0,
                lambda: None,
                problem=f"weights have shape {list(weights.shape)}, the layout needs "
                f"[N, {layout.n_params}]",
            )
            continue
        n = weights.shape[0]
        accs = errors = None
        extra_problem = None
        afile = wfile.with_name(f"{name}_accs.npy")
        efile = wfile.with_name(f"{name}_incorrect_indices.npy")
        try:
            if afile.is_file():
                accs = np.asarray(_load(afile), dtype=np.float64).reshape(-1)
                if accs.shape[0] != n:
                    extra_problem = f"{afile.name} has {accs.shape[0]} values for {n} rows"
            if efile.is_file():
                errors = _load(efile)
                if errors.ndim != 2 or errors.shape[0] != n:
                    extra_problem = f"{efile.name} has shape {list(errors.shape)}, needs [{n}, T]"
                elif errors.dtype != np.bool_ and not np.isin(errors, (0, 1)).all():
                    extra_problem = f"{efile.name} is not a boolean mask"
                elif items is not None and errors.shape[1] != items:
                    extra_problem = (
                        f"{efile.name} has error sets of {errors.shape[1]} items, other files of "
                        f"zoo '{zoo}' have {items}: ingest it with another --zoo"
                    )
                else:
                    items = errors.shape[1]
        except Exception as exc:
            extra_problem = f"unreadable companion file ({exc})"
        if extra_problem:
            yield Found(src, name, 0, lambda: None, problem=extra_problem)
            continue
        for i in range(n):
            metrics = {}
            if accs is not None:
                a = float(accs[i])
                metrics["accuracy"] = a / 100.0 if a > 1 else a
            yield Found(
                f"{src}[{i}]",
                f"{name}_{i:05d}",
                0,
                lambda w=weights, i=i: np.array(w[i]),
                metrics=metrics,
                layout=layout,
                errors=None if errors is None else np.asarray(errors[i], dtype=bool),
                eval_set=f"flat:{zoo}" if errors is not None else None,
            )
