"""Tasks: the one home of "what a checkpoint is for".

A task = deterministic data splits, a model constructor (which defines its weight space), a
batched evaluation that returns metrics and per-item outputs, and optionally a vectorised training
recipe that writes a zoo folder. The contract is ``wdb.study.tasks.base.Task`` (read its docstring);
``ClassifierTask`` and ``FieldTask`` do most of the work for the two kinds.

Tasks are plugins (``wdb.plugins``): the built-ins are entry points of group ``wdb.tasks`` in
wdb's own ``pyproject.toml``, a user's package adds its own the same way, and a file works too
(``wdb evaluate --task ./my_task.py``). ``for_space`` maps a weight space back to its task, so
``wdb evaluate`` finds the task of any stored checkpoint::

    task = wdb.study.tasks.get("mnist-mlp")
    task.layout(); task.build_model(); task.data("test"); task.evaluate_rows(rows)

Task modules import torch; this module does not (``names()`` stays cheap).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from wdb import plugins
from wdb.errors import BadInput

if TYPE_CHECKING:
    from wdb.study.tasks.base import Task

GROUP = "wdb.tasks"

_instances: dict[str, Task] = {}
_by_hash: dict[str, str] | None = None


def names() -> list[str]:
    """Registered task names."""
    return plugins.names(GROUP)


def _instantiate(obj: Any, ref: str) -> Task:
    from wdb.study.tasks.base import Task

    task = obj() if isinstance(obj, type) else obj
    if not isinstance(task, Task):
        raise BadInput(f"task '{ref}' is a {type(task).__name__}, not a wdb.study.tasks.base.Task")
    if not getattr(task, "name", ""):
        raise BadInput(f"task '{ref}' has no name")
    return task


def get(ref: str) -> Task:
    """The task called ``ref`` (a registered name or a ``.py`` file); one instance per process."""
    key = ref
    if plugins.is_path(ref):
        key = str(plugins.resolve(GROUP, ref).target)
    if key not in _instances:
        plugin = plugins.resolve(GROUP, ref)
        task = _instantiate(plugin.load(), ref)
        if plugin.distribution == "path":
            task.source = plugin.target  # where it came from, recorded with its eval set
        _instances[key] = task
        _instances.setdefault(task.name, task)
    return _instances[key]


def _hash_of(space_or_layout: Any) -> str:
    layout = getattr(space_or_layout, "layout", space_or_layout)
    if isinstance(layout, str):
        return layout
    return layout.hash


def for_space(space_or_layout: Any, db: Any = None) -> Task | None:
    """The task whose weight space (or base model space) has this layout; None if none does.

    Registered tasks are asked first. With ``db``, a space that no registered task knows is looked
    up in the eval sets its checkpoints were evaluated on: a task loaded from a file records its
    path there (``eval_sets.task_source``), so analyses find it again without ``--task``.
    Accepts a ``Space``, a ``Layout`` or a layout hash string.
    """
    global _by_hash
    if _by_hash is None:
        table: dict[str, str] = {}
        for name in names():
            task = get(name)
            for layout in task.layouts():
                table.setdefault(layout.hash, name)
        _by_hash = table
    h = _hash_of(space_or_layout)
    name = _by_hash.get(h)
    if name:
        return get(name)
    for t in _instances.values():  # tasks loaded from files in this process
        if h in {lay.hash for lay in t.layouts()}:
            return t
    space_id = getattr(space_or_layout, "id", None)
    if db is None or space_id is None:
        return None
    return _recorded_task(db, int(space_id), h)


def _recorded_task(db: Any, space_id: int, layout_hash: str) -> Task | None:
    rows = db.sql(
        "SELECT DISTINCT e.task, e.task_source FROM eval_sets e WHERE e.task IS NOT NULL AND "
        "EXISTS (SELECT 1 FROM metrics m JOIN checkpoints c ON c.id = m.checkpoint_id "
        "WHERE m.eval_set_id = e.id AND c.space_id = :s)",
        {"s": space_id},
    )
    for r in rows:
        for ref in (r["task_source"], r["task"]):
            if not ref:
                continue
            try:
                task = get(ref)
            except Exception:  # noqa: BLE001 - a moved file or uninstalled plugin: try the next
                continue
            if layout_hash in {lay.hash for lay in task.layouts()}:
                return task
    return None


def list_info() -> list[dict]:
    """One row per task: name, kind, eval set, parameters of its stored space (for the CLI)."""
    rows = []
    registered = plugins.registry(GROUP)
    for name in names():
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
                "distribution": registered[name].distribution,
                "about": (importlib.import_module(type(task).__module__).__doc__ or "")
                .strip()
                .split("\n")[0],
            }
        )
    return rows
