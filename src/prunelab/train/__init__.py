"""Training: ``fit(model, data, TrainConfig(...), callbacks)``, evaluation and checkpoints.

See ``docs/training.md`` for the loop's hook order and the reproducibility guarantees.
"""

from __future__ import annotations

from prunelab.analysis.evaluate import EvalResult, evaluate
from prunelab.callbacks import Callback, TrainState
from prunelab.train.checkpoint import (
    load_checkpoint,
    load_train_state,
    meta_path,
    save_checkpoint,
    save_state_dict,
    save_train_state,
)
from prunelab.train.config import TrainConfig
from prunelab.train.loop import (
    CHECKPOINT_NAME,
    ROW_KEYS,
    TrainingDiverged,
    TrainResult,
    checkpoint_file,
    fit,
    make_optimizer,
)
from prunelab.train.lr_schedule import lr_factor
from prunelab.train.regularizers import L1Regularizer

__all__ = [
    "CHECKPOINT_NAME",
    "ROW_KEYS",
    "Callback",
    "EvalResult",
    "L1Regularizer",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingDiverged",
    "checkpoint_file",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_train_state",
    "lr_factor",
    "make_optimizer",
    "meta_path",
    "save_checkpoint",
    "save_state_dict",
    "save_train_state",
]
