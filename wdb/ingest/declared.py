"""Parents the files declare: ``wdb ingest --base RUN[:STEP]``, a Hugging Face ``config.json``
``_name_or_path``, a PEFT ``adapter_config.json`` ``base_model_name_or_path``.

A declared name becomes ``NewCheckpoint.base`` (lineage reason ``declared``,
``wdb.store.lineage``) only when it names something in the store: a run of that name, the
name's last path component as a run name (``org/model`` stored as ``model``), or a run whose
``source`` is that path. A name the store does not hold is ignored: a fine-tune of a base
downloaded from elsewhere has no parent here. A PEFT adapter (``adapter_model.*`` beside an
``adapter_config.json``) is named after its folder, not ``adapter_model``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"


def _read_json(path: Path) -> dict:
    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


def declared_name(source: str | None) -> str | None:
    """The base the files beside ``source`` name (PEFT first, then Hugging Face), or None."""
    if not source:
        return None
    folder = Path(source).parent
    peft = _read_json(folder / ADAPTER_CONFIG).get("base_model_name_or_path")
    if isinstance(peft, str) and peft:
        return peft
    hf = _read_json(folder / "config.json").get("_name_or_path")
    return hf if isinstance(hf, str) and hf else None


def is_adapter(source: str | None) -> bool:
    """Whether ``source`` is a PEFT adapter's weights (named after its folder, then)."""
    if not source:
        return False
    p = Path(source)
    return p.name.startswith("adapter_model") and (p.parent / ADAPTER_CONFIG).is_file()


def resolve(db: Any, name: str | None) -> str | None:
    """``name`` as ``RUN`` or ``RUN:STEP`` of a stored run, or None when the store lacks it."""
    if not name:
        return None
    run, sep, step = name.rpartition(":")
    if not (sep and step.lstrip("-").isdigit()):
        run, step = name, ""
    suffix = f":{step}" if step else ""
    cands = [run, Path(run).name]
    with contextlib.suppress(OSError):
        cands.append(str(Path(run).resolve()))
    for r in db.sql(
        "SELECT name, source FROM runs WHERE name IN (:a, :b) OR source IN (:a, :c)",
        {"a": cands[0], "b": cands[1], "c": cands[-1]},
    ):
        return f"{r['name']}{suffix}"
    return None
