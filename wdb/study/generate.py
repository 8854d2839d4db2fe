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
   of the noise baseline), after recording the reference set the method declares for its samples
   (``reference_sets``, ``wdb.study.reference``).

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

import copy
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wdb.errors import BadInput, NotFound, WdbError
from wdb.store.tensors import to_stored
from wdb.study.contract import Fitted, GenerateReport, Generator, Samples, TrainingSet
from wdb.study.methods import code_version, config_view, get_method, resolve_config


# -- loading -----------------------------------------------------------------------------------
def _one_space(info: list[dict], where: str) -> tuple[list[dict], str]:
    """A selection over several weight spaces (a zoo's training checkpoints plus, say, its base
    model): the one space that holds every ``training`` checkpoint selected, with the selection
    narrowed to it (so ``generator_runs.train_selection`` says exactly what was used); else one
    line per space with a selection ready to paste."""
    training = {r["space"] for r in info if r["kind"] == "training"}
    if len(training) == 1:
        (name,) = training
        narrowed = f"({where}) AND space = '{name}'"
        return [r for r in info if r["space"] == name], narrowed
    counts: dict[str, int] = {}
    for r in info:
        counts[r["space"]] = counts.get(r["space"], 0) + 1
    choices = "; ".join(
        f"{n} checkpoints: --train \"({where}) AND space = '{name}'\""
        for name, n in sorted(counts.items())
    )
    raise BadInput(f"--train {where!r} spans {len(counts)} weight spaces; pick one: {choices}")


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
            info = db.checkpoints(where, params, what="--train")
        except WdbError:
            raise
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInput(f"--train {where!r}: {msg}") from None
    if not info:
        raise BadInput(f"--train {where!r} selects no checkpoints")
    space_ids = sorted({int(r["space_id"]) for r in info})
    if len(space_ids) > 1:
        info, where = _one_space(info, where)
        space_ids = [int(info[0]["space_id"])]
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

    from wdb.catalog.schema import checkpoints, generator_runs, metrics, reference_sets, runs

    with db.catalog.begin() as conn:
        run_ids = sa.select(runs.c.id).where(runs.c.generator_run_id == gid)
        ck_ids = sa.select(checkpoints.c.id).where(checkpoints.c.run_id.in_(run_ids))
        conn.execute(sa.delete(metrics).where(metrics.c.checkpoint_id.in_(ck_ids)))
        conn.execute(sa.delete(checkpoints).where(checkpoints.c.run_id.in_(run_ids)))
        conn.execute(sa.delete(runs).where(runs.c.generator_run_id == gid))
        conn.execute(sa.delete(reference_sets).where(reference_sets.c.generator_run_id == gid))
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
                row=to_stored(rows[i], space.layout.storage_dtype, space.name, exact=False),
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


def _record_reference(
    db,
    gid: int,
    method: Any,
    train: TrainingSet,
    blocks: list[Samples],
    written: list[dict],
    config: dict,
) -> None:
    """Record the reference set the method declares for its samples (``wdb.study.reference``)
    in ``reference_sets``, and its description in the run's config (``reference``)."""
    from wdb.study import reference

    infos = [(b.info[i] if b.info else {}) for b in blocks for i in range(len(b.rows))]
    samples = [dict(w, info=i) for w, i in zip(written, infos, strict=True)]
    ids, described = reference.reference_ids(method, train, samples)
    reference.record(db, gid, ids)
    config["reference"] = described


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
        _record_reference(db, gid, mod, ts, blocks, written, work_config)
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
