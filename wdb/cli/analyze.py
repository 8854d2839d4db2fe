"""``wdb analyze``, ``wdb experiment``, ``wdb reproduce``, ``wdb demo``: thin wrappers over the
``analyses`` package (imported only here, through the CLI's lazy command table)."""

from __future__ import annotations

import click

from wdb.cli.common import emit, get_db, output_options, workers_option


@click.command()
@click.argument("spec", required=False)
@click.option(
    "--method",
    "-m",
    "methods",
    multiple=True,
    help="Method(s) to analyse, baselines included (default: every generator with samples; "
    "where there is none, every baseline with samples).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Report folder (default: beside the database, report/).",
)
@click.option("--list", "list_", is_flag=True, help="List the built-in analysis specs.")
@workers_option("Compute all the relations (nearest, novelty, Chamfer)")
@output_options
def analyze(
    spec: str | None,
    methods: tuple[str, ...],
    out: str | None,
    list_: bool,
    workers: int | None,
    fmt: str,
) -> None:
    """Run an analysis SPEC (a built-in name such as `memorization`, or a TOML file).

    Materialises every selection, relation and table of the spec as catalog tables
    a_<spec>_<method>_<name>, draws its figures, and (re)builds the HTML report and summary.md.
    """
    from analyses import api

    if list_ or not spec:
        emit(api.list_specs(), fmt, title="analysis specs")
        return
    from wdb.query import engine

    with engine.scope(engine.spec(workers)):
        res = api.analyze(get_db(), spec, list(methods) or None, out)
    rows = [
        {
            "method": r["method"],
            "samples": r["context"].get("sample_kind", "generated"),
            "table": t["name"],
            "rows": t["n_rows"],
        }
        for r in res["records"]
        for t in r["tables"]
    ]
    emit(rows, fmt, title=f"analysis '{spec}'")
    for note in res.get("notes", []):
        click.echo(f"note: {note}", err=True)
    if "report" in res:
        click.echo(f"report: {res['report']['html']}", err=True)
        click.echo(f"summary: {res['report']['summary']}", err=True)


@click.command()
@click.argument("name")
@click.option("--method", "-m", help="Method (modeling-factors: hyperrep, gpt or hyperdiffusion).")
@click.option(
    "--size", default="small", show_default=True, help="Generator size for the retrained variants."
)
@click.option("--n", type=int, help="Samples per variant.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="modeling-factors: override a key of the base config every variant starts from "
    "(repeatable), e.g. --size default --set steps=300.",
)
@click.option("--out", type=click.Path(file_okay=False), help="Report folder.")
@output_options
def experiment(
    name: str,
    method: str | None,
    size: str,
    n: int | None,
    sets: tuple[str, ...],
    out: str | None,
    fmt: str,
) -> None:
    """Run one experiment: modeling-factors, symmetry or hd-augmentation."""
    from analyses import experiments
    from wdb.study.methods import parse_sets

    rec = experiments.run(
        get_db(), name, method=method, out=out, size=size, n=n, overrides=parse_sets(sets)
    )
    emit(rec["tables"][0]["preview"], fmt, title=f"{rec['table']}")
    for note in rec.get("notes", []):
        click.echo(f"note: {note}", err=True)
    click.echo(f"report: {rec['report']['html']}", err=True)


@click.command()
@click.argument("method")
@click.option("--size", default="demo", show_default=True, help="quick | demo | default")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder.")
def reproduce(method: str, size: str, out: str | None) -> None:
    """One method end to end: zoo, generator, baselines, evaluation, analysis, report."""
    from analyses import demo as d

    res = d.reproduce(get_db(create=True), method, size=size, out=out)
    click.echo(res["report"]["html"])


@click.command()
@click.option("--size", default="demo", show_default=True, help="quick | demo | default")
@click.option("--method", "-m", "methods", multiple=True, help="Only these methods.")
@click.option(
    "--out", type=click.Path(file_okay=False), help="Report folder (default: beside the database)."
)
@click.option(
    "--no-experiments", is_flag=True, help="Skip the symmetry / modeling-factor experiments."
)
def demo(size: str, methods: tuple[str, ...], out: str | None, no_experiments: bool) -> None:
    """The whole study end to end: zoos, generators, baselines, analyses, report.

    Reruns reuse whatever already exists in the database. Prints the report's path.
    """
    from analyses import demo as d

    res = d.demo(
        get_db(create=True),
        list(methods) or None,
        size=size,
        out=out,
        experiments=not no_experiments,
    )
    for k, v in res["outcome"].items():
        click.echo(f"{k}: {v}", err=True)
    click.echo(f"wall time: {res['wall_time_s']:.0f} s", err=True)
    click.echo(res["report"]["html"])
