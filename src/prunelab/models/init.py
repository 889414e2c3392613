"""He (Kaiming) initialisation, drawn exactly once per weight; and PyTorch's own default, on request.

He, Zhang, Ren & Sun (2015), "Delving Deep into Rectifiers", eq. (10): a layer followed by a ReLU
keeps the forward signal's variance when its weights are ``N(0, 2 / fan_in)``, with ``fan_in`` the
number of inputs of one output unit (``in_features`` for Linear, ``in_channels/groups * k_h * k_w``
for Conv2d). He et al. (2016) initialise their ResNets this way, and the CIFAR VGG/ResNet code the
pruning literature uses (SynFlow, open_lth, akamaster/pytorch_resnet_cifar10) does too.

Choices the paper leaves open, made here for every model of the zoo:

* the forward (``fan_in``) variant of eq. (10), not the backward (``fan_out``) variant of eq. (14);
* the classifier (the last Linear, no ReLU after it) gets the same ``N(0, 2 / fan_in)``;
* biases start at zero; BatchNorm starts as the identity (weight 1, bias 0, running mean 0,
  running variance 1); the last BN of a residual block is *not* zero-initialised.

``init="torch"`` (an option of every zoo model, see :func:`prunelab.models.zoo.create`) re-draws
the weights with PyTorch's default initialisers instead (:func:`torch_init_`): Linear/Conv weights
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (``kaiming_uniform_`` with ``a = sqrt(5)``), biases from the same
range. Code that builds its models with plain ``nn.Linear``/``nn.Conv2d`` - the WoodFisher/CBS MLPNet,
for one - trains from that start, and magnitude pruning of the trained weights depends on it: inputs
that never vary (MNIST's border pixels) keep their initial weights, which He's ``N(0, 2 / fan_in)``
makes ~2.5x larger.

Models are built on the ``meta`` device and then materialised, so PyTorch's default initialisers
never run: building a model consumes exactly one normal sample per Linear/Conv weight from the global
generator, layer by layer in ``named_parameters()`` order, and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from prunelab.errors import PrunelabError

M = TypeVar("M", bound=nn.Module)

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _init_(model: M, weighted: Callable[[nn.Module], None], who: str) -> M:
    """``weighted(module)`` on every Linear/Conv, BatchNorm to the identity; anything else with
    parameters or buffers is an error, so nothing is left uninitialised."""
    for name, module in model.named_modules():
        if isinstance(module, _WEIGHTED):
            weighted(module)
        elif isinstance(module, _NORMS):
            module.reset_running_stats()
            if module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        elif any(True for _ in module.parameters(recurse=False)) or any(
            True for _ in module.buffers(recurse=False)
        ):
            raise PrunelabError(
                f"module {name!r} is a {type(module).__name__} with parameters or buffers; {who} "
                "initialises Linear, Conv1d/2d/3d and BatchNorm1d/2d/3d only"
            )
    return model


def _he(module: nn.Module) -> None:
    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def he_init_(model: M) -> M:
    """Initialise every Linear/Conv/BatchNorm of ``model`` in place as described above; return it.

    A module with parameters or buffers of any other kind is an error, so nothing is left
    uninitialised.
    """
    return _init_(model, _he, "he_init_")


INITS = ("he", "torch")


def torch_init_(model: M) -> M:
    """Re-initialise every Linear/Conv of ``model`` in place with PyTorch's defaults (each module's own
    ``reset_parameters()``, in ``named_modules()`` order) and BatchNorm as in :func:`he_init_`; return it.

    Draws come from the global generator after the He draws the model was built with, so the same
    seed gives the same weights. A module with parameters of any other kind is an error, as in
    :func:`he_init_`.
    """
    return _init_(model, lambda module: module.reset_parameters(), "torch_init_")


def build_he_initialised(factory: Callable[[], M]) -> M:
    """Run ``factory`` on the meta device (no memory, no random draws), then materialise on the CPU
    and apply :func:`he_init_`."""
    with torch.device("meta"):
        model = factory()
    model.to_empty(device="cpu")
    return he_init_(model)
