"""``prunelab bound``: the upper bound on the linear regions of a (pruned) ReLU MLP."""

from __future__ import annotations

import click

from prunelab.analysis.regions import format_bound, mlp_bound
from prunelab.cli.console import console
from prunelab.cli.options import comma_list


@click.command("bound")
@click.option("--widths", required=True, help="input dimension then every layer's width, e.g. 784,100,100,10")
@click.option("--densities", default=None, help="one density (fraction kept) per weight layer, e.g. 0.01,0.01,1")
@click.option("--rank", type=click.Choice(["analytic", "montecarlo"]), default="analytic", show_default=True,
              help="how P(rank) of a pruned layer is estimated")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Monte Carlo seed")
@click.option("--subspace-dim", type=click.IntRange(min=1), default=None,
              help="bound on a d-dimensional affine subspace of the input")
def command(widths, densities, rank, seed, subspace_dim) -> None:
    """Upper bound on the number of linear regions of a ReLU MLP (Serra et al. 2018; Cai et al. 2023
    for pruned layers): log2 of the bound and, up to 100 digits, the exact integer."""
    bound = mlp_bound(comma_list(widths, int, "--widths"), comma_list(densities, float, "--densities"),
                      rank=rank, seed=seed, subspace_dim=subspace_dim)
    console.print(format_bound(bound))
