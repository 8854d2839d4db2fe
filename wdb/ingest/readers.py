"""The reader contract: what a format plugin finds (:class:`Found`) and how readers are chosen."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from wdb.errors import BadInput
from wdb.store.spaces import Layout

READER_GROUP = "wdb.readers"
#: detection priority of a reader that declares none (lower is asked first).
DEFAULT_PRIORITY = 50


@dataclass
class Found:
    """One checkpoint a reader found. ``load()`` returns a state dict (torch tensors or numpy
    arrays), or already-normalised ``(arrays, dtype names)``; when ``layout`` is set it returns
    one row in that layout's storage order instead (the flat format)."""

    source: str
    run: str
    step: int
    load: Callable[[], Any]
    metrics: dict[str, float] = field(default_factory=dict)
    kind: str | None = None
    split: str | None = None
    run_config: dict | None = None
    layout: Layout | None = None
    #: per-item error mask (bool ``[T]``) on eval set ``eval_set`` (no labels, ``n_items=T``).
    errors: np.ndarray | None = None
    eval_set: str | None = None
    #: set by a reader that already knows this item is bad (e.g. a manifest row naming no file).
    problem: str | None = None
    #: free-form JSON kept with the checkpoint (``checkpoints.meta``): a source's non-tensor entries.
    meta: dict | None = None
    #: True when ``step`` is a guess (a number in the file name, a position): a step counter the
    #: file itself holds (``global_step``, ``step``) then wins.
    step_guessed: bool = False
    #: set for a file that belongs with a checkpoint but holds no weights (optimizer, scheduler,
    #: RNG state, training arguments): counted as a companion, neither stored nor an error.
    companion: bool = False


@runtime_checkable
class Reader(Protocol):
    """The contract of an ingest format (a module or object; register it under the entry-point
    group ``wdb.readers``, or pass its file: ``wdb ingest DIR --format ./my_reader.py``).

    - ``detect(path) -> bool``: cheap; True when ``path`` (a folder or file) is in this format.
    - ``scan(path, options) -> Iterable[Found]``: one :class:`Found` per checkpoint, *without*
      loading tensors (``Found.load`` does that, lazily, so ingest can batch and hash). ``options``
      holds the CLI's ``space`` (a space name for formats whose files carry no tensor names).
      Raise ``wdb.errors.BadInput("<file>: <problem>")`` for a folder that cannot be read at all;
      a single bad checkpoint is a ``Found`` with ``problem`` set (ingest reports it and goes on).
    - ``PRIORITY`` (optional int, default 50): detection order among readers; the generic
      ``folder`` reader is 90 so that specific layouts win.

    ``Found.load()`` may return a state dict (torch tensors or numpy arrays) in any of the
    containers ingest unwraps, or a row when ``Found.layout`` is set. Metrics the source reported
    go in ``Found.metrics`` (eval set ``reported:<zoo>``), error sets in ``Found.errors``.
    """

    def detect(self, path: Path) -> bool: ...

    def scan(self, path: Path, options: dict) -> Iterable[Found]: ...


def format_names() -> list[str]:
    """Registered ingest formats, in detection order."""
    from wdb import plugins

    found = plugins.names(READER_GROUP)
    return sorted(found, key=lambda n: (int(getattr(reader(n), "PRIORITY", DEFAULT_PRIORITY)), n))


def reader(ref: str) -> Reader:
    """The reader registered as ``ref``, or defined by the ``.py`` file ``ref``."""
    from wdb import plugins
    from wdb.errors import NotFound

    try:
        obj = plugins.load(READER_GROUP, ref)
    except NotFound as exc:
        raise BadInput(str(exc).replace("unknown reader", "unknown format")) from None
    if not isinstance(obj, Reader):
        raise BadInput(f"format '{ref}': {obj!r} has no detect(path) and scan(path, options)")
    return obj


def detect_format(path: Path) -> str:
    """The first registered format whose reader recognises ``path``."""
    names = format_names()
    for name in names:
        if reader(name).detect(path):
            return name
    raise BadInput(
        f"{path}: no checkpoint files found in a known layout ({', '.join(names)}); "
        "use --format to force one"
    )
