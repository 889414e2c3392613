"""``prunelab demo``: the main job on the embedded default (no download).

Prunes an MLP on scikit-learn's 8x8 digits at initialisation with random, magnitude, SNIP and
SynFlow at five sparsities (global allocation), trains each pruned network, and prints accuracy
beside direct and effective compression. About a minute on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from prunelab.experiments.config import SweepConfig, build

DEMO_CRITERIA = ["random", "magnitude", "snip", "synflow"]
DEMO_SPARSITIES = [0.5, 0.8, 0.9, 0.95, 0.98]


def demo_sweep(quick: bool = False) -> SweepConfig:
    epochs = 3 if quick else 30
    return build(
        SweepConfig,
        {
            "base": {
                "dataset": "digits",
                "model": "mlp",
                "model_kwargs": {"widths": [256, 128]},
                "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                          "epochs": epochs, "batch_size": 64, "lr_schedule": "cosine"},
                "prune": {"schedule": "at_init", "data_samples": 512},
                "device": "cpu",
            },
            "criteria": DEMO_CRITERIA,
            "allocations": ["global"],
            "sparsities": DEMO_SPARSITIES,
            "seeds": [0],
        },
        "demo config",
    )


def run_demo(out: str | Path, quick: bool = False, progress: bool = True, console: Console | None = None):
    import torch

    from prunelab.experiments.commands import print_results
    from prunelab.experiments.sweep import run_sweep

    console = console or Console()
    sweep = demo_sweep(quick)
    # The demo's MLP is tiny: one thread is faster than two (thread hand-offs cost more than the
    # matrix products), and much faster when the machine is busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    console.print(
        f"prunelab demo: MLP 64-256-128-10 on the embedded digits data, pruned at initialisation with "
        f"{', '.join(DEMO_CRITERIA)} at sparsities {DEMO_SPARSITIES}, then trained "
        f"{sweep.base.train.epochs} epochs. Output: {out}"
    )
    try:
        res = run_sweep(sweep, out, progress=progress)
    finally:
        torch.set_num_threads(threads)
    print_results(res.rows, console, title="digits MLP: accuracy after pruning at init + training")
    console.print(f"table: {res.csv_path}\nplot:  {res.plot_path}")
    return res
