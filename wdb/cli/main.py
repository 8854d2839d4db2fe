"""The ``wdb`` command line: a thin layer over the library.

Each command parses its arguments, calls one library function, and formats the result. Commands
live in small modules loaded only when invoked (``COMMANDS``), so ``wdb ls`` never imports torch
or FAISS and ``wdb query nearest`` starts fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from wdb.errors import WdbError

#: command name → "module:attribute"; a module that does not exist (yet) hides its command.
COMMANDS: dict[str, str] = {
    "init": "wdb.cli.store:init",
    "ingest": "wdb.cli.store:ingest",
    "ingest-outputs": "wdb.cli.store:ingest_outputs",
    "ls": "wdb.cli.store:ls",
    "show": "wdb.cli.store:show",
    "sql": "wdb.cli.store:sql",
    "shell": "wdb.cli.shell:shell",
    "export-tables": "wdb.cli.shell:export_tables",
    "export": "wdb.cli.store:export",
    "fsck": "wdb.cli.store:fsck",
    "compact": "wdb.cli.store:compact",
    "rm": "wdb.cli.manage:rm",
    "tag": "wdb.cli.manage:tag",
    "note": "wdb.cli.manage:note",
    "zoo": "wdb.cli.zoo:zoo",
    "evaluate": "wdb.cli.zoo:evaluate",
    "plugins": "wdb.cli.zoo:plugins",
    "index": "wdb.cli.query:index",
    "query": "wdb.cli.query:query",
    "generate": "wdb.cli.generate:generate",
    "analyze": "wdb.cli.analyze:analyze",
    "experiment": "wdb.cli.analyze:experiment",
    "reproduce": "wdb.cli.analyze:reproduce",
    "demo": "wdb.cli.analyze:demo",
}


#: one example per command, shown at the end of its ``--help`` (the commands' own docstrings
#: say what they do; these say how it looks at a prompt).
EXAMPLES: dict[str, str] = {
    "init": "wdb --db runs/.wdb init",
    "ingest": "wdb ingest zoo/ --zoo mnist   |   wdb ingest ckpts/ --format ./my_reader.py",
    "ingest-outputs": "wdb ingest-outputs preds.npz --eval-set digits-mlp:test",
    "ls": "wdb ls runs --where \"kind = 'training'\" --json",
    "show": "wdb show mnist-mlp-small-s0-0007",
    "sql": 'wdb sql "SELECT kind, count(*) FROM checkpoint_info GROUP BY kind" --csv',
    "shell": "echo 'SELECT count(*) FROM runs;' | wdb shell",
    "export-tables": "wdb export-tables study-tables/",
    "export": "wdb export mnist-mlp-small-s0-0007 --step 93 --format safetensors --out w.safetensors",
    "fsck": "wdb fsck --fix",
    "compact": "wdb compact --dry-run",
    "zoo": "wdb zoo train mnist-mlp --out zoo/ --size small",
    "evaluate": "wdb evaluate --where \"kind = 'generated'\"",
    "plugins": "wdb plugins --json",
    "index": "wdb index build",
    "query": "wdb query nearest --run mnist-mlp-small-s0-0007 -k 5",
    "generate": "wdb generate noise --train \"kind = 'training'\" --set sigma=0.05",
    "analyze": "wdb analyze memorization --method pdiff",
    "experiment": "wdb experiment symmetry -m hyperrep",
    "reproduce": "wdb reproduce pdiff",
    "demo": "wdb --db demo-out/db demo",
    "rm": "wdb rm runs --where \"zoo = 'scratch'\"   (a dry run; add --yes to remove)",
    "tag": "wdb tag mnist-mlp-small-s0-0007 best=yes lr=0.01",
    "note": 'wdb note mnist-mlp-small-s0-0007 "the one with the odd loss curve"',
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [
            name
            for name, target in COMMANDS.items()
            if importlib.util.find_spec(target.split(":")[0]) is not None
        ]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        if importlib.util.find_spec(module) is None:
            return None
        command = getattr(importlib.import_module(module), attr)
        example = f"Example: {EXAMPLES[name]}" if name in EXAMPLES else ""
        if example and example not in (command.epilog or ""):
            command.epilog = f"{command.epilog}\n\n{example}" if command.epilog else example
        return command

    def invoke(self, ctx: click.Context):
        """Run the command; what stops it ends in one line, never a traceback: a ``WdbError``
        (its own exit code), Ctrl-C (130; an ingest says how to resume), a full disk or a
        denied permission (1)."""
        try:
            return super().invoke(ctx)
        except WdbError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            click.echo(str(exc) or "interrupted (Ctrl-C)", err=True)
            sys.exit(130)
        except OSError as exc:
            from wdb.ingest.stops import DENIED, DISK_FULL

            if exc.errno not in DISK_FULL | DENIED:
                raise
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            sys.exit(1)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "db_path",
    envvar="WDB_DB",
    default=".wdb",
    show_default=True,
    help="Database directory (also WDB_DB). Created on first use.",
)
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    envvar="WDB_LOCK_WAIT",
    default=60,
    show_default=True,
    help="Seconds a writer waits for another process's lock on the database (also "
    "WDB_LOCK_WAIT), saying whose; then it fails in one line.",
)
@click.option(
    "--store",
    "store_url",
    envvar="WDB_STORE_URL",
    metavar="URL",
    help="Keep the weight and output stores at this fsspec URL (e.g. s3://bucket/prefix; also "
    "WDB_STORE_URL) instead of inside --db.",
)
@click.version_option(package_name="wdb")
@click.pass_context
def cli(ctx: click.Context, db_path: str, wait_s: float, store_url: str | None) -> None:
    """wdb: a database for neural-network checkpoints.

    Weights live in chunked Zarr arrays, everything else in a SQL catalog you can open with
    `duckdb DB/catalog.duckdb`. Start with `wdb ingest FOLDER`, then `wdb ls runs`.
    """
    import os

    os.environ["WDB_LOCK_WAIT"] = f"{wait_s:g}"  # read by wdb.catalog.connect.lock_wait_s
    if store_url:
        os.environ["WDB_STORE_URL"] = store_url  # read by wdb.db.Database
    ctx.obj = {"db_path": db_path}
