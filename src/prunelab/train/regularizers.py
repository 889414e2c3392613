"""Regularisers that enter the training loss through :meth:`prunelab.callbacks.Callback.extra_loss`."""

from __future__ import annotations

import torch
from torch import nn

from prunelab.callbacks import Callback, TrainState
from prunelab.errors import PrunelabError


class L1Regularizer(Callback):
    """Adds ``strength * sum_W sum_ij |W_ij|`` over the weights of all ``layer_types`` modules.

    The recipe of Serra, Kumar & Ramalingam (2020, "Lossless compression of deep neural networks",
    CPAIOR), who train with L1 regularisation so that more ReLUs become stable (always active or
    always inactive over the input domain) and can be removed exactly. The penalty is a sum, not a
    mean, over weights (the paper's choice of normalisation is not stated), biases are excluded, and
    its (sub)gradient is ``strength * sign(W)`` (0 at W = 0, as torch's ``abs``).
    """

    def __init__(self, strength: float, layer_types: tuple[type[nn.Module], ...] = (nn.Linear,)) -> None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength >= 0:
            raise PrunelabError(f"L1 strength must be a number >= 0, got {strength!r}")
        self.strength = float(strength)
        self.layer_types = layer_types
        self._weights: list[torch.Tensor] = []

    def on_train_begin(self, state: TrainState) -> None:
        self._weights = [
            m.weight for m in state.model.modules() if isinstance(m, self.layer_types) and m.weight is not None
        ]
        if not self._weights:
            names = ", ".join(t.__name__ for t in self.layer_types)
            raise PrunelabError(f"l1={self.strength} was asked for but the model has no {names} layer")

    def extra_loss(
        self, state: TrainState, xb: torch.Tensor, yb: torch.Tensor, outputs: torch.Tensor
    ) -> torch.Tensor | None:
        if self.strength == 0:
            return None
        return self.strength * torch.stack([w.abs().sum() for w in self._weights]).sum()
