"""View a ReLU MLP as a list of affine layers.

Analyses that are exact only for MLPs (linear regions, exact compression) accept any ``nn.Module``
built from ``Flatten``, ``Linear``, ``ReLU`` (and ``Identity``/``Dropout``, which are no-ops at
evaluation) in a straight line, e.g. ``prunelab.models.create("mlp", ...)`` or a hand-made
``nn.Sequential``. Anything else is a clear error naming the offending module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.masks import Masks

_NOOPS = (nn.Identity, nn.Dropout, nn.Flatten)


@dataclass(frozen=True)
class AffineLayer:
    """One Linear layer of an MLP: ``y = W x + b``, with ``relu`` telling whether a ReLU follows.

    ``name`` is the module's qualified name (its weight is ``f"{name}.weight"`` in masks).
    ``weight`` is (out, in), float64, with the mask (if any) already applied; ``bias`` is (out,).
    """

    name: str
    weight: torch.Tensor
    bias: torch.Tensor
    relu: bool


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, mod in model.named_modules():
        if len(list(mod.children())) == 0:
            out.append((name, mod))
    return out


def mlp_layers(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float64,
) -> list[AffineLayer]:
    """Extract the affine layers of a straight-line ReLU MLP (masks applied, cast to ``dtype``).

    The modules are taken in registration order, which for ``nn.Sequential`` (and the prunelab
    ``mlp`` family) is the order of the forward pass. Every Linear but the last must be followed by a
    ReLU; the last must not be.
    """
    if masks is not None:  # masks of another model are an error, not a silently partial masking
        (masks if isinstance(masks, Masks) else Masks(masks)).validate(model)
    layers: list[AffineLayer] = []
    pending: nn.Linear | None = None
    pending_name = ""
    relus: list[bool] = []
    linears: list[tuple[str, nn.Linear]] = []
    for name, mod in _leaves(model):
        if isinstance(mod, nn.Linear):
            if pending is not None:
                relus.append(False)
                linears.append((pending_name, pending))
            pending, pending_name = mod, name
        elif isinstance(mod, nn.ReLU):
            if pending is None:
                raise PrunelabError(f"module {name!r}: a ReLU must follow a Linear layer in an MLP")
            relus.append(True)
            linears.append((pending_name, pending))
            pending = None
        elif isinstance(mod, _NOOPS):
            continue
        else:
            raise PrunelabError(
                f"module {name!r} is a {type(mod).__name__}; this analysis supports ReLU MLPs "
                "made of Flatten, Linear, ReLU (and Dropout/Identity) only"
            )
    if pending is not None:
        relus.append(False)
        linears.append((pending_name, pending))
    if not linears:
        raise PrunelabError("model has no Linear layer; this analysis needs a ReLU MLP")
    for i, ((name, lin), relu) in enumerate(zip(linears, relus)):
        last = i == len(linears) - 1
        if relu == last:
            what = "must not be followed by a ReLU" if last else "must be followed by a ReLU"
            raise PrunelabError(f"Linear layer {name!r} {what} (the analysis expects ReLU hidden layers)")
        w = lin.weight.detach().to(dtype=dtype, device="cpu").clone()
        if masks is not None and f"{name}.weight" in masks:
            w = w * masks[f"{name}.weight"].to(device="cpu", dtype=dtype)
        b = (
            lin.bias.detach().to(dtype=dtype, device="cpu").clone()
            if lin.bias is not None
            else torch.zeros(lin.out_features, dtype=dtype)
        )
        layers.append(AffineLayer(name=name, weight=w, bias=b, relu=relu))
    for a, b in zip(layers, layers[1:]):
        if a.weight.shape[0] != b.weight.shape[1]:
            raise PrunelabError(
                f"layers {a.name!r} ({a.weight.shape[0]} outputs) and {b.name!r} "
                f"({b.weight.shape[1]} inputs) do not chain"
            )
    return layers


def widths(layers: list[AffineLayer]) -> list[int]:
    """[n_0, n_1, ..., n_L]: the input dimension then each layer's width."""
    return [layers[0].weight.shape[1]] + [l.weight.shape[0] for l in layers]
