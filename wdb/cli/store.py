"""Store commands: init, ingest, ls, show, sql, export, fsck, compact."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wdb.catalog.guard import READ_ONLY_HELP, db_error_line
from wdb.cli.common import PluginChoice, emit, get_db, memory_option, output_options
from wdb.errors import WdbError

LS_SQL = {
    "runs": (
        "SELECT run_id, run, zoo, kind, generator_run_id, checkpoints, first_step, last_step, "
        "tags, note FROM run_info {where} ORDER BY run_id"
    ),
    "checkpoints": (
        "SELECT checkpoint_id, run, step, kind, zoo, space, split, sha256 "
        "FROM checkpoint_info {where} ORDER BY checkpoint_id"
    ),
    "spaces": (
        "SELECT * FROM (SELECT s.id AS space_id, s.name AS space, s.n_params, s.dtype, "
        "count(c.id) AS checkpoints, s.hash FROM spaces s "
        "LEFT JOIN checkpoints c ON c.space_id = s.id "
        "GROUP BY s.id, s.name, s.n_params, s.dtype, s.hash) AS s {where} ORDER BY space_id"
    ),
    "generators": (
        "SELECT * FROM (SELECT g.id AS generator_run_id, g.method, g.status, g.seed, "
        "g.wall_time_s, g.train_selection, "
        "(SELECT count(*) FROM runs r WHERE r.generator_run_id = g.id) AS runs, "
        "g.model_checkpoint_id, g.created_at FROM generator_runs g) AS g {where} "
        "ORDER BY generator_run_id"
    ),
    "eval-sets": (
        "SELECT * FROM (SELECT e.id AS eval_set_id, e.name, e.task, e.split, e.n_items, "
        "(SELECT count(DISTINCT m.checkpoint_id) FROM metrics m WHERE m.eval_set_id = e.id) "
        "AS with_metrics, "
        "(SELECT count(DISTINCT p.checkpoint_id) FROM predictions p WHERE p.eval_set_id = e.id) "
        "AS with_outputs, e.labels_sha256, e.task_source FROM eval_sets e) AS e {where} "
        "ORDER BY eval_set_id"
    ),
}


@click.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create (or upgrade) the database directory."""
    db = get_db(ctx, create=True)
    click.echo(f"wdb database at {db.path} (schema {db.catalog.current_revision()})")


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=True, dir_okay=True))
@click.option("--zoo", help="Collection name for the runs (default: the folder's name).")
@click.option(
    "--kind",
    type=click.Choice(["training", "generated", "baseline", "reconstructed", "model"]),
    help="Kind of the runs when the source does not say (default: training).",
)
@click.option(
    "--format",
    "fmt_name",
    type=PluginChoice("wdb.readers"),
    help="Reader to use (a registered format or a reader .py file); detected when omitted.",
)
@click.option(
    "--space", help="Space name to use or create; for flat .npy rows, a space or layout JSON."
)
@click.option("--strict", is_flag=True, help="Fail on the first bad file and commit nothing.")
@click.option(
    "--generator",
    metavar="NAME",
    help="The checkpoints are this (outside) generator's samples: record a generator run with "
    "lineage (kind defaults to generated).",
)
@click.option(
    "--trained-on",
    metavar="SQL",
    help="With --generator: SQL filter over checkpoint_info selecting its training set, "
    "e.g. \"zoo = 'digits' AND kind = 'training'\".",
)
@click.option(
    "--generator-config",
    type=click.Path(exists=True, dir_okay=False),
    help="With --generator: JSON or TOML file of the generator's settings, recorded as its config.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (file → run, step, space, layout, reader, why) and write nothing.",
)
@click.option(
    "--allow-outside",
    is_flag=True,
    help="Let a manifest name files outside the folder (refused by default, symlinks resolved).",
)
@click.option(
    "--base",
    metavar="RUN[:STEP]",
    help="The stored checkpoint every new one was fine-tuned from (its lineage parent, "
    "reason 'declared', and its delta parent in big spaces).",
)
@output_options
@click.pass_context
def ingest(
    ctx,
    path,
    zoo,
    kind,
    fmt_name,
    space,
    strict,
    generator,
    trained_on,
    generator_config,
    dry_run,
    allow_outside,
    base,
    fmt,
) -> None:
    """Ingest a folder of checkpoints (state dicts, Model Zoo runs, flat .npy rows, P-diff).

    Idempotent: files already stored (same run, step and content) are not added again. Bad files
    (corrupt, truncated, unsafe pickle, NaN/Inf, wrong shape) are reported one line each and
    skipped; the exit code is 3 when anything was skipped, 0 when every file was understood.
    Files recognised but not stored (a format wdb does not read, a package not installed) and
    files with the same bytes as another are one line each ("not stored"), not errors.
    Understood as researchers have them: sharded Hugging Face checkpoints (one checkpoint per
    *.index.json), Trainer folders (checkpoint-<step>/, optimizer/scheduler/RNG files counted as
    companions, not errors), Lightning .ckpt, bundles with metadata, mixed architectures (one space
    each); see the README's format table.
    """
    from wdb.study.methods import read_config_file

    config = read_config_file(generator_config) if generator_config else None
    if config is not None and not generator:
        raise click.UsageError("--generator-config needs --generator NAME")
    if dry_run:
        from wdb.errors import NotFound
        from wdb.ingest.plan import plan

        try:
            db = get_db(ctx)
        except NotFound:
            db = None  # no database yet: every space is new
        rows = plan(db, Path(path), zoo, kind, fmt_name, space, allow_outside)
        emit(rows, fmt, title=f"ingest {path} --dry-run (nothing written)")
        return
    from wdb.ingest.pipeline import ingest as run_ingest

    db = get_db(ctx, create=True)
    report = run_ingest(
        db,
        Path(path),
        zoo=zoo,
        kind=kind,
        format=fmt_name,
        strict=strict,
        space=space,
        generator=generator,
        trained_on=trained_on,
        generator_config=config,
        allow_outside=allow_outside,
        base=base,
    )
    print_problems(
        [f"skipped {source}: {reason}" for source, reason in report.skipped]
        + [f"not stored {source}: {reason}" for source, reason in report.not_stored]
        + [
            f"not stored {source}: same bytes as {other}; not stored again"
            for source, other in report.duplicates
        ],
        fmt,
    )
    emit(
        [
            {
                "format": report.format,
                "runs_added": report.runs_added,
                "checkpoints_added": report.checkpoints_added,
                "already_stored": report.checkpoints_existing,
                "skipped": len(report.skipped),
                "companion_files_not_stored": len(report.companions),
                "not_stored": len(report.not_stored),
                "same_bytes_not_stored_again": len(report.duplicates),
                "spaces": ", ".join(report.spaces),
                "bytes_written": report.bytes_written,
                **(
                    {"generator_run": report.generator_run_id}
                    if report.generator_run_id is not None
                    else {}
                ),
                **(
                    {"problems": [{"file": f, "problem": p} for f, p in report.skipped]}
                    if fmt == "json"
                    else {}
                ),
            }
        ],
        fmt,
        title=f"ingest {path}",
    )
    if report.skipped:
        sys.exit(3)


#: skipped files printed one line each; past this many, one line counts the rest
SHOW_PROBLEMS = 20


def print_problems(lines: list[str], fmt: str) -> None:
    """One line per file skipped or not stored, up to :data:`SHOW_PROBLEMS`, then one line with
    the count of the rest (a folder of a million broken rows gives 21 lines, not a million)."""
    for line in lines[:SHOW_PROBLEMS]:
        click.echo(line, err=True)
    rest = len(lines) - SHOW_PROBLEMS
    if rest > 0:
        where = "the JSON output lists them all" if fmt == "json" else "--json lists them all"
        click.echo(f"... and {rest:,} more problem{'s' * (rest != 1)}; {where}", err=True)


@click.command("ingest-outputs")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--eval-set",
    required=True,
    help="Name of the eval set the outputs belong to (created on first use), e.g. digits:test.",
)
@click.option(
    "--task",
    type=PluginChoice("wdb.tasks"),
    help="Task the eval set belongs to (a registered task or a .py file); optional.",
)
@click.option("--split", default="test", show_default=True, help="Data split of the eval set.")
@output_options
@click.pass_context
def ingest_outputs(ctx, file, eval_set, task, split, fmt) -> None:
    """Store evaluations computed outside wdb: metrics, error sets or predictions per checkpoint.

    FILE is .npz (named arrays), .npy (a structured array) or .csv. Rows are keyed by a
    checkpoint_id column, or run (+ step); 'errors' [N, T] (0/1) or 'predictions' [N, T] (with
    'labels' [T]) become the eval set's outputs, so error-set IoU works on them; every other [N]
    numeric column (accuracy, loss, ...) is a metric. Checked in full before anything is written.
    """
    from wdb.ingest.outputs import ingest_outputs as run_ingest

    db = get_db(ctx)
    res = run_ingest(db, file, eval_set, task=task, split=split)
    emit([res], fmt, title=f"ingest-outputs {file}")


@click.command()
@click.argument("what", type=click.Choice(list(LS_SQL)), default="runs")
@click.option("--where", help="SQL filter over the listed columns, e.g. \"kind = 'training'\".")
@click.option("--limit", type=int, default=None, help="Show at most this many rows.")
@output_options
@click.pass_context
def ls(ctx, what, where, limit, fmt) -> None:
    """List runs (with their tags and note), checkpoints, spaces, generator runs or eval sets."""
    db = get_db(ctx)
    where = db.selection(where, "--where")
    sql = LS_SQL[what].format(where=f"WHERE ({where})" if where else "")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    emit(db.sql(sql, what=f"--where {where.strip()!r}" if where else "SQL"), fmt, title=what)


@click.command()
@click.argument("run")
@output_options
@click.pass_context
def show(ctx, run, fmt) -> None:
    """Show one run: its checkpoints with their metrics (one column per metric)."""
    db = get_db(ctx)
    info = db.run(run)
    rows = db.checkpoint_table("run = :run", {"run": run})
    if fmt == "table":
        click.echo(
            f"run {info['run']} (id {info['run_id']}): kind={info['kind']} zoo={info['zoo']} "
            f"checkpoints={info['checkpoints']} generator_run={info['generator_run_id']}"
        )
        if info["config"]:
            click.echo(f"config: {info['config']}")
        extra = db.sql("SELECT tags, note FROM run_info WHERE run_id = :i", {"i": info["run_id"]})
        for key in ("tags", "note"):
            if extra and extra[0][key]:
                click.echo(f"{key}: {extra[0][key]}")
    emit(rows, fmt, title=f"checkpoints of {run}")


@click.command(epilog=READ_ONLY_HELP)
@click.argument("query")
@click.option(
    "--write",
    is_flag=True,
    help="Allow statements that change the catalog (one write transaction).",
)
@output_options
@click.pass_context
def sql(ctx, query, write, fmt) -> None:
    """Run SQL on the catalog: one statement that reads, unless --write.

    Tables: spaces, runs, checkpoints, metrics, eval_sets, predictions, generator_runs,
    relations, neighbors, similarity, run_tags, reference_sets; views checkpoint_info,
    run_info, reference_info.

    \b
    Example:
      wdb sql "SELECT run, count(*) AS n FROM checkpoint_info GROUP BY run"
    """
    db = get_db(ctx)
    try:
        rows = db.sql(query, write=write)
    except WdbError:
        raise
    except Exception as exc:  # SQL errors from the engine: one line, not a traceback
        raise WdbError(f"SQL failed: {db_error_line(exc)}") from None
    emit(rows, fmt)


@click.command()
@click.argument("run")
@click.option("--step", type=int, default=None, help="Step to export (default: the run's last).")
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["safetensors", "pt"]),
    default="safetensors",
    show_default=True,
)
@click.option(
    "--out",
    type=click.Path(),
    help="Output file for the state dict (a folder with --max-shard-size).",
)
@click.option(
    "--max-shard-size",
    metavar="SIZE",
    help="Write a Hugging Face sharded set (shards + .index.json) into the --out folder, each "
    "shard at most SIZE (bytes or e.g. 50MB).",
)
@click.option(
    "--mesh",
    type=click.Path(dir_okay=False),
    help="Neural fields: write the decoded mesh (.ply/.obj/.stl).",
)
@memory_option
@output_options
@click.pass_context
def export(ctx, run, step, file_format, out, max_shard_size, mesh, memory, fmt) -> None:
    """Export a checkpoint as a state dict file (bit-exact) or, for neural fields, a mesh."""
    from wdb.errors import BadInput
    from wdb.store.export import export_checkpoint
    from wdb.study.tasks.shapes import export_mesh

    if not out and not mesh:
        raise BadInput("give --out FILE (state dict) and/or --mesh FILE (neural-field mesh)")
    db = get_db(ctx)
    rows = []
    if out:
        size = (
            int(max_shard_size) if max_shard_size and max_shard_size.isdigit() else max_shard_size
        )
        rows.append(export_checkpoint(db, run, step, file_format, out, size, memory=memory))
    if mesh:
        rows.append(export_mesh(db, run, step, mesh))
    emit(rows, fmt, title="exported")


@click.command()
@click.option(
    "--fix",
    is_flag=True,
    help="Reclaim unreferenced rows and repair what is safe: a damaged checkpoint is restored "
    "from its source file when that file is still there and hashes to the stored sha256, "
    "otherwise marked damaged (checkpoint_info.damaged).",
)
@output_options
@click.pass_context
def fsck(ctx, fix, fmt) -> None:
    """Check the store: content hashes, rows without bytes, orphaned bytes."""
    db = get_db(ctx)
    report = db.fsck(fix=fix)
    for line in report.problems:
        click.echo(f"problem: {line}", err=True)
    for line in report.fixed:
        click.echo(f"fixed: {line}", err=True)
    for line in report.notes:
        click.echo(f"note: {line}", err=True)
    emit(
        [
            {
                "checked": report.checked,
                "problems": len(report.problems),
                "unreferenced_rows": sum(report.unreferenced.values()),
                "fixed": len(report.fixed),
            }
        ],
        fmt,
        title="fsck",
    )
    if not report.ok:
        sys.exit(1)


@click.command()
@click.option(
    "--dry-run", is_flag=True, help="List the arrays that would be re-encoded; change nothing."
)
@output_options
@click.pass_context
def compact(ctx, dry_run, fmt) -> None:
    """Re-encode arrays written with an older codec into the store's codec now.

    Old databases read fine without this (each array records its own codec); compacting saves
    bytes. Every array is copied, compared bit for bit with its source, and only then swapped
    in; an interrupted run is finished (or its copy removed) by the next one. Writers wait on
    the write lock meanwhile. Run `wdb fsck` afterwards to check every hash again.
    """
    db = get_db(ctx)
    report = db.compact(dry_run=dry_run)
    for line in report.recovered:
        click.echo(f"recovered: {line}", err=True)
    rows = [
        {
            "array": a["array"],
            "rows": a["rows"],
            "codec_before": a["codec_before"],
            "bytes_before": a["bytes_before"],
            "bytes_after": a["bytes_after"],
            "ratio": None
            if a["bytes_after"] is None
            else round(a["bytes_after"] / max(1, a["bytes_before"]), 3),
        }
        for a in report.arrays
    ]
    emit(rows, fmt, title="compact (dry run)" if dry_run else "compact")
    if not rows:
        click.echo("every array already uses the current codec", err=True)
    elif not dry_run:
        click.echo(
            f"{len(rows)} arrays re-encoded: {report.bytes_before / 1e6:.1f} MB -> "
            f"{report.bytes_after / 1e6:.1f} MB",
            err=True,
        )
