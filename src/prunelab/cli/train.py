"""``prunelab train``: train one model into OUT/train-<hash>/ (options from :class:`TrainConfig`)."""

from __future__ import annotations

import click

from prunelab.cli.console import console
from prunelab.cli.options import collect, field_options, model_kwargs
from prunelab.experiments.commands import train_model
from prunelab.train import TrainConfig


@click.command("train")
@click.option("--model", default="lenet300", show_default=True, help="model name (see `prunelab list`)")
@click.option("--dataset", default="mnist", show_default=True, help="dataset name (see `prunelab list`)")
@click.option("--widths", default=None, help="hidden widths for the `mlp` model, e.g. 100,100")
@click.option("--model-kwargs", "model_kwargs_json", default=None, help='extra model arguments as JSON, e.g. \'{"batch_norm": false}\'')
@click.option("--data-root", default=None, help="dataset folder (default: $PRUNELAB_DATA, else the user cache)")
@click.option("--val-fraction", default=0.0, show_default=True, type=float, help="validation split of train")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="standardise inputs per channel (--no-normalize keeps pixels in [0, 1])")
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False), help="output folder")
@field_options(TrainConfig)
def command(model, dataset, widths, model_kwargs_json, data_root, val_fraction, normalize, out, **kwargs) -> None:
    """Train a model; writes OUT/train-<hash>/model.safetensors and its config JSON."""
    trained = train_model(model, dataset, model_kwargs=model_kwargs(widths, model_kwargs_json),
                          data_root=data_root, val_fraction=val_fraction, normalize=normalize, out=out,
                          train=collect(kwargs, TrainConfig))
    final = trained.final
    console.print(f"test accuracy {final.accuracy:.4f}, loss {final.loss:.4f}; checkpoint: {trained.checkpoint}")
