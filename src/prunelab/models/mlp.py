"""Fully connected ReLU networks: ``mlp``, ``lenet300``, ``mlpnet``.

Every one is exactly ``nn.Sequential(Flatten, Linear, ReLU, ..., Linear)`` with the default index
names (``"1.weight"``, ``"3.weight"``, ...), so the MLP-only analyses read it with
:func:`prunelab.analysis.affine.mlp_layers`. Any input shape is flattened to ``prod(input_shape)``
features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.init import build_he_initialised
from prunelab.models.zoo import MODELS, positive_int, require_bool


def build_mlp(in_features: int, widths: Sequence[int], num_classes: int, bias: bool = True) -> nn.Sequential:
    """``Flatten, Linear(in, w1), ReLU, ..., Linear(w_last, num_classes)``, He-initialised."""

    def layers() -> nn.Sequential:
        sizes = [in_features, *widths, num_classes]
        mods: list[nn.Module] = [nn.Flatten()]
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            mods.append(nn.Linear(n_in, n_out, bias=bias))
            if i < len(sizes) - 2:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods)

    return build_he_initialised(layers)


def _hidden_widths(value: Any) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise PrunelabError(f"mlp widths must be a list of positive integers such as [300, 100], got {value!r}")
    return [positive_int(w, f"every mlp width (widths={list(value)!r})") for w in value]


@MODELS.register("mlp")
def mlp(num_classes: int, input_shape: tuple[int, ...], *, widths: Sequence[int], bias: bool = True) -> nn.Sequential:
    """A ReLU MLP with hidden layer widths ``widths`` (``[]`` gives multinomial logistic regression).

    The generic form of the fully connected nets of LeCun, Bottou, Bengio & Haffner (1998),
    "Gradient-based learning applied to document recognition". Parameters:
    ``sum(n_i * n_{i+1}) (+ sum n_{i+1} with bias)`` over ``[prod(input_shape), *widths, num_classes]``.
    """
    sizes = _hidden_widths(widths)
    return build_mlp(math.prod(input_shape), sizes, num_classes, require_bool(bias, "mlp bias"))


@MODELS.register("lenet300")
def lenet300(num_classes: int, input_shape: tuple[int, ...], *, bias: bool = True) -> nn.Sequential:
    """LeNet-300-100: the 784-300-100-10 ReLU MLP of LeCun et al. (1998), the classic pruning benchmark
    (Han et al. 2015; Frankle & Carbin 2019).

    On MNIST (1, 28, 28) with 10 classes: 784*300+300 + 300*100+100 + 100*10+10 = 266,610 parameters
    (266,200 weights). LeCun et al. used sigmoid-type units; like the pruning literature we use ReLU.
    """
    return build_mlp(math.prod(input_shape), [300, 100], num_classes, require_bool(bias, "lenet300 bias"))


@MODELS.register("mlpnet")
def mlpnet(num_classes: int, input_shape: tuple[int, ...]) -> nn.Sequential:
    """MLPNet: the 784-40-20-10 ReLU MLP without biases on which Yu, Serra, Ramalingam & Zhe (2022),
    "The Combinatorial Brain Surgeon", prune MNIST models (the MLPNet of WoodFisher, Singh & Alistarh 2020).

    On MNIST (1, 28, 28) with 10 classes: 784*40 + 40*20 + 20*10 = 32,360 parameters, all weights.
    """
    return build_mlp(math.prod(input_shape), [40, 20], num_classes, bias=False)
