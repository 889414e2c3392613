"""Keep pruned weights at exactly zero while training (a training callback).

Zeroing weights once is not enough: weight decay and momentum (SGD ``momentum_buffer``, Adam
``exp_avg``/``exp_avg_sq``) would move a pruned weight away from zero at the next step. The enforcer
masks gradients after backward, and after every optimizer step re-zeroes the pruned weights *and*
the matching entries of every optimizer-state tensor that has the weight's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from prunelab.callbacks import Callback
from prunelab.masks import Masks


class MaskEnforcer(Callback):
    """Training callback that keeps ``masks`` enforced on ``state.model`` (and its optimizer state).

    Hooks used: ``on_train_begin(state)`` (zero pruned weights and their optimizer state),
    ``after_backward(state)`` (zero their gradients) and ``after_step(state)`` (re-zero weights and
    optimizer state). ``state`` needs ``model`` and ``optimizer`` attributes. Any optimizer works: every
    tensor in ``optimizer.state[p]`` with the shape of ``p`` is treated as per-weight state.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        self.masks = masks if isinstance(masks, Masks) else Masks(masks)
        self._bound: list[tuple[torch.nn.Parameter, torch.Tensor]] = []  # (param, pruned=~mask)
        self._model_id: int | None = None

    def _bind(self, model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """Resolve parameter names once per model; cache the inverted masks on each weight's device."""
        stale = any(m.device != p.device for p, m in self._bound)  # the model was moved since
        if self._model_id != id(model) or stale:
            self.masks.validate(model)
            params = dict(model.named_parameters())
            self._bound = [(params[k], ~m.to(params[k].device)) for k, m in self.masks.items()]
            self._model_id = id(model)
        return self._bound

    @torch.no_grad()
    def _zero_weights_and_state(self, model: torch.nn.Module, optimizer: Any) -> None:
        opt_state = getattr(optimizer, "state", {}) if optimizer is not None else {}
        for p, pruned in self._bind(model):
            p.masked_fill_(pruned, 0.0)
            for value in opt_state.get(p, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    value.masked_fill_(pruned, 0)

    def on_train_begin(self, state: Any) -> None:
        self._zero_weights_and_state(state.model, getattr(state, "optimizer", None))

    @torch.no_grad()
    def after_backward(self, state: Any) -> None:
        for p, pruned in self._bind(state.model):
            if p.grad is not None:
                p.grad.masked_fill_(pruned, 0.0)

    def after_step(self, state: Any) -> None:
        self._zero_weights_and_state(state.model, getattr(state, "optimizer", None))
