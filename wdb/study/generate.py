"""The generator framework: read a training set from the store, fit, sample, write samples back.

``generate(db, "pdiff", train="zoo = 'mnist-bn-s0' AND kind = 'training'")`` runs one *generator
run*:

1. resolve the config (method defaults for ``size`` → ``--config FILE`` → ``--set key=value``),
2. load the training rows, their metrics and run configs (:func:`load_training_set`); the catalog
   is closed again before anything long starts (every ``db.sql`` opens and closes its own
   connection),
3. insert the ``generator_runs`` row with status ``running`` (one short transaction),
4. ``fit`` and ``sample`` with **no catalog connection open**, so other processes can read and
   write the database while a generator trains,
5. write the generator's own network (run ``genmodel_<gid>``, kind ``model``) and every sample
   (each row its own run ``gen_<run id>``), then flip the status to ``done`` with the wall time and
   the config as finally resolved (methods may record derived values in it, e.g. the ``sigma_used``
   of the noise baseline).

Failure: any exception or ``KeyboardInterrupt`` during 4 or 5 deletes whatever rows of this
generator run were already committed, marks the run ``failed`` with the error, and re-raises. So
an interrupted run never shows ``done`` and never leaves a half set of samples. (A process killed
with SIGKILL between the sample commit and the status flip leaves ``running`` with its samples:
never ``done``; ``wdb fsck`` reclaims any bytes without rows.)

Lineage is plain SQL: ``runs.generator_run_id`` → ``generator_runs.id``, whose ``train_ids`` is a
JSON list of checkpoint ids, e.g.::

    SELECT r.name, g.method, t.train_id
    FROM runs r JOIN generator_runs g ON g.id = r.generator_run_id,
         unnest(CAST(json_extract(g.train_ids, '$') AS BIGINT[])) AS t(train_id)

A sample's run config inherits every key on which all training runs' configs agree (``task``, and
for P-diff the base model the BN parameters belong to), then the method's per-sample ``info``
(e.g. ``source_checkpoint``), plus ``generator`` and ``generator_run_id``: so ``wdb evaluate`` can
evaluate a sample exactly like its training checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys
import time
import tomllib
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from wdb.errors import BadInput, NotFound, WdbError

#: entry-point group of generators (see ``wdb.plugins``); the built-ins are registered there too.
GROUP = "wdb.generators"

#: Config keys the framework itself records (never method options).
FRAMEWORK_KEYS = ("seed", "from_run", "timings", "source")


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
    import wdb

    version = f"wdb {wdb.__version__}"
    try:
        root = Path(wdb.__file__).resolve().parent.parent
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


# -- loading -----------------------------------------------------------------------------------
def _metrics_for(db, ids: list[int]) -> dict[str, np.ndarray]:
    """Metric name → [N]; values computed by ``wdb evaluate`` beat source-reported ones."""
    if not ids:
        return {}
    rows = db.sql(
        "SELECT m.checkpoint_id, m.name, m.value, e.name AS eval_set FROM metrics m "
        "JOIN eval_sets e ON e.id = m.eval_set_id "
        "WHERE m.checkpoint_id IN (SELECT unnest(CAST(:ids AS BIGINT[])))",
        {"ids": ids},
    )
    pos = {cid: i for i, cid in enumerate(ids)}
    out: dict[str, np.ndarray] = {}
    rank: dict[tuple[str, int], int] = {}
    for r in sorted(rows, key=lambda r: r["eval_set"]):
        name, i = r["name"], pos[int(r["checkpoint_id"])]
        level = 0 if str(r["eval_set"]).startswith("reported:") else 1
        if r["value"] is None or rank.get((name, i), -1) > level:
            continue
        out.setdefault(name, np.full(len(ids), np.nan))[i] = float(r["value"])
        rank[(name, i)] = level
    return out


def _run_configs(db, run_ids: list[int]) -> dict[str, dict]:
    if not run_ids:
        return {}
    rows = db.sql(
        "SELECT name, config FROM runs WHERE id IN (SELECT unnest(CAST(:ids AS BIGINT[])))",
        {"ids": run_ids},
    )
    out = {}
    for r in rows:
        try:
            out[r["name"]] = json.loads(r["config"]) if r["config"] else {}
        except (TypeError, ValueError):
            out[r["name"]] = {}
    return out


def load_training_set(
    db, where: str | None, ids: list[int] | None = None, params: dict | None = None
) -> TrainingSet:
    """Load the checkpoints selected by a SQL filter over ``checkpoint_info`` (or exact ``ids``).

    Every query opens and closes its own catalog connection: nothing stays open afterwards.
    """
    if ids is not None:
        info = db.checkpoints(
            "checkpoint_id IN (SELECT unnest(CAST(:train_ids AS BIGINT[])))",
            {"train_ids": [int(i) for i in ids]},
        )
        found = {r["checkpoint_id"] for r in info}
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"training checkpoints no longer exist: {missing[:10]}")
    else:
        if not where or not where.strip():
            raise BadInput("--train: give a SQL filter over checkpoint_info selecting the set")
        try:
            info = db.checkpoints(where, params)
        except WdbError:
            raise
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInput(f"--train {where!r}: {msg}") from None
    if not info:
        raise BadInput(f"--train {where!r} selects no checkpoints")
    space_ids = sorted({int(r["space_id"]) for r in info})
    if len(space_ids) > 1:
        names = sorted({r["space"] for r in info})
        raise BadInput(
            f"--train {where!r} spans {len(space_ids)} weight spaces ({', '.join(names)}); "
            "select one (e.g. add AND space = '...')"
        )
    id_list = [int(r["checkpoint_id"]) for r in info]
    weights = np.asarray(db.weights(id_list), dtype=np.float32)
    return TrainingSet(
        ids=np.asarray(id_list, dtype=np.int64),
        weights=weights,
        space=db.space(space_ids[0]),
        info=info,
        metrics=_metrics_for(db, id_list),
        run_configs=_run_configs(db, sorted({int(r["run_id"]) for r in info})),
        selection=where or "",
    )


# -- writing -----------------------------------------------------------------------------------
def _common_config(train: TrainingSet) -> dict:
    """Config keys on which every training run agrees (task, base model, ...)."""
    configs = [train.run_configs.get(r["run"]) or {} for r in train.info]
    if not configs:
        return {}
    common = dict(configs[0])
    for c in configs[1:]:
        common = {k: v for k, v in common.items() if k in c and c[k] == v}
        if not common:
            break
    return common


def _common_zoo(train: TrainingSet) -> str | None:
    zoos = {r.get("zoo") for r in train.info}
    return zoos.pop() if len(zoos) == 1 else None


def _update_run(db, gid: int, **values: Any) -> None:
    import sqlalchemy as sa

    from wdb.catalog.schema import generator_runs

    with db.catalog.begin() as conn:
        conn.execute(sa.update(generator_runs).where(generator_runs.c.id == gid).values(**values))


def _discard_outputs(db, gid: int, error: str) -> None:
    """Delete every row this generator run wrote and mark it failed (one transaction)."""
    import sqlalchemy as sa

    from wdb.catalog.schema import checkpoints, generator_runs, metrics, runs

    with db.catalog.begin() as conn:
        run_ids = sa.select(runs.c.id).where(runs.c.generator_run_id == gid)
        ck_ids = sa.select(checkpoints.c.id).where(checkpoints.c.run_id.in_(run_ids))
        conn.execute(sa.delete(metrics).where(metrics.c.checkpoint_id.in_(ck_ids)))
        conn.execute(sa.delete(checkpoints).where(checkpoints.c.run_id.in_(run_ids)))
        conn.execute(sa.delete(runs).where(runs.c.generator_run_id == gid))
        conn.execute(
            sa.update(generator_runs)
            .where(generator_runs.c.id == gid)
            .values(
                status="failed",
                error=error[:2000],
                model_checkpoint_id=None,
                finished_at=sa.func.current_timestamp(),
            )
        )


def _store_model(db, gid: int, method: str, state: Mapping[str, Any]) -> int:
    """The generator's own network as one checkpoint in its own space (run ``genmodel_<gid>``)."""
    from wdb.store.spaces import Layout
    from wdb.store.tensors import state_to_numpy
    from wdb.store.write import NewCheckpoint

    arrays, dtypes = state_to_numpy(dict(state))
    layout = Layout.from_arrays(arrays, dtypes)
    space = db.ensure_space(layout, name=f"genmodel-{method}-{layout.hash[:8]}")
    item = NewCheckpoint(
        run=f"genmodel_{gid}",
        step=0,
        row=layout.flatten(arrays),
        kind="model",
        generator_run_id=gid,
        run_config={"generator": method, "generator_run_id": gid},
    )
    result = db.write_checkpoints(space, [item])
    return (result.added + result.existing)[0]


def _write_samples(
    db, gid: int, method: str, train: TrainingSet, blocks: list[Samples]
) -> list[dict]:
    from wdb.store.spaces import Layout
    from wdb.store.write import NewCheckpoint

    base_config = {**_common_config(train), "generator": method, "generator_run_id": gid}
    zoo = _common_zoo(train)
    written: list[dict] = []
    for block in blocks:
        space = train.space
        if isinstance(block.space, Layout):
            space = db.ensure_space(block.space)
        elif block.space is not None:
            space = block.space
        rows = np.asarray(block.rows)
        items = [
            NewCheckpoint(
                run="",
                step=0,
                row=rows[i].astype(space.layout.storage_dtype, copy=False),
                kind=block.kind,
                zoo=zoo,
                run_config={**base_config, **(block.info[i] if block.info else {})},
                generator_run_id=gid,
            )
            for i in range(len(rows))
        ]
        result = db.write_checkpoints(space, items)
        for it, cid in zip(items, result.added, strict=True):
            written.append(
                {"run": it.run, "checkpoint_id": cid, "kind": it.kind, "space": space.name}
            )
    return written


def _check_samples(blocks: Any, train: TrainingSet, method: str) -> list[Samples]:
    if isinstance(blocks, Samples):
        blocks = [blocks]
    if not isinstance(blocks, list | tuple) or not all(isinstance(b, Samples) for b in blocks):
        raise WdbError(f"{method}: sample() must return a list of Samples")
    from wdb.store.write import KINDS

    for b in blocks:
        b.rows = np.asarray(b.rows, dtype=np.float32)
        d = train.space.n_params if b.space is None else b.space.n_params
        if b.rows.ndim != 2 or b.rows.shape[1] != d:
            raise WdbError(f"{method}: samples have shape {list(b.rows.shape)}, expected [n, {d}]")
        if not np.isfinite(b.rows).all():
            raise WdbError(f"{method}: samples contain NaN or Inf (the generator diverged)")
        if b.kind not in KINDS:
            raise WdbError(f"{method}: sample kind '{b.kind}' is not one of {KINDS}")
        if b.info is not None and len(b.info) != len(b.rows):
            raise WdbError(f"{method}: {len(b.info)} info entries for {len(b.rows)} rows")
    return list(blocks)


def fit_method(method: Generator, train: TrainingSet, config: dict, seed: int) -> Any:
    """``method.fit`` through the contract: it sees a read-only view of ``config``; what it
    records (:class:`Fitted`) is merged into ``config``. Returns the model."""
    model = method.fit(train, config_view(method, config), seed)
    if isinstance(model, Fitted):
        config.update(model.record)
        model = model.model
    return model


def sample_method(
    method: Generator,
    model: Any,
    train: TrainingSet,
    n: int,
    config: dict,
    seed: int,
    load: Callable[[str], TrainingSet] | None = None,
) -> list[Samples]:
    """``method.sample`` through the contract: read-only config, samples checked (shape, finite,
    kind), their ``record`` merged into ``config``."""
    name = str(getattr(method, "NAME", "generator"))
    blocks = _check_samples(
        method.sample(model, train, n, config_view(method, config), seed, load), train, name
    )
    for block in blocks:
        config.update(block.record)
    return blocks


def _seed_everything(seed: int) -> None:
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


# -- the entry point ---------------------------------------------------------------------------
def generate(
    db,
    method: str,
    train: str | None = None,
    n: int | None = None,
    seed: int = 0,
    overrides: dict | None = None,
    config_file: str | Path | None = None,
    from_run: int | None = None,
) -> GenerateReport:
    """Fit ``method`` on the checkpoints ``train`` selects (or reuse ``from_run``'s network) and
    write ``n`` samples as runs; returns the report (generator run id, runs, wall time)."""
    t_start = time.perf_counter()
    mod = get_method(method)
    name = str(mod.NAME)  # a file's generator is recorded under its NAME, not its path
    state: dict | None = None
    model_id: int | None = None
    if from_run is not None:
        rec = db.sql("SELECT * FROM generator_runs WHERE id = :id", {"id": int(from_run)})
        if not rec:
            raise NotFound(f"generator run {from_run} not found (see `wdb ls generators`)")
        rec = rec[0]
        if rec["method"] != name:
            raise BadInput(f"generator run {from_run} is a '{rec['method']}' run, not '{name}'")
        if rec["status"] != "done":
            raise BadInput(f"generator run {from_run} is '{rec['status']}', not done")
        if train:
            raise BadInput("--from reuses the recorded training set; drop --train")
        config = resolve_config(mod, overrides, config_file, base=json.loads(rec["config"] or "{}"))
        train = rec["train_selection"]
        t_load = time.perf_counter()
        ts = load_training_set(db, train, ids=json.loads(rec["train_ids"]))
        ts.selection = train or ""
        model_id = rec["model_checkpoint_id"]
        if model_id is not None:
            state = dict(db.state_dict(int(model_id)))
        config["from_run"] = int(from_run)
    else:
        config = resolve_config(mod, overrides, config_file)
        t_load = time.perf_counter()
        ts = load_training_set(db, train)
    from wdb import plugins

    if plugins.is_path(method):  # recorded so later analyses can find its MethodInfo again
        config["source"] = str(Path(method).resolve())
    if n is not None:
        config["n"] = int(n)
    n_samples = int(config.get("n", 100))
    if n_samples < 1:
        raise BadInput(f"--n must be at least 1, not {n_samples}")
    config["seed"] = int(seed)
    timings = {"load_s": round(time.perf_counter() - t_load, 3)}

    import sqlalchemy as sa

    from wdb.catalog.schema import generator_runs

    with db.catalog.begin() as conn:
        gid = int(
            conn.execute(
                generator_runs.insert()
                .values(
                    method=name,
                    config=json.dumps(config, sort_keys=True, default=str),
                    status="running",
                    train_selection=ts.selection,
                    train_ids=json.dumps([int(i) for i in ts.ids]),
                    seed=int(seed),
                    code_version=code_version(),
                )
                .returning(generator_runs.c.id)
            ).scalar_one()
        )
    # -- long work: no catalog connection is open from here until the write below --------------
    try:
        work_config = copy.deepcopy(config)
        t0 = time.perf_counter()
        if state is None and from_run is None:
            _seed_everything(seed)
            state = fit_method(mod, ts, work_config, seed)
        timings["fit_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        _seed_everything(seed)
        blocks = sample_method(
            mod, state, ts, n_samples, work_config, seed, lambda where: load_training_set(db, where)
        )
        timings["sample_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        if state is not None and model_id is None:
            model_id = _store_model(db, gid, name, state)
        written = _write_samples(db, gid, name, ts, blocks)
        timings["write_s"] = round(time.perf_counter() - t0, 3)
        wall = round(time.perf_counter() - t_start, 3)
        work_config["timings"] = timings
        _update_run(
            db,
            gid,
            status="done",
            config=json.dumps(work_config, sort_keys=True, default=str),
            wall_time_s=wall,
            model_checkpoint_id=model_id,
            finished_at=sa.func.current_timestamp(),
        )
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        try:
            _discard_outputs(db, gid, error)
        except Exception as cleanup:  # noqa: BLE001 - report the original error, mention this
            print(f"warning: could not clean up generator run {gid}: {cleanup}", file=sys.stderr)
        raise
    return GenerateReport(
        generator_run_id=gid,
        method=name,
        status="done",
        wall_time_s=wall,
        n_train=len(ts),
        config=work_config,
        model_checkpoint_id=model_id,
        runs=written,
    )


def start_outside_run(
    db, method: str, trained_on: str | None, config: dict | None = None, source: str = ""
) -> int:
    """Record an outside generator's run (``wdb ingest --generator``): a ``generator_runs`` row
    with the training selection and its exact ids, status ``running`` until the samples are in."""
    from wdb.catalog.schema import generator_runs

    if not method or not method.replace("-", "").replace("_", "").isalnum():
        raise BadInput(f"--generator '{method}': use letters, digits, '-' and '_'")
    ids: list[int] = []
    if trained_on:
        try:
            ids = [int(r["checkpoint_id"]) for r in db.checkpoints(trained_on)]
        except WdbError:
            raise
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInput(f"--trained-on {trained_on!r}: {msg}") from None
        if not ids:
            raise BadInput(f"--trained-on {trained_on!r} selects no checkpoints")
    with db.catalog.begin() as conn:
        return int(
            conn.execute(
                generator_runs.insert()
                .values(
                    method=method,
                    config=json.dumps({"outside": True, **(config or {})}, sort_keys=True),
                    status="running",
                    train_selection=trained_on or "",
                    train_ids=json.dumps(ids),
                    code_version=f"outside generator, ingested from {source}"[:500],
                )
                .returning(generator_runs.c.id)
            ).scalar_one()
        )


def finish_outside_run(db, gid: int, added: int, error: BaseException | None = None) -> bool:
    """Close an outside run: ``done`` when samples were added; deleted when none were (a rerun
    of an ingested folder adds nothing); ``failed`` with the error otherwise. True if kept."""
    import sqlalchemy as sa

    from wdb.catalog.schema import generator_runs

    with db.catalog.begin() as conn:
        if not added:
            conn.execute(sa.delete(generator_runs).where(generator_runs.c.id == gid))
            return False
        values: dict[str, Any] = {"finished_at": sa.func.current_timestamp()}
        if error is None:
            values["status"] = "done"
        else:
            values.update(status="failed", error=f"{type(error).__name__}: {error}"[:2000])
        conn.execute(sa.update(generator_runs).where(generator_runs.c.id == gid).values(**values))
    return True


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
