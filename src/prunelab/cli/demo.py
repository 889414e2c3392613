"""``prunelab demo``: the main job on the embedded digits data (no download)."""

from __future__ import annotations

import click

from prunelab.cli.console import console
from prunelab.experiments.demo import run_demo


@click.command("demo")
@click.option("--out", default="prunelab-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--quick", is_flag=True, help="fewer epochs (a smoke test)")
@click.option("--quiet", is_flag=True, help="no progress bars")
def command(out, quick, quiet) -> None:
    """Train an MLP on the embedded digits data; compare random, magnitude, SNIP and SynFlow at 5
    sparsities; print the table and save the plot. No download, about a minute on 2 CPU cores."""
    run_demo(out, quick=quick, progress=not quiet, console=console)
