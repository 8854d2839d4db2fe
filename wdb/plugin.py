"""The public surface for plugin authors: tasks, generators, readers, and the analyses engine.

A researcher's own task, generator or checkpoint reader imports from here (and from ``wdb``'s
top level) only, exactly as wdb's built-in ``generators/``, ``ingest/`` and ``analyses/`` do, so
the modules inside ``wdb/`` can move without breaking anyone's plugin. The contracts are in
``docs/plugins.md``; each name's docstring is its contract.

Names load lazily (PEP 562): ``from wdb.plugin import Found`` costs no torch or FAISS import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name → "module:attribute" (``module:`` alone exposes the module itself).
_NAMES: dict[str, str] = {
    # errors and progress
    "WdbError": "wdb.errors:WdbError",
    "BadInput": "wdb.errors:BadInput",
    "NotFound": "wdb.errors:NotFound",
    "progress": "wdb.progress:progress",
    # weight spaces (layouts) and tensors
    "Layout": "wdb.store.spaces:Layout",
    "Entry": "wdb.store.spaces:Entry",
    "state_to_numpy": "wdb.store.tensors:state_to_numpy",
    # readers: the contract and safe file loading
    "Reader": "wdb.ingest.readers:Reader",
    "Found": "wdb.ingest.readers:Found",
    "Loaded": "wdb.files.checkpoint:Loaded",
    "read_checkpoint": "wdb.files.checkpoint:read_checkpoint",
    "read_index": "wdb.files.checkpoint:read_index",
    "step_from_name": "wdb.files.checkpoint:step_from_name",
    "step_token": "wdb.files.names:step_token",
    "strip_suffix": "wdb.files.names:strip_suffix",
    "sniff": "wdb.files.formats:sniff",
    "read_weights": "wdb.files.formats:read_weights",
    "SHARD_NAME": "wdb.files.checkpoint:SHARD_NAME",
    "CONTAINER_KEYS": "wdb.files.checkpoint:CONTAINER_KEYS",
    "check_finite": "wdb.files.checkpoint:check_finite",
    "STATE_SUFFIXES": "wdb.files.checkpoint:STATE_SUFFIXES",
    # generators: the contract, its types and the method registry
    "Generator": "wdb.study.contract:Generator",
    "TrainingSet": "wdb.study.contract:TrainingSet",
    "Samples": "wdb.study.contract:Samples",
    "Fitted": "wdb.study.contract:Fitted",
    "MethodInfo": "wdb.study.contract:MethodInfo",
    "torch_threads": "wdb.study.contract:torch_threads",
    "method_namespace": "wdb.study.contract:method_namespace",
    "no_fit": "wdb.study.contract:no_fit",
    "LINEAGE_KEYS": "wdb.query.reference:LINEAGE_KEYS",
    "reference_selection": "wdb.query.reference:selection",
    "recorded_references": "wdb.query.reference:recorded",
    "get_method": "wdb.study.methods:get_method",
    "method_info": "wdb.study.methods:method_info",
    "resolve_config": "wdb.study.methods:resolve_config",
    "recall_sources": "wdb.study.methods:recall_sources",
    "study_methods": "wdb.study.methods:study_methods",
    "baseline_methods": "wdb.study.methods:baseline_methods",
    # tasks: the contract and the registry
    "Task": "wdb.study.tasks.base:Task",
    "ClassifierTask": "wdb.study.tasks.base:ClassifierTask",
    "EvalContext": "wdb.study.tasks.base:EvalContext",
    "run_configs": "wdb.study.tasks.base:run_configs",
    "zoo_name": "wdb.study.tasks.base:zoo_name",
    "id_in": "wdb.study.tasks.base:id_in",
    "get_task": "wdb.study.tasks:get",
    "task_for_space": "wdb.study.tasks:for_space",
    # building blocks the built-in methods and analyses share
    "symmetry": "wdb.query.symmetry:",
    "layers": "wdb.query.symmetry:layers",
    "permute": "wdb.query.symmetry:permute",
    "random_permutations": "wdb.query.symmetry:random_permutations",
    "ensure_eval_set": "wdb.store.outputs:ensure_eval_set",
    "LEVEL": "wdb.study.tasks.shapes:LEVEL",
    "N_POINTS": "wdb.study.tasks.shapes:N_POINTS",
    "marching_mesh": "wdb.study.tasks.shapes:marching_mesh",
    "sample_points": "wdb.study.tasks.shapes:sample_points",
    "nearest_shapes": "wdb.study.tasks.shapes:nearest_shapes",
    "nonempty": "wdb.study.tasks.shapes:nonempty",
    "shapes": "wdb.study.tasks.shapes:",
    "outputs": "wdb.store.outputs:",
    "engine": "wdb.query.engine:",
    "novelty": "wdb.query.nearest:novelty",
    "max_iou": "wdb.query.similarity:max_iou",
    "AlignedSearch": "wdb.query.align:AlignedSearch",
    "neuron_layout": "wdb.query.align:neuron_layout",
    "pair_distance": "wdb.query.align:pair_distance",
    "ensure_index": "wdb.query.index:ensure",
    # SQL helpers for analyses that write tables into either catalog
    "dialect_name": "wdb.catalog.dialect:name",
    "json_ids": "wdb.catalog.dialect:json_ids",
    "json_text": "wdb.catalog.dialect:json_text",
    "replace_table_sql": "wdb.catalog.dialect:replace_table_sql",
    "generator_runs_table": "wdb.catalog.schema:generator_runs",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    target = _NAMES.get(name)
    if target is None:
        raise AttributeError(f"module 'wdb.plugin' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = importlib.import_module(module)
    if attr:
        value = getattr(value, attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # what type checkers and IDEs see
    from wdb.errors import BadInput, NotFound, WdbError  # noqa: F401
    from wdb.files.checkpoint import Loaded, read_checkpoint, step_from_name  # noqa: F401
    from wdb.files.formats import read_weights, sniff  # noqa: F401
    from wdb.files.names import step_token, strip_suffix  # noqa: F401
    from wdb.ingest.readers import Found, Reader  # noqa: F401
    from wdb.progress import progress  # noqa: F401
    from wdb.store.spaces import Entry, Layout  # noqa: F401
    from wdb.study.contract import Fitted, Generator, MethodInfo, Samples, TrainingSet  # noqa: F401
    from wdb.study.tasks.base import ClassifierTask, EvalContext, Task  # noqa: F401
