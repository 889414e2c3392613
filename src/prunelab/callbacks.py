"""The hooks of the training loop and the state they see.

This module sits in the lowest layer (beside ``errors``, ``utils``, ``registry``) so that code in any
layer can hook into training without importing it: pruning schedules, mask enforcement and probes
live in :mod:`prunelab.pruning` and subclass :class:`Callback`; :mod:`prunelab.train` runs them.

Order of one optimizer step in :func:`prunelab.train.fit`::

    on_batch_begin(state, xb, yb)
    outputs = model(xb); loss = cross_entropy(outputs, yb) + sum(extra_loss(state, xb, yb, outputs))
    zero_grad; loss.backward()
    after_backward(state)        # e.g. zero the gradients of pruned weights
    optimizer.step(); scheduler.step(); state.iteration += 1
    after_step(state)            # e.g. zero pruned weights and their momentum

around which ``on_train_begin`` / ``on_epoch_begin`` / ``on_epoch_end`` / ``on_train_end`` run.
Setting ``state.stop = True`` in any hook ends training after the current step (the epoch is still
closed: evaluated, recorded, ``on_epoch_end`` called) and ``on_train_end`` runs (unless a hook or the
loop raises, e.g. :class:`prunelab.train.TrainingDiverged`).

Resumable training (``fit(..., checkpoint=...)``) checkpoints at the end of epochs and stores every
callback's :meth:`Callback.state_dict`. A resumed ``fit`` builds the model, optimizer and scheduler as
a fresh start would, runs ``on_train_begin`` as a fresh start would (hooks, references, resets), then
restores the model, optimizer, scheduler, counters and history, calls each callback's
:meth:`Callback.load_state_dict` with what its ``state_dict`` returned at the checkpoint, restores
the RNG states and continues with the next epoch's ``on_epoch_begin``. So a callback whose attributes
change after ``on_train_begin`` and carry over an epoch boundary (counters, masks, found tickets,
recorded weights) must return them from ``state_dict``; state rebuilt in ``on_epoch_begin`` needs
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class TrainState:
    """What the callbacks see and may change.

    ``epoch`` is the 0-based index of the running epoch; ``iteration`` counts completed optimizer
    steps (so it is the index of the current step until ``optimizer.step``, and already includes it
    in ``after_step``). ``history`` holds one dict per finished epoch. ``metrics`` is emptied before
    each epoch's ``on_epoch_begin``; whatever callbacks put there is merged into that epoch's history
    row after ``on_epoch_end``. ``data`` is the dataset with its tensors on ``device``.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: Any  # the prunelab.train.TrainConfig of the run
    data: Any
    device: torch.device
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps_per_epoch: int
    total_iterations: int
    total_epochs: int
    epoch: int = 0
    iteration: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    stop: bool = False


class Callback:
    """Base class: every hook is an optional no-op; subclass and override the ones you need."""

    def on_train_begin(self, state: TrainState) -> None:
        pass

    def on_epoch_begin(self, state: TrainState) -> None:
        pass

    def on_batch_begin(self, state: TrainState, xb: torch.Tensor, yb: torch.Tensor) -> None:
        pass

    def extra_loss(
        self, state: TrainState, xb: torch.Tensor, yb: torch.Tensor, outputs: torch.Tensor
    ) -> torch.Tensor | None:
        """A scalar tensor added to the loss before ``backward`` (regularisers), or None."""
        return None

    def after_backward(self, state: TrainState) -> None:
        pass

    def after_step(self, state: TrainState) -> None:
        pass

    def on_epoch_end(self, state: TrainState) -> None:
        pass

    def on_train_end(self, state: TrainState) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """What a training checkpoint stores of this callback (default: nothing).

        A dict of tensors, numbers, strings, bools, None and (nested) lists, tuples and dicts of
        those (dict keys: str or int); tensors go to safetensors, the rest to JSON, nothing is
        pickled. Called at the end of an epoch, after ``on_epoch_end``.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, on resume, after ``on_train_begin`` (default: no-op).

        Tensors come back on the CPU; move them where they belong.
        """
