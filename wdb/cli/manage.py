"""Housekeeping commands: rm, tag, note."""

from __future__ import annotations

import click

from wdb.cli.common import emit, get_db, output_options
from wdb.errors import BadInput


@click.command()
@click.argument("what", type=click.Choice(["runs", "checkpoints"]), default="runs")
@click.option(
    "--where",
    required=True,
    help="SQL filter over run_info (runs: run, zoo, kind, tags, note, ...) or checkpoint_info "
    "(checkpoints: run, step, kind, space, ...).",
)
@click.option("--yes", is_flag=True, help="Remove them (without it: only list what would go).")
@output_options
@click.pass_context
def rm(ctx, what, where, yes, fmt) -> None:
    """Remove runs or checkpoints, with their metrics, outputs, neighbours and tags.

    Without --yes nothing changes: the runs that would go are listed, with a count of every
    row. With --yes they are removed in one catalog transaction, then the bytes no catalog row
    points to any more are reclaimed (a run goes when it is selected or all its checkpoints are).

    \b
    Examples:
      wdb rm --where "zoo = 'scratch'"                 # what would go
      wdb rm --where "zoo = 'scratch'" --yes
      wdb rm checkpoints --where "run = 'r1' AND step < 100" --yes
    """
    db = get_db(ctx)
    report = db.rm(where, what=what, yes=yes)
    n_ck = len(report.checkpoints)
    rows = [
        {
            "run": r["run"],
            "kind": r["kind"],
            "zoo": r["zoo"],
            "checkpoints": sum(1 for c in report.checkpoints if c["run_id"] == r["run_id"]),
        }
        for r in report.runs
    ]
    if what == "checkpoints":
        rows = [
            {k: c[k] for k in ("checkpoint_id", "run", "step", "kind")} for c in report.checkpoints
        ]
    verb = "would remove" if report.dry_run else "removed"
    emit(rows, fmt, title=f"{verb}: {len(report.runs)} runs, {n_ck} checkpoints")
    counts = ", ".join(f"{v} {k}" for k, v in report.rows.items() if v)
    click.echo(
        f"{verb} {len(report.runs)} runs, {n_ck} checkpoints"
        + (f"; rows: {counts}" if counts else ""),
        err=True,
    )
    if report.dry_run:
        if n_ck or report.runs:
            click.echo("nothing changed: add --yes to remove them", err=True)
    elif report.reclaimed is not None:
        rec = report.reclaimed
        click.echo(f"reclaimed {rec.rows} stored rows, {rec.bytes_freed / 1e6:.2f} MB", err=True)


def _pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, eq, value = p.partition("=")
        if not eq or not key:
            raise BadInput(f"tag '{p}': write key=value")
        out[key] = value
    return out


@click.command()
@click.argument("run")
@click.argument("pairs", nargs=-1, metavar="KEY=VALUE...")
@click.option("--remove", "remove", multiple=True, metavar="KEY", help="Remove this tag.")
@output_options
@click.pass_context
def tag(ctx, run, pairs, remove, fmt) -> None:
    """Tag a run with KEY=VALUE pairs (a key's new value replaces its old one); with none,
    show its tags. Tags are rows of run_tags(run_id, key, value), shown by `wdb ls runs`.

    \b
    Examples:
      wdb tag mnist-mlp-small-s0-0007 best=yes reviewer=ana
      wdb sql "SELECT r.name, t.value FROM run_tags t JOIN runs r ON r.id = t.run_id WHERE t.key = 'best'"
    """
    db = get_db(ctx)
    tags = db.tags(run)
    if remove:
        tags = db.untag(run, *remove)
    if pairs:
        tags = db.tag(run, _pairs(pairs))
    emit([{"key": k, "value": v} for k, v in tags.items()], fmt, title=f"tags of {run}")


@click.command()
@click.argument("run")
@click.argument("text", required=False)
@click.option("--clear", is_flag=True, help="Remove the note.")
@click.pass_context
def note(ctx, run, text, clear) -> None:
    """Set a run's note (runs.note, shown by `wdb ls runs`); with no TEXT, print it.

    \b
    Example:
      wdb note mnist-mlp-small-s0-0007 "diverged after step 60; kept as a bad example"
    """
    db = get_db(ctx)
    if clear or text is not None:
        db.note(run, None if clear else text)
    if not clear and text is None:
        got = db.sql("SELECT note FROM runs WHERE name = :n", {"n": run})
        if not got:
            db.run(run)  # the one-line NotFound
        click.echo(got[0]["note"] or "")
