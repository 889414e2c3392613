"""``prunelab report``: a results.csv as a table, and its plot remade from the file alone."""

from __future__ import annotations

from pathlib import Path

import click

from prunelab.cli.console import console
from prunelab.experiments.commands import print_results
from prunelab.report.plots import accuracy_vs_compression
from prunelab.report.tables import read_results


@click.command("report")
@click.argument("results", type=click.Path(exists=True, dir_okay=False))
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="where to write the plot")
def command(results, plot) -> None:
    """Print a results.csv as a table and (re)make its plot from the file alone."""
    print_results(read_results(results), console, detail=f"all columns: {results}")
    out = accuracy_vs_compression(results, plot or Path(results).with_name("accuracy_vs_compression.png"))
    console.print(f"plot: {out}")
