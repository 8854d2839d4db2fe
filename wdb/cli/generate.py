"""``wdb generate METHOD``: fit a generator on a selection and write its samples as runs."""

from __future__ import annotations

import json

import click

from wdb.cli.common import PluginChoice, emit, get_db, output_options


@click.command()
@click.argument("method", type=PluginChoice("wdb.generators"))
@click.option(
    "--train",
    help="SQL filter over checkpoint_info selecting the training set, "
    "e.g. \"zoo = 'mnist-bn-s0' AND kind = 'training'\".",
)
@click.option("--n", "n", type=int, help="Number of samples (default: the method's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for fit and sampling.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key (repeatable); e.g. --set size=small --set sigma=0.06.",
)
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="JSON or TOML config file."
)
@click.option(
    "--from",
    "from_run",
    type=int,
    metavar="GENERATOR_RUN",
    help="Reuse this generator run's trained network and training set: sample only.",
)
@output_options
@click.pass_context
def generate(ctx, method, train, n, seed, sets, config_file, from_run, fmt) -> None:
    """Fit generator METHOD on the checkpoints --train selects and write each sample as its own
    run (gen_<id>), with lineage (generator_runs: method, config, exact training ids).

    METHOD is a registered generator (entry point group wdb.generators: the built-ins and any
    installed package's) or a .py file defining one; the contract is wdb.study.generate.Generator."""
    from wdb.study.generate import generate as run_generate
    from wdb.study.methods import parse_sets

    db = get_db(ctx)
    report = run_generate(
        db,
        method,
        train=train,
        n=n,
        seed=seed,
        overrides=parse_sets(sets),
        config_file=config_file,
        from_run=from_run,
    )
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=1, default=str))
        return
    if fmt == "table":
        kinds: dict[str, int] = {}
        for r in report.runs:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        made = ", ".join(f"{v} {k}" for k, v in kinds.items()) or "no runs"
        click.echo(
            f"generator run {report.generator_run_id} ({report.method}): {made} from "
            f"{report.n_train} training checkpoints in {report.wall_time_s:.1f} s"
            + (
                f"; model checkpoint {report.model_checkpoint_id}"
                if report.model_checkpoint_id
                else ""
            )
        )
    emit(report.runs, fmt, columns=["run", "checkpoint_id", "kind", "space"])
