"""Plugin discovery: how wdb finds tasks, generators and ingest readers — built-in or yours.

There is one mechanism, and wdb's own plugins use it exactly as a researcher's do:

- **Entry points.** A distribution declares ``[project.entry-points."wdb.tasks"]`` (or
  ``"wdb.generators"``, ``"wdb.readers"``) with ``name = "module:attribute"``. wdb's built-ins are
  declared this way in its own ``pyproject.toml``; ``pip install -e .`` of a user's package makes
  its plugins appear in ``wdb zoo list``, ``wdb generate --help`` and ``wdb ingest --format``.
- **In-process**, for notebooks and tests: ``wdb.plugins.register("wdb.generators", "mine",
  obj)`` (not visible to other processes, e.g. the ``wdb`` command).
- **A file path**, for quick work: ``wdb generate ./my_generator.py``, ``wdb evaluate --task
  ./my_task.py``, ``wdb ingest --format ./my_reader.py``. The file is imported as a module and
  must define the plugin under the group's attribute name (``TASK``, ``GENERATOR``, ``READER``);
  see :func:`from_module` for the fallbacks.

What each kind of plugin must provide is written down once, as typed protocols:
``wdb.study.tasks.base.Task`` (tasks), ``wdb.study.generate.Generator`` (generators) and
``wdb.ingest.readers.Reader`` (readers).

Names are unique per group; when two distributions register one name, the first one found wins
and :func:`conflicts` lists the others (``wdb plugins`` prints them), so a clash is never silent.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wdb.errors import BadInput, NotFound

#: group → the attribute a plugin *file* defines its plugin under.
GROUPS: dict[str, str] = {
    "wdb.tasks": "TASK",
    "wdb.generators": "GENERATOR",
    "wdb.readers": "READER",
}
_KIND = {"wdb.tasks": "task", "wdb.generators": "generator", "wdb.readers": "reader"}


@dataclass(frozen=True)
class Plugin:
    """One registered plugin: its name, where it points, and which distribution declared it."""

    group: str
    name: str
    target: str  # "module:attribute", or a file path
    distribution: str  # the declaring distribution, or "path"

    def load(self) -> Any:
        """Import the plugin object (a task class or instance, a generator, a reader)."""
        if self.distribution == "process":
            return _local[self.group][self.name]
        if self.distribution == "path":
            return load_path(self.group, self.target)
        module, _, attr = self.target.partition(":")
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                raise NotFound(
                    f"{_KIND[self.group]} '{self.name}' is registered by {self.distribution} "
                    f"but its module {module} is not installed"
                ) from None
            raise
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
        return obj


_cache: dict[str, tuple[dict[str, Plugin], list[Plugin]]] = {}
_local: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}


def register(group: str, name: str, obj: Any) -> None:
    """Register ``obj`` as plugin ``name`` of ``group`` in this process (beats entry points)."""
    if group not in GROUPS:
        raise ValueError(f"unknown plugin group {group!r}")
    _local[group][name] = obj


def unregister(group: str, name: str) -> None:
    """Forget an in-process plugin (see :func:`register`)."""
    _local[group].pop(name, None)


def _scan(group: str) -> tuple[dict[str, Plugin], list[Plugin]]:
    if group not in GROUPS:
        raise ValueError(f"unknown plugin group {group!r}")
    if group not in _cache:
        from importlib.metadata import entry_points

        found: dict[str, Plugin] = {}
        clashes: list[Plugin] = []
        for ep in entry_points(group=group):
            dist = getattr(ep.dist, "name", None) or "?"
            p = Plugin(group, ep.name, ep.value, dist)
            if ep.name in found:
                if found[ep.name].target != p.target:
                    clashes.append(p)
                continue
            found[ep.name] = p
        _cache[group] = (found, clashes)
    return _cache[group]


def registry(group: str) -> dict[str, Plugin]:
    """Every plugin of ``group``: in-process ones, then those installed distributions declare."""
    found = dict(_scan(group)[0])
    for name in _local[group]:
        found[name] = Plugin(group, name, f"<in-process {name}>", "process")
    return found


def names(group: str) -> list[str]:
    """Registered names of ``group``, sorted."""
    return sorted(registry(group))


def conflicts(group: str) -> list[Plugin]:
    """Plugins that lost a name clash (another distribution registered the name first)."""
    return list(_scan(group)[1])


def refresh() -> None:
    """Forget cached entry points (after installing a plugin distribution in-process)."""
    _cache.clear()


def is_path(ref: str) -> bool:
    """Whether ``ref`` names a plugin file rather than a registered name."""
    return ref.endswith(".py") or "/" in ref or ref.startswith(".")


def resolve(group: str, ref: str) -> Plugin:
    """The plugin a user named: a registered name, or a path to a ``.py`` file."""
    if is_path(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise NotFound(f"{ref}: no such {_KIND[group]} file")
        return Plugin(group, path.stem, str(path.resolve()), "path")
    found = registry(group)
    if ref not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise NotFound(
            f"unknown {_KIND[group]} '{ref}' (known: {known}; or give a path to a .py file)"
        )
    return found[ref]


def load(group: str, ref: str) -> Any:
    """Import the plugin ``ref`` (a name or a file path) of ``group``."""
    return resolve(group, ref).load()


def load_path(group: str, path: str | Path) -> Any:
    """Import a plugin file and return the plugin it defines (see :func:`from_module`)."""
    path = Path(path).resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    mod_name = f"wdb_plugin_{path.stem}_{digest}"
    if mod_name in sys.modules:
        return from_module(group, sys.modules[mod_name], path)
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise BadInput(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        line = next((f.lineno for f in reversed(_tb_frames(exc)) if f.filename == str(path)), None)
        where = f"{path}:{line}" if line else str(path)
        raise BadInput(
            f"{where}: importing the plugin failed: {type(exc).__name__}: {exc}"
        ) from None
    return from_module(group, module, path)


def _tb_frames(exc: BaseException) -> list:
    import traceback

    return list(traceback.extract_tb(exc.__traceback__))


#: the task contract's class, named rather than imported: the registry sits below the study.
_TASK_CLASS = "wdb.study.tasks.base.Task"


def _is_task_class(cls: type) -> bool:
    return any(f"{b.__module__}.{b.__qualname__}" == _TASK_CLASS for b in cls.__mro__)


def from_module(group: str, module: Any, where: Any = None) -> Any:
    """The plugin a module defines: the attribute named by ``GROUPS[group]`` when present; else,
    for generators and readers, the module itself when it has the protocol's functions; for
    tasks, the one ``Task`` subclass the module defines."""
    attr = GROUPS[group]
    if hasattr(module, attr):
        return getattr(module, attr)
    if group == "wdb.generators" and hasattr(module, "sample"):
        return module
    if group == "wdb.readers" and hasattr(module, "detect") and hasattr(module, "scan"):
        return module
    if group == "wdb.tasks":
        own = [
            v
            for v in vars(module).values()
            if isinstance(v, type)
            and _is_task_class(v)
            and v.__module__ == module.__name__
            and getattr(v, "name", "")
        ]
        if len(own) == 1:
            return own[0]
    raise BadInput(
        f"{where or module.__name__}: defines no {_KIND[group]} (set {attr} = ... in the file; "
        f"see `wdb plugins --help`)"
    )


def describe(group: str) -> list[dict]:
    """One row per registered plugin of ``group`` (for ``wdb plugins``)."""
    found, clashes = _scan(group)
    rows = [
        {"group": group, "name": p.name, "target": p.target, "distribution": p.distribution}
        for p in sorted(found.values(), key=lambda p: p.name)
    ]
    rows += [
        {
            "group": group,
            "name": p.name,
            "target": p.target,
            "distribution": f"{p.distribution} (shadowed by {found[p.name].distribution})",
        }
        for p in clashes
    ]
    return rows
