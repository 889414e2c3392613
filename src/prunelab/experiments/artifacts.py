"""Load what a run left on disk: the model (with its weights), its masks and its dataset.

Two kinds of folders are understood: ``OUT/train-<hash>/`` written by ``prunelab train`` and
``OUT/runs/<hash>/`` written by ``prunelab run`` (both hold ``config.json`` and
``model.safetensors``; a pruning run also holds ``masks.safetensors``). Weights are read with
safetensors, never unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from prunelab import data as data_mod
from prunelab import models
from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.train import load_checkpoint


@dataclass
class LoadedRun:
    path: Path
    config: dict[str, Any]
    model: nn.Module
    masks: Masks | None
    dataset: Any


def load_run(path: str | Path, *, data_root: str | None = None, normalize: bool | None = None) -> LoadedRun:
    """Rebuild the model of a run folder, load its weights and masks, and load its dataset.

    The data is normalised as it was for training (``config.json``'s ``normalize``, default True);
    pass ``normalize`` to override.
    """
    path = Path(path)
    if path.is_file():
        path = path.parent
    cfg_path, weights = path / "config.json", path / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise PrunelabError(
            f"{str(path)!r} is not a run folder: expected config.json and model.safetensors there "
            "(written by `prunelab train` or `prunelab run`)"
        )
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise PrunelabError(f"{cfg_path} is not valid JSON: {e}") from None
    for key in ("model", "dataset"):
        if key not in config:
            raise PrunelabError(f"{cfg_path} has no {key!r} entry; is it a prunelab run folder?")
    ds = data_mod.load(config["dataset"], root=data_root or config.get("data_root"),
                       val_fraction=config.get("val_fraction", 0.0), seed=config.get("seed", 0),
                       normalize=config.get("normalize", True) if normalize is None else normalize)
    model = models.create(config["model"], num_classes=ds.num_classes, input_shape=ds.input_shape,
                          **config.get("model_kwargs", {}))
    load_checkpoint(weights, model)
    model.eval()
    masks = Masks.load(path / "masks.safetensors") if (path / "masks.safetensors").is_file() else None
    return LoadedRun(path, config, model, masks, ds)
