"""``wdb index build|status`` and ``wdb query nearest|novelty|relations``: thin wrappers over
``wdb.query.index`` and ``wdb.query.nearest``. Imports stay inside the commands so ``wdb query nearest`` starts
fast (no torch; FAISS only when the index is used)."""

from __future__ import annotations

import click

from wdb.cli.common import emit, get_db, memory_option, output_options, workers_option


@click.group()
def index() -> None:
    """FAISS indexes of the weight spaces (built on demand by queries; build them ahead here)."""


@index.command("build")
@click.option("--space", default=None, help="Space id or name (default: every space).")
@click.option(
    "--approx",
    type=click.Choice(["ivf"]),
    default=None,
    help="Approximate IVF index for spaces too large for flat search; candidates are still "
    "re-ranked exactly, and the measured recall@10 is printed.",
)
@click.option("--nlist", type=int, default=None, help="IVF lists (default 4·sqrt(n)).")
@click.option(
    "--nprobe", type=int, default=None, help="IVF lists probed per query (default nlist/8)."
)
@click.option("--rebuild", is_flag=True, help="Rebuild from scratch even when fresh.")
@output_options
def build_cmd(space, approx, nlist, nprobe, rebuild, fmt) -> None:
    """Build or update indexes: new checkpoints are added incrementally, changed rows rebuild."""
    from wdb.query.index import build

    rows = build(get_db(), space, approx=approx, rebuild=rebuild, nlist=nlist, nprobe=nprobe)
    emit(rows, fmt, title="indexes")


@index.command("status")
@click.option("--space", default=None, help="Space id or name (default: every space).")
@output_options
def status_cmd(space, fmt) -> None:
    """Per space: fresh | stale (new checkpoints) | changed (rows rewritten) | missing."""
    from wdb.query.index import status

    emit(status(get_db(), space), fmt, title="indexes")


def _skip_option(what: str):
    return click.option(
        "--skip-damaged",
        is_flag=True,
        help=f"Go on without {what} whose stored bytes are damaged (or that `wdb fsck --fix` "
        "marked damaged) and say how many were skipped. Works on exact scans (reference sets up "
        "to 256 rows, --aligned) and with an index built before the damage; building a FAISS "
        "index reads every row of the space and still fails on a damaged one.",
    )


def _said_skipped(n: int) -> None:
    if n:
        click.echo(f"skipped {n} damaged checkpoints (see `wdb fsck`)", err=True)


@click.group()
def query() -> None:
    """Nearest neighbours and novelty (min L2, max error-set IoU) of checkpoints."""


@query.command("nearest")
@click.option("--run", required=True, help="Run of the query checkpoint.")
@click.option("--step", type=int, default=None, help="Step (default: the run's last).")
@click.option("-k", "--k", "k", type=int, default=3, show_default=True, help="Neighbours to list.")
@click.option(
    "--among",
    default=None,
    help="Reference set as a SQL filter over checkpoint_info (run, step, kind, zoo, split, ...); "
    "default kind = 'training'. Always the query's space, never the query itself.",
)
@click.option(
    "--aligned",
    is_flag=True,
    help="Permutation-aligned L2 (one-hidden-layer MLPs; Hungarian matching of hidden neurons). "
    "Exact over the WHOLE reference set, not a candidate set: every reference gets a cheap lower "
    "bound (each neuron matched to its closest), references are solved in lower-bound order, and "
    "the search stops once the next bound exceeds the k-th exact distance.",
)
@click.option("--eval-set", default=None, help="Eval set for error_iou (default: best covered).")
@_skip_option("reference checkpoints (never the query itself)")
@memory_option
@output_options
def nearest_cmd(run, step, k, among, aligned, eval_set, skip_damaged, memory, fmt) -> None:
    """The k nearest checkpoints of RUN in weight space, with exact L2 distances.

    Two paths, named in the `path` column: `scan` reads the references in batches sized in
    bytes within --memory (rows wider than the budget a column block at a time) and sums
    squared differences exactly in float64; it is used for up to 256 references and whenever a
    flat FAISS index of the space (rows x parameters x 4 bytes) would exceed the budget.
    `index`: FAISS proposes candidates; distances are recomputed in float64 from the stored
    rows and the candidate set grows until the float32 error bound proves the exact top-k is
    inside it. Both are exact. Columns: rank, run, step, checkpoint_id, kind, distance, the
    neighbour's metrics, error_iou (IoU of the two error sets where both have predictions on
    one eval set) and path.
    """
    from wdb.query.nearest import nearest

    kw = dict(k=k, aligned=aligned, eval_set=eval_set, memory=memory)
    if skip_damaged:
        from wdb.query import damaged

        rows, n = damaged.nearest(get_db(), run, step=step, among=among, **kw)
        _said_skipped(n)
    else:
        rows = nearest(get_db(), run, step=step, among=among, **kw)
    what = "aligned L2" if aligned else "L2"
    emit(
        rows,
        fmt,
        title=f"nearest to {run}" + (f" step {step}" if step is not None else "") + f" ({what})",
    )


@query.command("novelty")
@click.option(
    "--targets", required=True, help="Target checkpoints: SQL filter over checkpoint_info."
)
@click.option(
    "--reference",
    default=None,
    help="Reference set: SQL filter over checkpoint_info, taken in each target's space, the "
    "target itself excluded. Default: for a generator run's samples the reference set the run "
    "recorded (reference_info), else kind = 'training'.",
)
@click.option(
    "-k", "--k", "k", type=int, default=1, show_default=True, help="Neighbours stored per target."
)
@click.option("--aligned", is_flag=True, help="Min distance by permutation-aligned L2 (exact).")
@click.option("--eval-set", default=None, help="Eval set for error sets (default: best covered).")
@click.option("--no-save", is_flag=True, help="Do not store the result in relations/similarity.")
@workers_option("Run the neighbour search")
@_skip_option("targets and references")
@memory_option
@output_options
def novelty_cmd(
    targets, reference, k, aligned, eval_set, no_save, workers, skip_damaged, memory, fmt
) -> None:
    """Per target: min L2 to the reference set, nearest reference, max error-set IoU, accuracy.

    The search path (column `path`) is chosen as for `wdb query nearest`: the byte-bounded
    scan reads each reference once for all targets (with --workers, each worker scans a share
    of the references within its share of --memory and the top-k lists merge exactly).

    Stored as tables (relations, neighbors, similarity; join on relation_id / checkpoint_id);
    `wdb query relations` says which stored results are stale. Column own_lineage: the nearest
    reference is the target's own prompt, source or parent (or derived from it), so its
    distance measures provenance, not memorization.
    """
    from wdb.query.nearest import novelty

    kw = dict(
        k=k, aligned=aligned, eval_set=eval_set, save=not no_save, workers=workers, memory=memory
    )
    if skip_damaged:
        from wdb.query import damaged

        rows, n = damaged.novelty(get_db(), targets, reference, **kw)
        _said_skipped(n)
    else:
        rows = novelty(get_db(), targets, reference, **kw)
    emit(rows, fmt, title="novelty")
    own = sum(1 for r in rows if r.get("own_lineage"))
    if own:
        click.echo(
            f"note: {own} of {len(rows)} targets' nearest reference is their own prompt, source "
            "or parent (own_lineage): their min_l2 says where they came from, not memorization",
            err=True,
        )
    if rows and all(r.get("max_iou") is None for r in rows):
        click.echo(
            "note: no eval set holds error sets of both the targets and the reference, so "
            "max_iou is empty (wdb evaluate them, or wdb ingest-outputs their error sets)",
            err=True,
        )


@query.command("relations")
@click.option("--id", "relation_id", type=int, default=None, help="One relation.")
@output_options
def relations_cmd(relation_id, fmt) -> None:
    """Stored relations and whether each is stale (selection or predictions changed since)."""
    from wdb.query.nearest import relation_status

    emit(relation_status(get_db(), relation_id), fmt, title="relations")


@query.command("lineage")
@click.option("--run", required=True, help="Run whose family tree to show.")
@output_options
def lineage_cmd(run, fmt) -> None:
    """The family tree of a run: which checkpoint each came from (previous step, a declared
    base, or the parent the store found by sketch), its distance and the bytes it saved."""
    from wdb.store.lineage import tree

    db = get_db()
    db.run(run)  # a clear error for an unknown run
    emit(tree(db, run), fmt, title=f"lineage of {run}")
