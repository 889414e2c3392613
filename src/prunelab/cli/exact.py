"""``prunelab exact``: exact compression of a run folder's MLP by ReLU stability."""

from __future__ import annotations

import click

from prunelab.cli.console import console
from prunelab.experiments.commands import STABILITY_COLUMNS, STABILITY_HEADERS, exact_compress_run
from prunelab.report.tables import rich_table


@click.command("exact")
@click.argument("run_dir", type=click.Path(exists=True))
@click.option("--domain", default="box:0,1", show_default=True,
              help="input box in pixel units, mapped through the dataset's normalisation")
@click.option("--time-limit", type=float, default=600.0, show_default=True,
              help="seconds for the MILP stage; what is not proven by then is unresolved (kept)")
@click.option("--solver", type=click.Choice(["highs", "scip"]), default="highs", show_default=True,
              help="MILP solver of --method callback_milp (scip: pip install 'prunelab[exact]')")
@click.option("--method", type=click.Choice(["single_milp", "per_unit", "callback_milp"]), default="single_milp",
              show_default=True,
              help="one MILP for all candidates (Serra et al. 2021) or two per unit (Serra et al. 2020)")
@click.option("--data-samples", type=click.IntRange(min=0), default=10000, show_default=True,
              help="training inputs used to rule out unstable units")
@click.option("--data-root", default=None, help="dataset folder")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="compressed model file  [default: RUN_DIR/compressed.safetensors]")
def command(run_dir, domain, time_limit, method, solver, data_samples, data_root, out) -> None:
    """Prove stably active / inactive ReLUs of a trained MLP with a MILP and write the exactly
    equivalent smaller network (Serra et al. 2020, 2021)."""
    done = exact_compress_run(run_dir, domain, time_limit=time_limit, method=method, solver=solver,
                              data_samples=data_samples,
                              data_root=data_root, out=out)
    console.print(rich_table(done.stability_rows(), STABILITY_COLUMNS, title=f"stability per hidden layer ({method})",
                             headers=STABILITY_HEADERS))
    row = done.to_row()
    console.print(f"hidden units {row['neurons_before']} -> {row['neurons_after']} "
                  f"({100 * row['neurons_removed_fraction']:.1f}% removed: {row['inactive_removed']} stably inactive "
                  f"deleted + {row['active_folded']} stably active folded), layers {row['layers_before']} -> "
                  f"{row['layers_after']}, connections {row['connections_before']} -> {row['connections_after']} "
                  f"({100 * row['connections_removed_fraction']:.1f}% removed); verified on {row['n_points']} "
                  f"points, max |output difference| {row['max_abs_diff']:.2e}", highlight=False)
    console.print(f"compressed model: {done.path}")
