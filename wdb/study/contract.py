"""The generator contract and the types it speaks: what a method gets (:class:`TrainingSet`),
what it returns (:class:`Samples`, :class:`Fitted`), what it declares (:class:`MethodInfo`)."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: ``Samples.info`` keys through which a sample names the checkpoint it came from
from wdb.query.reference import LINEAGE_KEYS  # noqa: F401

#: entry-point group of generators (see ``wdb.plugins``); the built-ins are registered there too.
GROUP = "wdb.generators"

#: Config keys the framework itself records (never method options).
FRAMEWORK_KEYS = ("seed", "from_run", "timings", "source", "reference")


@dataclass
class TrainingSet:
    """A generator's training data, loaded once so that fitting needs no catalog."""

    ids: np.ndarray  # checkpoint ids [N] (int64)
    weights: np.ndarray  # [N, D] float32 rows in `space`
    space: Any  # wdb.db.Space
    info: list[dict]  # checkpoint_info rows, same order
    metrics: dict[str, np.ndarray]  # name -> [N] float, NaN where missing
    run_configs: dict[str, dict]  # run name -> parsed runs.config
    selection: str  # the SQL filter it came from

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def layout(self):
        return self.space.layout

    def metric(self, name: str) -> np.ndarray | None:
        """The metric as [N] floats, or None when no row has it."""
        values = self.metrics.get(name)
        if values is None or not np.isfinite(values).any():
            return None
        return values


@dataclass
class Samples:
    """One block of generated rows; the framework writes each row as its own run."""

    rows: np.ndarray  # [n, D'] float32
    kind: str = "generated"  # generated | baseline | reconstructed
    info: list[dict] | None = None  # per-row provenance, stored in each run's config
    space: Any = None  # None = the training space; or a wdb.store.spaces.Layout
    record: dict = field(default_factory=dict)  # run-level values to record (e.g. σ used)


@dataclass
class Fitted:
    """What ``fit`` may return instead of the bare model: the model plus values to record.

    ``record`` (e.g. the loss reached, a scale the data was normalised by) is merged into the
    generator run's recorded config and into the config ``sample`` sees; ``fit`` never writes
    into the config it was given (it is read-only)."""

    model: Any
    record: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MethodInfo:
    """What the memorization study needs to know about a method beyond fit/sample.

    (Its tunable knobs need no declaration: the modeling-factors experiment varies config keys by
    name — ``steps``/``train_steps``, ``width``/``channels``, ``dropout``, ... — see
    ``analyses.experiments.VARIANTS``.) A generator module exposes one as ``INFO``; without it,
    defaults apply (the method shows
    under its ``NAME``, is compared in plain L2 against its training set with noise baselines at
    σ 0.02/0.04 around the final checkpoints, and is expected to memorise). ``task`` makes the
    method part of ``wdb demo``: the demo trains that task's zoo and fits the method on it.
    """

    display: str = ""  # name in figures and the summary ("P-diff")
    order: int = 100  # position in the study's tables (the paper's order: 10, 20, ...)
    task: str | None = None  # the task whose zoo ``wdb demo`` trains it on
    train_split: str | None = "train"  # split of the zoo it trains on (None: every checkpoint)
    aligned: bool = False  # novelty in permutation-aligned L2 (G.pt's MLPs)
    noise_sigmas: tuple[float, ...] = (0.02, 0.04)  # the paper's σ for its noise baselines
    noise_select: str = "final"  # top | final | all: which training checkpoints get noise
    noise_ref_std: float | None = None  # σ is meant for this weight std (rescaled, see noise)
    #: what stands for its training set in baselines and experiments: ``training``, or
    #: ``reconstructed`` (its autoencoder's reconstructions, Hyper-Representations)
    reference: str = "training"
    #: the paper's reference set for its samples, recorded with every generator run
    #: (``wdb.study.reference``; table ``reference_sets``): ``all`` checkpoints of what stands
    #: for its training set (``reference`` above), or only the ``final`` step of each training
    #: run (G.pt: final checkpoints; HR: reconstructions of the last epoch). A generator may
    #: instead define ``reference_set(train, samples)`` (see :class:`Generator`).
    reference_steps: str = "all"
    extra_baselines: tuple[str, ...] = ()  # further baselines in its space (P-diff: average...)
    beats_noise: bool = False  # the paper's finding 3: does it beat the noise baseline?
    #: ``wdb demo`` sizes: size → {zoo_size, zoo_runs, gen (overrides), n, n_baseline}
    plans: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    """The contract of a weight generator (register it under the entry-point group
    ``wdb.generators``, or pass its file: ``wdb generate ./my_generator.py``).

    - ``NAME`` (str): recorded as ``generator_runs.method``; ``KIND``: ``"generated"`` for a
      generator, ``"baseline"`` for a baseline (the study treats them differently).
    - ``default_config(size) -> dict | dataclass``: every option with its default for ``size``
      (``"small"`` or ``"default"``); ``--config FILE`` and ``--set key=value`` may only set these
      keys (types follow the defaults'). A dataclass instance gives a typed config: ``fit`` and
      ``sample`` then receive that dataclass with the resolved values.
    - ``fit(train, config, seed) -> model | Fitted | None``: ``train`` is a :class:`TrainingSet`
      (rows, ids, metrics, run configs, layout), loaded before fitting with no catalog connection
      left open. The model is a ``{name: tensor}`` dict, stored as the generator's own checkpoint
      (so ``--from RUN`` samples again without refitting); return :class:`Fitted` to record values.
    - ``sample(model, train, n, config, seed, load) -> list[Samples]``: ``n`` rows in the training
      space (or another layout, see :class:`Samples`); ``load(where)`` loads another selection
      (prompts). Values to record go in ``Samples.record``.
    - ``INFO`` (optional :class:`MethodInfo`): how the study shows and compares it.
    - ``reconstructor(model, layout, config) -> (rows -> rows)`` (optional, autoencoders): the
      symmetry experiment passes transformed training weights through it.
    - ``reference_set(train, samples) -> checkpoint ids`` (optional): the reference set its
      samples are compared against, recorded in ``reference_sets`` when the run finishes and
      used by default by ``wdb query novelty``, ``wdb analyze`` and the report. ``samples`` is
      what was written: dicts with ``checkpoint_id``, ``kind`` and ``info`` (its
      ``Samples.info`` entry). Without it, ``INFO.reference`` and ``INFO.reference_steps``
      decide (default: every training checkpoint the run was fitted on).
    - Lineage: a sample's ``Samples.info`` may name the checkpoint it came from under
      ``prompt_checkpoint``, ``source_checkpoint`` or ``parent_checkpoint``
      (``LINEAGE_KEYS``); novelty then flags (``own_lineage``) a sample whose nearest reference
      is that checkpoint.

    The config handed to ``fit``/``sample`` is read-only: results are returned, never written into
    it, so what is recorded is exactly what was asked plus what the method reported.
    """

    NAME: str
    KIND: str

    def default_config(self, size: str) -> Any: ...

    def fit(self, train: TrainingSet, config: Any, seed: int) -> Any: ...

    def sample(
        self,
        model: Any,
        train: TrainingSet,
        n: int,
        config: Any,
        seed: int,
        load: Callable[[str], TrainingSet],
    ) -> list[Samples]: ...


@dataclass
class GenerateReport:
    """What one generator run did."""

    generator_run_id: int
    method: str
    status: str
    wall_time_s: float
    n_train: int
    config: dict
    model_checkpoint_id: int | None = None
    runs: list[dict] = field(default_factory=list)  # run, run_id, checkpoint_id, kind, space

    def to_dict(self) -> dict:
        return {
            "generator_run_id": self.generator_run_id,
            "method": self.method,
            "status": self.status,
            "wall_time_s": self.wall_time_s,
            "n_train": self.n_train,
            "model_checkpoint_id": self.model_checkpoint_id,
            "config": self.config,
            "runs": self.runs,
        }


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (None: leave as is), then restore.

    Small generator networks do tiny ops: extra intra-op threads only add synchronisation, and on
    a busy machine that costs a lot (P-diff sampling: 13 s with 1 thread, 233 s with 2, measured
    on a loaded 2-core machine). Methods expose a ``threads`` config key (default 1).
    """
    import torch

    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def no_fit(train: TrainingSet, config: dict, seed: int) -> None:
    """``fit`` of methods without a network (the baselines)."""
    return None


def method_namespace(
    name: str,
    kind: str,
    default_config: Callable[[str], dict],
    sample: Callable[..., list[Samples]],
    fit: Callable[..., Any] = no_fit,
    doc: str = "",
) -> types.SimpleNamespace:
    """Bundle plain functions as a method object (for files holding several methods)."""
    return types.SimpleNamespace(
        NAME=name, KIND=kind, default_config=default_config, fit=fit, sample=sample, __doc__=doc
    )
