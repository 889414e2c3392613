"""``prunelab reproduce NAME``: re-run a paper's headline claim and print ours beside the paper's."""

from __future__ import annotations

import click
from rich.table import Table

from prunelab.cli.console import console
from prunelab.errors import PrunelabError


def _list() -> None:
    from prunelab.experiments.reproductions import REPRODUCTIONS

    console.print("[bold]reproductions[/] (prunelab reproduce NAME [--quick | --full]):")
    for name in REPRODUCTIONS.names():
        rep = REPRODUCTIONS.get(name)
        times = "; ".join(f"{m} {rep.time[m]}" for m in ("quick", "default", "full") if m in rep.time)
        console.print(f"[bold]{name}[/]: {rep.paper}", highlight=False)
        console.print(f"    data {rep.data}; {times}", highlight=False)
        console.print(f"    claim: {rep.claim}", highlight=False)


def _print_report(report) -> None:
    console.print(f"[bold]{report.title}[/]")
    console.print(report.setting, highlight=False)
    table = Table(show_lines=False)
    for col in ("claim", "paper", "ours", "verdict"):
        table.add_column(col, overflow="fold")
    for c in report.claims:
        table.add_row(c.claim, c.paper, c.ours, c.verdict + (f" ({c.note})" if c.note else ""))
    console.print(table)
    if report.rows:
        detail = Table(show_lines=False)
        cols = report.columns or list(report.rows[0])
        for col in cols:
            detail.add_column(col, overflow="fold")
        for r in report.rows:
            detail.add_row(*[("" if r.get(c) is None else f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]))
                             for c in cols])
        console.print(detail)


@click.command("reproduce")
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="list the reproductions with their expected times")
@click.option("--quick", "mode", flag_value="quick", help="smoke run of minutes (checks the pipeline, not the claim)")
@click.option("--full", "mode", flag_value="full", help="the paper's scale (a GPU or a Ray cluster)")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="output folder [default: reproductions/NAME-MODE]")
@click.option("--data-root", default=None, help="dataset folder [default: $PRUNELAB_DATA or the user cache]")
@click.option("--device", default=None, type=click.Choice(["auto", "cpu", "cuda"]), help="device of every run")
@click.option("--seeds", default=None, help="comma-separated seeds instead of the mode's (e.g. 0,1,2)")
@click.option("--executor", default="local", type=click.Choice(["local", "processes", "ray"]),
              help="where runs are computed")
@click.option("--jobs", default=1, type=int, help="local worker processes (--executor processes)")
@click.option("--address", default=None, help="Ray cluster address (--executor ray) [default: start a local one]")
@click.option("--quiet", is_flag=True, help="no progress display")
@click.option("--report-only", is_flag=True,
              help="rebuild report.md / report.json from OUT/results.csv without running anything")
def command(name, list_, mode, out, data_root, device, seeds, executor, jobs, address, quiet, report_only) -> None:
    """Re-run reproduction NAME (see --list) on the experiment engine: its sweep, then the table of
    the paper's numbers beside ours, with a verdict per claim (report.md in the output folder)."""
    if list_:
        _list()
        return
    if not name:
        raise PrunelabError("give a reproduction NAME, or --list to see them")
    from prunelab.experiments.reproductions import report_from_folder, run

    mode = mode or "default"
    if report_only:
        given = {"--data-root": data_root, "--device": device, "--seeds": seeds,
                 "--executor": None if executor == "local" else executor, "--jobs": None if jobs == 1 else jobs,
                 "--address": address}
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            raise PrunelabError(f"--report-only runs nothing, so {', '.join(extra)} would be ignored: drop "
                                f"{'it' if len(extra) == 1 else 'them'}")
        if out is None:
            raise PrunelabError("--report-only needs --out, the folder of a finished run")
        report = report_from_folder(name, out, mode, write=True)
        _print_report(report)
        console.print(f"report rebuilt from {out}/results.csv: {out}/report.md", highlight=False)
        return
    if executor == "processes" and jobs < 2:
        jobs = 2
    overrides = {"data_root": data_root, "device": device}
    if seeds is not None:
        from prunelab.cli.options import comma_list

        overrides["seeds"] = comma_list(seeds, int, "--seeds")
    result, report = run(name, mode, out, overrides=overrides,
                         executor=executor, jobs=jobs, address=address, progress=not quiet)
    _print_report(report)
    console.print(f"{result.computed} run(s) computed, {result.found} found on disk; "
                  f"table: {result.csv_path}; report: {result.csv_path.with_name('report.md')}")
