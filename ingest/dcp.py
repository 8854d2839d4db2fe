"""``torch.distributed.checkpoint`` folders: what FSDP, torchtitan and ``dcp.save`` write.

A folder holding ``.metadata`` and ``__<rank>_<n>.distcp`` files is one checkpoint. The path may
be such a folder (run = its name, step = its step token, e.g. ``step-100``), or a folder of them
(torchtitan's ``checkpoint/step-100/``: run = the folder above each, step from its name), when it
holds no other weight files (a mixed folder is read by the generic ``folder`` reader).

**Safety.** torch 2.13's own reader unpickles ``.metadata`` with plain ``pickle.load``
(``FileSystemReader.read_metadata``) and non-tensor entries with
``torch.load(weights_only=False)`` (``DefaultLoadPlanner.load_bytes``): either runs whatever code a
hostile folder holds. So this reader parses ``.metadata`` itself with a restricted unpickler that
knows only DCP's own metadata classes, ``torch.Size``, dtypes and layouts (any other global is
refused before anything is called), checks that every storage entry names a ``.distcp`` file
inside the folder, and then lets torch's reader do the rest through a subclass that hands it the
parsed metadata: tensor bytes are read by torch with ``torch.load(weights_only=True)``, and only
tensors are asked for, so no non-tensor entry is ever unpickled by torch. The step counter
(``step``, ``global_step``, ``train_state.step``) is read with ``weights_only=True`` too.
No trust flag is offered: nothing here needs one.

**Which tensors.** As for any bundle: the first top-level container wdb knows
(``CONTAINER_KEYS``: ``state_dict``, ``model``, ...) holding tensors is the model (names without
the container's prefix); without one (torchtitan puts the model's tensors at the top level), every
tensor except those under optimizer, scheduler, dataloader and train-state keys. What is left out
is named in ``meta.not_stored``.

**Memory.** The row is streamed: tensors are read a batch of at most ``BATCH_BYTES`` at a time,
each resharded by torch into a full tensor, so a checkpoint larger than memory goes in.
"""

from __future__ import annotations

import io
import math
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from wdb.plugin import (
    CONTAINER_KEYS,
    STATE_SUFFIXES,
    BadInput,
    Found,
    Layout,
    Loaded,
    check_finite,
    state_to_numpy,
    step_token,
)

#: detection order among readers (lower first): before the generic ``folder`` reader.
PRIORITY = 20
METADATA = ".metadata"
#: bytes of tensors read from the folder per batch (plus one torch.load copy of each).
BATCH_BYTES = 64 << 20
#: how deep below the given folder DCP folders are looked for.
MAX_DEPTH = 4
#: top-level keys that hold training state, not the model (torchtitan, FSDP recipes).
NOT_MODEL = (
    "optimizer",
    "optimizers",
    "optim",
    "lr_scheduler",
    "lr_schedulers",
    "scheduler",
    "dataloader",
    "train_state",
    "rng_state",
)
STEP_FQNS = ("step", "global_step", "train_state.step")
_META_CLASSES = frozenset(
    {
        "Metadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    }
)


def is_dcp(path: Path) -> bool:
    """A folder with DCP's ``.metadata`` and at least one ``.distcp`` file."""
    try:
        return (
            path.is_dir()
            and (path / METADATA).is_file()
            and any(p.suffix == ".distcp" for p in path.iterdir())
        )
    except OSError:
        return False


def _walk(path: Path, depth: int) -> Iterator[tuple[Path, bool]]:
    """(DCP folder, True) and (other file, False) below ``path``, not inside DCP folders."""
    try:
        children = sorted(path.iterdir())
    except OSError:
        return
    for p in children:
        if p.is_dir() and not p.is_symlink():
            if is_dcp(p):
                yield p, True
            elif depth > 0:
                yield from _walk(p, depth - 1)
        elif p.is_file():
            yield p, False


def dcp_folders(path: Path) -> list[Path]:
    """The DCP folders ``path`` is or holds; [] when it also holds other weight files."""
    if is_dcp(path):
        return [path]
    if not path.is_dir():
        return []
    found = []
    for p, dcp in _walk(path, MAX_DEPTH - 1):
        if dcp:
            found.append(p)
        elif p.suffix.lower() in STATE_SUFFIXES or p.name.endswith(".index.json"):
            return []  # other weight files: the generic reader's folder
    return found


def detect(path: Path) -> bool:
    return bool(dcp_folders(path))


def scan(path: Path, options: dict) -> Iterable[Found]:
    for d in dcp_folders(path):
        step = step_token(d.name)
        if d == path:
            run = options.get("zoo") or d.name
        elif step is not None:
            parent = d.parent.relative_to(path)
            run = path.name if parent == Path(".") else parent.as_posix()
        else:
            run = d.relative_to(path).as_posix()
        yield Found(
            str(d.resolve()),
            run,
            0 if step is None else step,
            partial(load, d),
            step_guessed=step is None,
        )


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's ``.metadata`` pickle, with only the globals a real one uses (the Python docs'
    "restricting globals" recipe): anything else is refused before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if module == "torch.distributed.checkpoint.metadata" and name in _META_CLASSES:
            return super().find_class(module, name)
        if module == "torch.distributed.checkpoint.filesystem" and name == "_StorageInfo":
            return super().find_class(module, name)
        if module == "torch" and name == "Size":
            return torch.Size
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch.serialization" and name == "_get_layout":
            return super().find_class(module, name)  # a lookup among torch's layouts
        if module.startswith("pathlib") and name in ("PosixPath", "WindowsPath", "PurePosixPath"):
            return PurePosixPath  # the saver's checkpoint id: kept as text, never opened
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def read_metadata(folder: Path) -> Any:
    """The folder's ``.metadata``, parsed safely and checked; one line naming it otherwise."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex

    where = f"{folder.name}/{METADATA}"
    try:
        with (folder / METADATA).open("rb") as fh:
            md = _MetadataUnpickler(fh).load()
    except pickle.UnpicklingError as exc:
        raise BadInput(f"{where}: refused to unpickle ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a damaged pickle, in any of its ways
        raise BadInput(f"{where}: corrupt DCP metadata ({type(exc).__name__}: {exc})") from None
    if not isinstance(md, Metadata) or not isinstance(md.state_dict_metadata, dict):
        raise BadInput(f"{where}: not DCP metadata (a {type(md).__name__})")
    sizes: dict[str, int] = {}
    for key, info in (md.storage_data or {}).items():
        if not isinstance(key, MetadataIndex) or not isinstance(info, _StorageInfo):
            raise BadInput(f"{where}: storage entry of an unknown kind")
        rel = info.relative_path
        if not isinstance(rel, str) or "/" in rel or "\\" in rel or not rel.endswith(".distcp"):
            raise BadInput(f"{where}: storage file {str(rel)[:80]!r} is not a .distcp file here")
        if rel not in sizes:
            p = folder / rel
            if not p.is_file():
                raise BadInput(f"{folder.name}/{rel}: missing (named by {METADATA})")
            sizes[rel] = p.stat().st_size
        off, n = info.offset, info.length
        if not (
            type(off) is int and type(n) is int and off >= 0 and n >= 0 and off + n <= sizes[rel]
        ):
            raise BadInput(f"{folder.name}/{rel}: truncated, or {METADATA} gives bad offsets")
    return md


def _reader(folder: Path, md: Any) -> Any:
    """torch's own ``FileSystemReader`` for ``folder``, handed the safely parsed metadata."""
    from torch.distributed.checkpoint import FileSystemReader

    class _Parsed(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            return md

    return _Parsed(str(folder))


def _choose(md: Any) -> tuple[list[tuple[str, str]], list[str]]:
    """([(fqn, name in wdb)], top-level keys not stored) — see the module's docstring."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    paths = md.planner_data if isinstance(md.planner_data, dict) else {}
    items = md.state_dict_metadata
    top = {fqn: str(paths.get(fqn, (fqn.split(".", 1)[0],))[0]) for fqn in items}
    tensors = [f for f, v in items.items() if isinstance(v, TensorStorageMetadata)]
    tops = {top[f] for f in tensors}
    container = next((k for k in CONTAINER_KEYS if k in tops), None)
    if container is not None:
        chosen = [(f, f[len(container) + 1 :]) for f in tensors if top[f] == container]
    else:
        chosen = [(f, f) for f in tensors if top[f] not in NOT_MODEL]
    taken = {top[f] for f, _ in chosen}
    return chosen, sorted({top[f] for f in items} - taken)


def _step(folder: Path, md: Any) -> int | None:
    """The checkpoint's own step counter, read with ``weights_only=True``, if it has one."""
    import torch
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    for fqn in STEP_FQNS:
        kind = md.state_dict_metadata.get(fqn)
        if isinstance(kind, BytesStorageMetadata):
            info = md.storage_data.get(MetadataIndex(fqn))
            if info is None or info.transform_descriptors:
                continue
            with (folder / info.relative_path).open("rb") as fh:
                fh.seek(info.offset)
                raw = fh.read(info.length)
            try:
                value = torch.load(io.BytesIO(raw), weights_only=True)
            except Exception:  # noqa: BLE001 - not a plain number: no step from it
                continue
        elif kind is not None and math.prod(kind.size) == 1:
            value = torch.empty(tuple(kind.size), dtype=kind.properties.dtype)
            _load_into(folder, md, {fqn: value})
        else:
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, int | float) and not isinstance(value, bool) and value == int(value):
            return int(value)
    return None


def _load_into(folder: Path, md: Any, state: dict) -> None:
    import torch.distributed.checkpoint as dcp

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no process group": one process is what we want
            dcp.load(state, storage_reader=_reader(folder, md), no_dist=True)
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - torch's reader on damaged bytes
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        raise BadInput(f"{folder.name}: unreadable DCP data ({line})") from None


def load(folder: Path) -> Loaded:
    """One DCP folder → a streamed :class:`Loaded` (layout from the metadata, no tensor read)."""
    import torch

    md = read_metadata(folder)
    chosen, left = _choose(md)
    if not chosen:
        raise BadInput(f"{folder.name}: no model tensors (only {', '.join(left) or 'nothing'})")
    items = []
    for fqn, name in chosen:
        props = md.state_dict_metadata[fqn].properties
        if props.layout != torch.strided:
            raise BadInput(f"{folder.name}: '{fqn}' is a {props.layout} tensor (not stored)")
        dtype = props.dtype
        state_to_numpy({name: torch.empty(0, dtype=dtype)})  # refuses a dtype wdb cannot store
        shape = [int(s) for s in md.state_dict_metadata[fqn].size]
        items.append({"name": name, "shape": shape, "dtype": str(dtype).removeprefix("torch.")})
    layout = Layout.from_json(items)

    def stream() -> Iterator[Any]:
        batch: list[tuple[str, Any]] = []
        size = 0
        for (fqn, _), entry in zip(chosen, layout.entries, strict=True):
            props = md.state_dict_metadata[fqn].properties
            batch.append((fqn, entry))
            size += entry.size * torch.empty(0, dtype=props.dtype).element_size()
            if size >= BATCH_BYTES:
                yield from _segments(folder, md, batch, layout)
                batch, size = [], 0
        if batch:
            yield from _segments(folder, md, batch, layout)

    meta: dict = {"format": "torch.distributed.checkpoint"}
    if left:
        meta["not_stored"] = left
    step = _step(folder, md)
    numbers = {"step": float(step)} if step is not None else {}
    return Loaded(meta=meta, numbers=numbers, layout=layout, stream=stream)


def _segments(folder: Path, md: Any, batch: list[tuple[str, Any]], layout: Layout) -> Iterator:
    """One batch of tensors read by torch into full tensors, as row segments in layout order."""
    import torch

    state = {}
    for fqn, _ in batch:
        m = md.state_dict_metadata[fqn]
        state[fqn] = torch.empty(tuple(m.size), dtype=m.properties.dtype)
    _load_into(folder, md, state)
    for fqn, entry in batch:
        arrays, dtypes = state_to_numpy({entry.name: state.pop(fqn)})
        check_finite(entry.name, arrays[entry.name], dtypes[entry.name])
        yield layout.segment(entry, arrays[entry.name])
