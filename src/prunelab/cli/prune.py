"""``prunelab prune``: one-shot pruning of a run folder, no fine-tuning."""

from __future__ import annotations

import click

from prunelab.cli.console import console
from prunelab.cli.options import fisher_flags, second_order_options
from prunelab.experiments.commands import prune_run


@click.command("prune")
@click.argument("run_dir", type=click.Path(exists=True))
@click.option("--sparsity", required=True, type=float, help="fraction of prunable weights removed, in [0, 1)")
@click.option("--criterion", default="magnitude", show_default=True, help="see `prunelab list`")
@click.option("--allocation", default="global", show_default=True, help="see `prunelab list`")
@click.option("--sparsity-kind", type=click.Choice(["direct", "effective"]), default="direct", show_default=True,
              help="is --sparsity a target for the direct or the effective sparsity?")
@click.option("--effective", is_flag=True, help="drop disconnected weights for free and re-spend their budget")
@click.option("--update", default="auto", show_default=True,
              help="weight update after pruning: auto (the criterion's own), none, obs, cbs")
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="score/prune rounds")
@click.option("--data-samples", type=click.IntRange(min=1), default=1024, show_default=True,
              help="training samples given to data-dependent criteria")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--data-root", default=None, help="dataset folder")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="where to write masks and the pruned model  [default: RUN_DIR/pruned-<criterion>-<sparsity>]")
@fisher_flags
def command(run_dir, sparsity, criterion, allocation, sparsity_kind, effective, update, iterations,
            data_samples, seed, data_root, out, fisher_samples, fisher_batch, damping, block_size,
            full_fisher) -> None:
    """Prune a trained model (a folder from `prunelab train` or `prunelab run`) once, no fine-tuning;
    print test accuracy before and after and the sparsity report."""
    pruned = prune_run(run_dir, sparsity, criterion, allocation, sparsity_kind=sparsity_kind, effective=effective,
                       update=None if update == "none" else update, iterations=iterations,
                       data_samples=data_samples, seed=seed, data_root=data_root, out=out,
                       options=second_order_options(fisher_samples, fisher_batch, damping, block_size,
                                                    full_fisher))
    console.print(pruned.report.to_table())
    console.print(f"test accuracy: {pruned.before.accuracy:.4f} before, {pruned.after.accuracy:.4f} after pruning "
                  f"(no fine-tuning)")
    console.print(f"masks and pruned model: {pruned.out_dir}")
