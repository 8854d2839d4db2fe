"""Tasks: the one home of "what a checkpoint is for".

A task = deterministic data splits, a model constructor (which defines its weight space), a
vectorised training recipe that writes a zoo folder, and a batched evaluation that returns
metrics and per-item outputs. The registry maps names to task classes and weight-space hashes
back to tasks, so ``wdb evaluate`` can find the task of any stored checkpoint::

    task = wdb.tasks.get("mnist-mlp")
    task.layout(); task.build_model(); task.data("test"); task.evaluate_rows(rows)

Task modules import torch; this module does not (``names()`` stays cheap).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from wdb.errors import NotFound

if TYPE_CHECKING:
    from wdb.tasks.base import Task

#: task name → "module:class"
REGISTRY: dict[str, str] = {
    "mnist-mlp": "wdb.tasks.mnist_mlp:MnistMLP",
    "mnist-cnn": "wdb.tasks.mnist_cnn:MnistCNN",
    "mnist-bn": "wdb.tasks.mnist_bn:MnistBN",
    "shapes-occupancy": "wdb.tasks.shapes:ShapesOccupancy",
}

_instances: dict[str, Task] = {}
_by_hash: dict[str, str] | None = None


def names() -> list[str]:
    """Registered task names."""
    return list(REGISTRY)


def get(name: str) -> Task:
    """The task called ``name`` (one shared instance per process)."""
    if name not in REGISTRY:
        raise NotFound(f"unknown task '{name}' (known: {', '.join(REGISTRY)})")
    if name not in _instances:
        module, attr = REGISTRY[name].split(":")
        _instances[name] = getattr(importlib.import_module(module), attr)()
    return _instances[name]


def _hash_of(space_or_layout: Any) -> str:
    layout = getattr(space_or_layout, "layout", space_or_layout)
    if isinstance(layout, str):
        return layout
    return layout.hash


def for_space(space_or_layout: Any) -> Task | None:
    """The task whose weight space (or base model space) has this layout; None if none does.

    Accepts a ``Space``, a ``Layout`` or a layout hash string.
    """
    global _by_hash
    if _by_hash is None:
        table: dict[str, str] = {}
        for name in REGISTRY:
            task = get(name)
            for layout in task.layouts():
                table.setdefault(layout.hash, name)
        _by_hash = table
    name = _by_hash.get(_hash_of(space_or_layout))
    return get(name) if name else None


def list_info() -> list[dict]:
    """One row per task: name, kind, eval set, parameters of its stored space (for the CLI)."""
    rows = []
    for name in REGISTRY:
        task = get(name)
        layout = task.layout()
        rows.append(
            {
                "task": name,
                "kind": task.kind,
                "params": layout.n_params,
                "base_params": task.base_layout().n_params,
                "eval_set": task.eval_set_name(),
                "space_hash": layout.hash[:12],
                "about": (importlib.import_module(type(task).__module__).__doc__ or "")
                .strip()
                .split("\n")[0],
            }
        )
    return rows
