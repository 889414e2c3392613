"""``prunelab run``: a sweep of train -> prune -> fine-tune -> evaluate (options from the configs)."""

from __future__ import annotations

import click

from prunelab.cli.console import console
from prunelab.cli.options import collect, comma_list, field_options, fisher_flags, model_kwargs, second_order_options
from prunelab.experiments.commands import print_results, sweep_from_options
from prunelab.experiments.config import PruneConfig


def _print_run(i: int, n: int, row: dict, computed: bool) -> None:
    how = "done" if computed else "found on disk"
    console.print(f"[{i + 1}/{n}] {row.get('prune.criterion')} / {row.get('prune.allocation')} "
                  f"sparsity {row.get('prune.sparsity')} seed {row.get('seed')}: "
                  f"test accuracy {row['test_accuracy']:.4f} ({how})")


@click.command("run")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False), help="output folder")
@click.option("--dataset", default=None, help="dataset name (overrides the config file)")
@click.option("--model", default=None, help="model name (overrides the config file)")
@click.option("--widths", default=None, help="hidden widths for the `mlp` model, e.g. 100,100")
@click.option("--data-root", default=None, help="dataset folder")
@click.option("--device", default=None, type=click.Choice(["auto", "cpu", "cuda"]), help="device [default: auto]")
@click.option("--criteria", default=None, help="comma-separated criteria to sweep")
@click.option("--allocations", default=None, help="comma-separated allocations to sweep")
@click.option("--sparsities", default=None, help="comma-separated sparsities (fractions removed) to sweep")
@click.option("--seeds", default=None, help="comma-separated seeds")
@click.option("--epochs", default=None, type=int, help="dense training epochs (overrides [train].epochs)")
@click.option("--finetune-epochs", default=None, type=int, help="fine-tune epochs (overrides [finetune].epochs)")
@click.option("--executor", default="local", type=click.Choice(["local", "processes", "ray"]),
              help="where runs are computed: this process, --jobs local processes, or Ray tasks")
@click.option("--jobs", default=1, type=int, help="local worker processes (implies --executor processes if > 1)")
@click.option("--address", default=None, help="Ray cluster address (--executor ray) [default: start a local one]")
@click.option("--force", is_flag=True, help="recompute runs that are already on disk")
@click.option("--quiet", is_flag=True, help="no progress bars")
@field_options(PruneConfig, skip=("criterion", "allocation", "sparsity", "options"))
@fisher_flags
def command(config, out, dataset, model, widths, data_root, device, criteria, allocations, sparsities, seeds,
            epochs, finetune_epochs, executor, jobs, address, force, quiet, fisher_samples, fisher_batch, damping, block_size, full_fisher,
            **kwargs) -> None:
    """Run train -> prune -> fine-tune -> evaluate for criteria x allocations x sparsities x seeds.

    CONFIG is a TOML file (see examples/); flags override it. Finished runs are found by their
    config hash and not recomputed; an interrupted sweep resumes where it stopped.
    """
    prune = collect(kwargs, PruneConfig)
    fisher = second_order_options(fisher_samples, fisher_batch, damping, block_size, full_fisher)
    if fisher:
        prune["options"] = fisher
    sweep = sweep_from_options(
        config, base={"dataset": dataset, "model": model, "data_root": data_root, "device": device},
        model_kwargs=model_kwargs(widths, None), criteria=comma_list(criteria, str, "--criteria"),
        allocations=comma_list(allocations, str, "--allocations"),
        sparsities=comma_list(sparsities, float, "--sparsities"), seeds=comma_list(seeds, int, "--seeds"),
        epochs=epochs, finetune_epochs=finetune_epochs, prune=prune,
    )
    # imported here, so that `prunelab --help` and the other commands never depend on the engine
    from prunelab.experiments.sweep import run_sweep

    if executor == "processes" and jobs < 2:
        jobs = 2
    res = run_sweep(sweep, out, executor=executor, jobs=jobs, address=address, progress=not quiet, force=force,
                    on_run=_print_run if executor == "local" and jobs == 1 else None)
    print_results(res.rows, console)
    console.print(f"{res.computed} run(s) computed, {res.found} found on disk; table: {res.csv_path}; "
                  f"plot: {res.plot_path}")
