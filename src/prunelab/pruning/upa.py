"""The undecayed pruning criterion ``upa`` (Good, Lin, Yu, Sieg, Fergurson, Zhe, Wieczorek & Serra,
"Recall Distortion in Neural Network Pruning and the Undecayed Pruning Algorithm", NeurIPS 2022).

For a network trained with weight decay lambda, the training objective is L = CE + (lambda/2)||w||^2.
The undecayed score of weight w is

    s(w) = | -w * dCE/dw + lambda * w^2 |

where dCE/dw is the gradient of the loss *without* the weight-decay term. Removing w changes CE by
about -w dCE/dw (first-order Taylor, as in gradient pruning), and lambda w^2 adds back the part of
the gradient that weight decay contributes at a stationary point of L (there dCE/dw = -lambda w), so
the score lies between gradient pruning (lambda = 0) and magnitude pruning (dominant lambda w^2).

Choices, and differences from the authors' code (AidanGood/undecayed-lth, ``pruning/undecayed.py``):

* lambda is ``ctx.options["weight_decay"]`` (a number >= 0). The code hard-codes 5e-4; here that is
  only the default when the option is absent. Pass the training weight decay (the experiment
  scripts do) so lambda matches the decay the network was trained with.
* The gradient is taken in **train mode** (BatchNorm batch statistics, Dropout on), as the code
  does (``model.train()`` before the forward pass); BatchNorm buffers are restored afterwards.
  ``ctx.options["train_mode"] = False`` uses eval mode instead.
* The code uses one training mini-batch. With several batches in ``ctx.batches`` the gradient is
  that of the *mean* of the per-batch mean losses, so the scale of dCE/dw (which matters against
  lambda w^2) is that of one mini-batch loss whatever the number of batches.
* Weights already pruned score 0 (the masked network is scored; w = 0 there).
* The model runs through ``ctx.adapter_for(model)`` (:mod:`prunelab.models.adapters`), so CE is the
  model's own loss (e.g. next-token cross-entropy for a causal LM); train mode runs dropout with masks
  drawn from ``ctx.seed`` (see :func:`prunelab.pruning.criteria.scoring_mode`).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping

import torch
from pydantic import Field
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.pruning.context import CRITERIA, GradientOptions, ScoreContext
from prunelab.pruning.criteria import masked_weights, scoring_mode

DEFAULT_WEIGHT_DECAY = 5e-4  # the value hard-coded in the authors' code


def undecayed_weight_decay(ctx: ScoreContext) -> float:
    """lambda for ``upa``: ``ctx.options["weight_decay"]`` if given, else 5e-4."""
    lam = ctx.options.get("weight_decay", DEFAULT_WEIGHT_DECAY)
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not lam >= 0:
        raise PrunelabError(f"upa option 'weight_decay' must be a number >= 0, got {lam!r}")
    return float(lam)


class UpaOptions(GradientOptions):
    """Undecayed pruning (Good et al. 2022)."""

    weight_decay: float = Field(DEFAULT_WEIGHT_DECAY, ge=0, allow_inf_nan=False,
                                description="lambda: the weight decay the network was trained with")
    train_mode: bool = Field(True, description="gradient in train mode, as the authors' code (buffers restored)")


@CRITERIA.register("upa", options=UpaOptions)
def upa(model: nn.Module, masks: Mapping[str, torch.Tensor], ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """Undecayed pruning score |-w dCE/dw + lambda w^2| (Good et al., NeurIPS 2022; module docstring)."""
    lam = undecayed_weight_decay(ctx)
    batches = ctx.require_data("upa")
    mode_ctx = dataclasses.replace(ctx, options={"train_mode": True, **ctx.options})
    adapter = ctx.adapter_for(model)
    weights = {k: w.requires_grad_() for k, w in masked_weights(model, masks).items()}
    leaves = list(weights.values())
    grads = [torch.zeros_like(w) for w in leaves]
    with scoring_mode(model, mode_ctx):
        for batch in batches:
            loss = adapter.loss(model, batch, weights) / len(batches)
            parts = torch.autograd.grad(loss, leaves, allow_unused=True)
            grads = [g + p if p is not None else g for g, p in zip(grads, parts)]
    return {k: (-w.detach() * g + lam * w.detach().square()).abs_() for (k, w), g in zip(weights.items(), grads)}


upa.needs_data = True  # type: ignore[attr-defined]
