"""Zoo and evaluation commands: ``wdb zoo train|list`` and ``wdb evaluate``."""

from __future__ import annotations

import click

from wdb.cli.common import (
    PluginChoice,
    emit,
    get_db,
    memory_option,
    output_options,
    workers_option,
)


@click.group()
def zoo() -> None:
    """Train model zoos locally (offline data, vectorised training)."""


@zoo.command("list")
@output_options
def list_tasks(fmt: str) -> None:
    """The tasks a zoo can be trained for, with their weight spaces."""
    from wdb.study.tasks import list_info

    emit(list_info(), fmt, title="tasks")


@zoo.command("train")
@click.argument("task")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Zoo folder to write.")
@click.option("--runs", type=int, default=None, help="Number of runs (checkpoints for mnist-bn).")
@click.option(
    "--size",
    type=click.Choice(["small", "default"]),
    default="default",
    show_default=True,
    help="small trains in seconds (tests); default is the study's CPU-scale zoo.",
)
@click.option("--seed", type=int, default=0, show_default=True)
def train(task: str, out: str, runs: int | None, size: str, seed: int) -> None:
    """Train the zoo of TASK into --out (state dicts + manifest.jsonl), ready for `wdb ingest`."""
    import json

    from wdb.study.tasks import get

    path = get(task).train_zoo(out, runs=runs, size=size, seed=seed)
    meta = json.loads((path / "zoo.json").read_text())
    click.echo(
        f"wrote {meta['checkpoints']} checkpoints of {task} to {path} in {meta['wall_time_s']:.1f}s"
    )
    click.echo(f"next: wdb ingest {path} && wdb evaluate --where \"zoo = '{path.name}'\"")


@click.command()
@click.option("--where", default=None, help="SQL filter over checkpoint_info.")
@click.option(
    "--task",
    default=None,
    type=PluginChoice("wdb.tasks"),
    help="Task to evaluate with: a registered task or a task .py file (default: the space's).",
)
@click.option("--force", is_flag=True, help="Re-evaluate checkpoints already evaluated.")
@click.option("--batch", type=int, default=256, show_default=True)
@memory_option
@workers_option("Compute the batches")
@output_options
@click.pass_context
def evaluate(ctx, where, task, force, batch, memory, workers, fmt) -> None:
    """Evaluate checkpoints on their task; store metrics and per-item outputs."""
    db = get_db(ctx)
    report = db.evaluate(
        where=where, task=task, force=force, batch=batch, workers=workers, memory=memory
    )
    emit(report.rows(), fmt, title=f"evaluated {report.evaluated}, skipped {report.skipped}")


@click.command()
@output_options
def plugins(fmt: str) -> None:
    """Every registered task, generator and ingest reader, and the distribution declaring it.

    Plugins are entry points of the groups wdb.tasks, wdb.generators and wdb.readers (wdb's own
    built-ins included); a .py file works too wherever a plugin is named (--task ./t.py, wdb
    generate ./g.py, --format ./r.py). A name two distributions register is listed twice, the
    loser marked "shadowed".
    """
    from wdb import plugins as registry

    rows = [row for group in registry.GROUPS for row in registry.describe(group)]
    emit(rows, fmt, columns=["group", "name", "target", "distribution"], title="plugins")
