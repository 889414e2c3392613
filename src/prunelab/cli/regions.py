"""``prunelab regions``: count the linear regions of a run folder's MLP."""

from __future__ import annotations

import click

from prunelab.analysis.regions import format_summary
from prunelab.cli.console import console
from prunelab.experiments.commands import count_run_regions


@click.command("regions")
@click.argument("run_dir", type=click.Path(exists=True))
@click.option("--line", "mode", flag_value="line", default=True, help="exact counts on segments between test inputs")
@click.option("--plane", "mode", flag_value="plane", help="counts on planes through three test inputs")
@click.option("--exact", "mode", flag_value="exact", help="all regions in the box around the inputs (MILP; small nets)")
@click.option("--patterns", "mode", flag_value="patterns", help="distinct activation patterns on the test set")
@click.option("--samples", type=click.IntRange(min=1), default=10, show_default=True, help="segments / planes")
@click.option("--inputs", type=click.IntRange(min=1), default=1000, show_default=True, help="test inputs used")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--time-limit", type=float, default=60.0, show_default=True, help="seconds for --exact")
@click.option("--data-root", default=None, help="dataset folder")
def command(run_dir, mode, samples, inputs, seed, time_limit, data_root) -> None:
    """Count the linear regions of a trained (and possibly pruned) MLP of a run folder."""
    row = count_run_regions(run_dir, mode, samples=samples, inputs=inputs, seed=seed, time_limit=time_limit,
                            data_root=data_root)
    console.print(format_summary(row), highlight=False)
