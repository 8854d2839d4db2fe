"""Finding generator methods (plugins) and resolving their configs (defaults, files, ``--set``)."""

from __future__ import annotations

import copy
import json
import subprocess
import tomllib
import types
from collections.abc import Mapping
from dataclasses import asdict, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from wdb.errors import BadInput, WdbError
from wdb.study.contract import FRAMEWORK_KEYS, GROUP, Generator, MethodInfo, no_fit


# -- methods and configs -----------------------------------------------------------------------
def method_names() -> list[str]:
    """Registered generator and baseline names."""
    from wdb import plugins

    return plugins.names(GROUP)


def get_method(ref: str) -> Generator:
    """The generator registered as ``ref``, or defined by the ``.py`` file ``ref``.

    A file's generator without a ``NAME`` is named after the file."""
    from wdb import plugins

    obj = plugins.load(GROUP, ref)
    missing = [a for a in ("default_config", "fit", "sample") if not hasattr(obj, a)]
    if "fit" in missing and hasattr(obj, "sample"):
        obj.fit = no_fit  # baselines need no network
        missing.remove("fit")
    if missing:
        raise BadInput(
            f"generator '{ref}' lacks {', '.join(missing)} (see wdb.study.generate.Generator)"
        )
    if not getattr(obj, "NAME", None):
        obj.NAME = Path(ref).stem if plugins.is_path(ref) else ref
    if not getattr(obj, "KIND", None):
        obj.KIND = "generated"
    return obj


def method_info(method: str | Any) -> MethodInfo:
    """The method's :class:`MethodInfo` (defaults for a method without one, or not installed)."""
    obj = method
    if isinstance(method, str):
        try:
            obj = get_method(method)
        except WdbError:
            return MethodInfo(display=method)
    info = getattr(obj, "INFO", None) or MethodInfo()
    if not info.display:
        info = replace(info, display=str(getattr(obj, "NAME", method)))
    return info


def recall_sources(db) -> list[str]:
    """Register, in this process, generators that earlier runs loaded from files (their path is
    recorded as ``source`` in the run's config), so reports show their ``MethodInfo`` without a
    ``--method ./file.py``. A file that moved is skipped. Returns the names registered."""
    from wdb import plugins

    known = set(method_names())
    done: list[str] = []
    for r in db.sql("SELECT DISTINCT method, config FROM generator_runs WHERE status = 'done'"):
        if r["method"] in known or r["method"] in done:
            continue
        try:
            source = json.loads(r["config"] or "{}").get("source")
        except (TypeError, ValueError):
            continue
        if not source or not Path(source).is_file():
            continue
        try:
            obj = get_method(source)
        except WdbError:
            continue
        if r["method"] == obj.NAME:
            plugins.register(GROUP, obj.NAME, obj)
            done.append(obj.NAME)
    return done


def study_methods() -> list[str]:
    """Registered generators (not baselines), in the study's order."""
    out = []
    for name in method_names():
        try:
            obj = get_method(name)
        except WdbError:
            continue
        if getattr(obj, "KIND", "generated") != "baseline":
            out.append(name)
    return sorted(out, key=lambda m: (method_info(m).order, m))


def baseline_methods() -> list[str]:
    """Registered baselines (``KIND = "baseline"``)."""
    out = []
    for name in method_names():
        try:
            if getattr(get_method(name), "KIND", "") == "baseline":
                out.append(name)
        except WdbError:
            continue
    return out


def parse_value(text: str) -> Any:
    """``--set`` values: JSON when they parse (numbers, booleans, lists), else the string."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


def parse_sets(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["sigma=0.06", "size=small"]`` → ``{"sigma": 0.06, "size": "small"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--set '{item}': expected key=value")
        out[key.strip()] = parse_value(value.strip())
    return out


def read_config_file(path: str | Path) -> dict:
    """A JSON or TOML file of config keys."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(
            f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: config file must hold a table/object of keys")
    return data


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Keep a user value's type in line with the default's (``--set steps=1e3`` → int)."""
    if isinstance(default, bool) or default is None:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(default, int | float) and isinstance(value, str):
        raise BadInput(f"config key '{key}' needs a number, got '{value}'")
    return value


def resolve_config(
    method: Any,
    overrides: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    base: Mapping[str, Any] | None = None,
) -> dict:
    """Method defaults for the chosen size, then the config file, then ``--set`` overrides.

    ``size`` is read first (from overrides, the file, or ``base``) because it picks the defaults.
    Unknown keys are refused, naming the known ones, so a typo never silently does nothing.
    """
    layered: dict[str, Any] = {}
    if config_file:
        layered.update(read_config_file(config_file))
    layered.update(overrides or {})
    base = {k: v for k, v in (base or {}).items() if k not in FRAMEWORK_KEYS}
    size = layered.get("size", base.get("size", "default"))
    defaults = _defaults(method, size)
    config = dict(defaults)
    config.setdefault("size", size)
    config.update(base)
    for key, value in layered.items():
        if key not in config:
            raise BadInput(
                f"{method.NAME}: unknown config key '{key}' (known: {', '.join(sorted(config))})"
            )
        config[key] = _coerce(key, value, defaults.get(key, config[key]))
    config["size"] = size
    return config


def _defaults(method: Any, size: str) -> dict:
    try:
        defaults = method.default_config(size)
    except (KeyError, ValueError) as exc:
        raise BadInput(f"{method.NAME}: unknown size '{size}' (small or default): {exc}") from None
    if is_dataclass(defaults) and not isinstance(defaults, type):
        return asdict(defaults)
    return dict(defaults)


def config_view(method: Any, config: Mapping[str, Any]) -> Any:
    """The read-only config ``fit``/``sample`` receive: the method's config dataclass filled
    with the resolved values when its ``default_config`` returns one, else a read-only mapping."""
    defaults = method.default_config(str(config.get("size", "default")))
    if is_dataclass(defaults) and not isinstance(defaults, type):
        names = {f.name for f in fields(defaults)}
        return replace(defaults, **{k: copy.deepcopy(v) for k, v in config.items() if k in names})
    return types.MappingProxyType(copy.deepcopy(dict(config)))


def code_version() -> str:
    """``wdb <version>`` plus ``git describe`` of the source tree when there is one; never fails."""
    import importlib.metadata

    try:
        version = f"wdb {importlib.metadata.version('wdb')}"
    except importlib.metadata.PackageNotFoundError:
        version = "wdb (not installed)"
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            version += f" ({out.stdout.strip()})"
    except Exception:  # noqa: BLE001 - the version string is best effort by design
        pass
    return version
