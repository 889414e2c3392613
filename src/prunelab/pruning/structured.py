"""Structured (filter / neuron) pruning: unit masks, unit scores and which units to target.

A **unit** is one output channel of a ``Conv{1,2,3}d`` or one output neuron of a ``Linear``. Pruning
unit ``j`` of a layer must make that channel's output exactly zero, which takes more than zeroing
the filter:

* the filter row ``weight[j]`` and ``bias[j]``;
* the scale and shift (``weight[j]``, ``bias[j]``) of the BatchNorm that directly follows the layer
  (a BatchNorm maps a constant-zero channel to its shift beta, in train and eval mode alike);
* a residual addition into the channel (``bn2(conv2(h)) + shortcut(x)`` in a ResNet block): the
  other operand of the addition is zeroed in channel ``j`` by a forward hook on the module that
  produces it (:class:`ResidualGates`), as Bartoldson et al.'s reference code does with
  ``out[:, mask] += shortcut(x)[:, mask]``.

The parameter part is ordinary :class:`~prunelab.masks.Masks`: :func:`expand_unit_masks` turns
per-layer unit masks (``layer -> bool (units,)``) into parameter masks whose keys include biases and
BatchNorm weights/biases. :class:`~prunelab.pruning.enforce.MaskEnforcer` accepts any parameter
name, so it keeps all of them (values, gradients and optimizer state) at zero during training; note
that ``Masks.sparsity()`` of such masks then counts those extra entries too (use
:func:`weight_masks` to report weight sparsity). The residual part needs the hooks.

The BatchNorm and residual additions are found by tracing the model with ``torch.fx``
(:func:`channel_groups`); a model fx cannot trace may pass its :class:`ChannelGroup` s by hand.

Unit scores (higher = more important) live in the :data:`STRUCTURED` registry:
``fn(model, groups, unit_masks, ctx) -> {layer: Tensor(units,)}``. Built in: ``l1`` and ``l2``
(filter norms; Li, Kadav, Durdanovic, Samet & Graf, ICLR 2017, use L1), ``ebn``, the expected
post-BN-ReLU activation of Bartoldson, Morcos, Barbu & Erlebacher (NeurIPS 2020, Appendix):
E[ReLU(gamma z + beta)] for z ~ N(0, 1), and ``activations``, their code's running L1 norm of the
activations each unit sends into its ReLU (:class:`ActivationL1`; it needs statistics gathered during
training, which the pruning schedules of :mod:`prunelab.pruning.instability` collect). Targets (Bartoldson et al. 2020, Sec. 3): ``smallest``
(Prune_S), ``largest`` (Prune_L), ``random`` (Prune_R).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.pruning.context import ScoreContext
from prunelab.registry import Registry

UNIT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ADDS = (operator.add, operator.iadd, torch.add)
TARGETS = ("smallest", "largest", "random")

UnitScores = dict[str, torch.Tensor]
STRUCTURED: Registry[Callable[..., UnitScores]] = Registry("structured criterion")


@dataclass(frozen=True)
class ChannelGroup:
    """Everything that must be zeroed to remove one output unit of ``layer`` (a module name).

    ``params`` are parameter names whose dimension 0 indexes the units (the layer's weight and bias,
    the following BatchNorm's weight and bias); ``bn`` is that BatchNorm's module name (or None);
    ``residual`` are modules whose outputs are added into the layer's channels.
    """

    layer: str
    num_units: int
    params: tuple[str, ...]
    bn: str | None = None
    residual: tuple[str, ...] = ()

    @property
    def weight(self) -> str:
        return f"{self.layer}.weight"


class _Tracer(fx.Tracer):
    """fx tracer that keeps parameter-free custom modules (e.g. option-A shortcuts) as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if super().is_leaf_module(m, qualname):
            return True
        return not list(m.parameters()) and not list(m.children())


def _param_names(model: nn.Module, module_name: str, attrs: Sequence[str]) -> list[str]:
    module = model.get_submodule(module_name)
    return [f"{module_name}.{a}" for a in attrs if isinstance(getattr(module, a, None), nn.Parameter)]


def channel_groups(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, ChannelGroup]:
    """Trace ``model`` with torch.fx and return the :class:`ChannelGroup` of every unit layer.

    ``layers`` restricts the result to those module names (an unknown name is an error listing the
    valid ones). A BatchNorm counts as "following" a layer when it is the only consumer of the
    layer's output; a residual operand is the other input of an addition that consumes the layer's
    (or its BatchNorm's) output, and must be the output of a module.
    """
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...) on dynamic code
        raise PrunelabError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
            "build the ChannelGroup objects by hand and pass them as groups="
        ) from None
    groups: dict[str, ChannelGroup] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], UNIT_LAYERS):
            continue
        name = str(node.target)
        if name in groups:  # a layer called twice shares its units; keep the first analysis
            continue
        layer = modules[name]
        units = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        params = _param_names(model, name, ("weight", "bias"))
        out, bn = node, None
        users = list(node.users)
        if (
            len(users) == 1
            and users[0].op == "call_module"
            and isinstance(modules[users[0].target], _BATCHNORMS)
            and modules[users[0].target].num_features == units
        ):
            out, bn = users[0], str(users[0].target)
            params += _param_names(model, bn, ("weight", "bias"))
        residual = []
        for user in out.users:
            if user.op == "call_function" and user.target in _ADDS:
                for arg in user.args:
                    if arg is out:
                        continue
                    if not isinstance(arg, fx.Node) or arg.op != "call_module":
                        raise PrunelabError(
                            f"layer {name!r}: its output is added to {arg!r}, which is not the output "
                            "of a module, so the residual addition cannot be masked; pass groups= by hand"
                        )
                    residual.append(str(arg.target))
        groups[name] = ChannelGroup(name, units, tuple(params), bn, tuple(residual))
    if not groups:
        raise PrunelabError(f"model {type(model).__name__} has no Linear or Conv layer to prune units of")
    if layers is None:
        return groups
    if isinstance(layers, str) or not all(isinstance(x, str) for x in layers):
        raise PrunelabError(f"layers must be a list of module names, got {layers!r}")
    unknown = [x for x in layers if x not in groups]
    if unknown:
        raise PrunelabError(f"unknown layer(s) {unknown}; layers with units: {', '.join(groups)}")
    return {x: groups[x] for x in layers}


# --- unit masks -> parameter masks and residual gates ----------------------------------------------
def check_unit_masks(unit_masks: Mapping[str, torch.Tensor], groups: Mapping[str, ChannelGroup]) -> None:
    """PrunelabError unless every unit mask is a bool vector of its group's length."""
    for layer, mask in unit_masks.items():
        if layer not in groups:
            raise PrunelabError(f"unit mask for unknown layer {layer!r}; layers: {', '.join(groups)}")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 1:
            raise PrunelabError(f"unit mask {layer!r} must be a 1-D torch.bool tensor")
        if mask.numel() != groups[layer].num_units:
            raise PrunelabError(
                f"unit mask {layer!r} has {mask.numel()} entries; the layer has {groups[layer].num_units} units"
            )


def expand_unit_masks(
    model: nn.Module, unit_masks: Mapping[str, torch.Tensor], groups: Mapping[str, ChannelGroup]
) -> Masks:
    """Parameter masks (weights, biases, BatchNorm weight/bias) that remove the masked-out units."""
    check_unit_masks(unit_masks, groups)
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for layer, mask in unit_masks.items():
        for name in groups[layer].params:
            p = params[name]
            shape = (mask.numel(),) + (1,) * (p.dim() - 1)
            out[name] = mask.to(p.device).view(shape).expand_as(p).clone()
    return Masks(out)


def weight_masks(masks: Mapping[str, torch.Tensor]) -> Masks:
    """Only the ``*.weight`` entries of layers with >= 2-D weights (drops biases and BatchNorm)."""
    return Masks({k: v for k, v in masks.items() if k.endswith(".weight") and v.dim() >= 2})


class ResidualGates:
    """Forward hooks that zero, channel by channel, residual operands added into pruned units.

    ``update(unit_masks)`` changes which channels are zeroed; ``remove()`` takes the hooks off. A
    module feeding the residual of several layers gets the AND of their masks.
    """

    def __init__(self, model: nn.Module, groups: Mapping[str, ChannelGroup]) -> None:
        self.model = model
        self.groups = dict(groups)
        self._gates: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._layers_of: dict[str, list[str]] = {}
        for layer, group in self.groups.items():
            for res in group.residual:
                self._layers_of.setdefault(res, []).append(layer)
        for res in self._layers_of:
            module = model.get_submodule(res)
            self._handles.append(module.register_forward_hook(self._hook(res)))

    def _hook(self, res: str) -> Callable[..., Any]:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            gate = self._gates.get(res)
            if gate is None:
                return None
            shape = (1, gate.numel()) + (1,) * (output.dim() - 2)
            return output * gate.to(device=output.device, dtype=output.dtype).view(shape)

        return hook

    def update(self, unit_masks: Mapping[str, torch.Tensor]) -> None:
        check_unit_masks(unit_masks, self.groups)
        gates: dict[str, torch.Tensor] = {}
        for res, layers in self._layers_of.items():
            kept = [unit_masks[x] for x in layers if x in unit_masks]
            if kept and not all(bool(k.all()) for k in kept):
                gate = kept[0].clone()
                for k in kept[1:]:
                    gate &= k.to(gate.device)
                gates[res] = gate
        self._gates = gates

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._gates = [], {}


def apply_unit_masks(
    model: nn.Module, unit_masks: Mapping[str, torch.Tensor], groups: Mapping[str, ChannelGroup] | None = None
) -> tuple[Masks, ResidualGates]:
    """Zero the parameters of the masked-out units and install residual gates; returns both.

    The returned masks go to a :class:`~prunelab.pruning.enforce.MaskEnforcer` when training goes
    on; the gates stay on the model until ``gates.remove()``.
    """
    groups = groups if groups is not None else channel_groups(model, list(unit_masks))
    masks = expand_unit_masks(model, unit_masks, groups)
    masks.apply(model)
    gates = ResidualGates(model, {k: groups[k] for k in unit_masks})
    gates.update(unit_masks)
    return masks, gates


# --- unit scores -----------------------------------------------------------------------------------
def _layer_weight(model: nn.Module, group: ChannelGroup, unit_mask: torch.Tensor | None) -> torch.Tensor:
    w = model.get_submodule(group.layer).weight.detach()
    w = w.reshape(w.shape[0], -1)
    if unit_mask is not None:
        w = w * unit_mask.to(w.device, w.dtype).unsqueeze(1)
    return w


@STRUCTURED.register("l1")
def l1_scores(
    model: nn.Module, groups: Mapping[str, ChannelGroup], unit_masks: Mapping[str, torch.Tensor], ctx: ScoreContext
) -> UnitScores:
    """Filter L1 norm sum_i |W_ji| (Li et al., ICLR 2017, "Pruning filters for efficient ConvNets")."""
    return {k: _layer_weight(model, g, unit_masks.get(k)).abs().sum(1) for k, g in groups.items()}


@STRUCTURED.register("l2")
def l2_scores(
    model: nn.Module, groups: Mapping[str, ChannelGroup], unit_masks: Mapping[str, torch.Tensor], ctx: ScoreContext
) -> UnitScores:
    """Filter L2 norm ||W_j||_2, the default score of Bartoldson et al.'s (2020) code."""
    return {k: _layer_weight(model, g, unit_masks.get(k)).norm(dim=1) for k, g in groups.items()}


def expected_bn_relu(gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """E[ReLU(gamma z + beta)], z ~ N(0, 1): beta Phi(beta/|gamma|) + |gamma| phi(beta/|gamma|).

    Bartoldson et al. (2020, Appendix, "E[BN]"): the expected output of a BatchNorm channel after the
    ReLU, treating the normalised pre-activation as standard normal. At gamma = 0 it is the limit
    max(beta, 0). Computed in float64.
    """
    g, b = gamma.detach().double().abs(), beta.detach().double()
    safe = torch.where(g > 0, g, torch.ones_like(g))
    t = b / safe
    normal = torch.distributions.Normal(torch.zeros((), dtype=t.dtype), torch.ones((), dtype=t.dtype))
    value = b * normal.cdf(t) + g * normal.log_prob(t).exp()
    return torch.where(g > 0, value, b.clamp_min(0.0))


@STRUCTURED.register("ebn")
def ebn_scores(
    model: nn.Module, groups: Mapping[str, ChannelGroup], unit_masks: Mapping[str, torch.Tensor], ctx: ScoreContext
) -> UnitScores:
    """E[BN] of the BatchNorm following each layer (see :func:`expected_bn_relu`).

    Uses the BatchNorm's gamma, beta as they are (masked units score 0, gamma = beta = 0).
    """
    out: UnitScores = {}
    for k, g in groups.items():
        if g.bn is None:
            raise PrunelabError(f"structured criterion 'ebn' needs a BatchNorm after layer {k!r}; it has none")
        bn = model.get_submodule(g.bn)
        if bn.weight is None or bn.bias is None:
            raise PrunelabError(f"structured criterion 'ebn' needs an affine BatchNorm; {g.bn!r} has affine=False")
        out[k] = expected_bn_relu(bn.weight, bn.bias).to(bn.weight.dtype)
    return out


class ActivationL1:
    """Running per-unit L1 norm of the input of the ReLU after each layer, gathered during training.

    Bartoldson et al.'s ``activations`` score (GeneralizationStabilityTradeoff, ``models.py``:
    ``_make_conv_prunable`` lines 150-152, ``_prune_layer`` lines 233-235, the ResNet block forward
    lines 409-427). For each unit the tensor is what its ReLU receives: the output of the BatchNorm
    after the layer (the layer's own output without one) plus the residual operands added into it
    (``bn2(conv2(h)) + shortcut(x)`` for the last conv of a block, their "post-shortcut
    activations"). On every ``every``-th training forward of the model (their ``counter % 10 == 0``)
    the per-channel sum of ``|a|`` over the batch and all positions ``s`` updates
    ``m <- (1 - momentum) m + momentum s`` from ``m = 0`` (their ``.1 * s + .9 * m``). Eval-mode
    forwards are ignored. Use as a context manager or ``attach()`` / ``detach()``; ``values[layer]``
    is ``m``. (Their code has it for ResNets only; here it works on any model
    :func:`channel_groups` can trace.)
    """

    def __init__(self, model: nn.Module, groups: Mapping[str, ChannelGroup], every: int = 10,
                 momentum: float = 0.1) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise PrunelabError(f"every must be a positive integer, got {every!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
            raise PrunelabError(f"momentum must be in (0, 1], got {momentum!r}")
        self.model, self.groups = model, dict(groups)
        self.every, self.momentum = every, float(momentum)
        device = next(model.parameters()).device
        self.values = {k: torch.zeros(g.num_units, device=device) for k, g in self.groups.items()}
        self.forwards = 0
        self._record = False
        self._outputs: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def _store(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if self._record:
                self._outputs[name] = output.detach()

        return hook

    def _begin(self, module: nn.Module, inputs: Any) -> None:
        self._outputs = {}
        self._record = False
        if module.training:
            self.forwards += 1
            self._record = self.forwards % self.every == 0

    def _end(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not self._record:
            return
        self._record = False
        with torch.no_grad():
            for layer, g in self.groups.items():
                a = self._outputs[g.bn or g.layer]
                for res in g.residual:
                    a = a + self._outputs[res]
                dims = [d for d in range(a.dim()) if d != 1]
                s = a.abs().sum(dim=dims).to(self.values[layer].dtype)
                self.values[layer] = (1.0 - self.momentum) * self.values[layer] + self.momentum * s
        self._outputs = {}

    def attach(self) -> ActivationL1:
        if self._handles:
            raise PrunelabError("this ActivationL1 is already attached")
        names = {g.bn or g.layer for g in self.groups.values()} | {r for g in self.groups.values() for r in g.residual}
        self._handles = [self.model.register_forward_pre_hook(self._begin),
                         self.model.register_forward_hook(self._end, always_call=True)]
        self._handles += [self.model.get_submodule(n).register_forward_hook(self._store(n)) for n in sorted(names)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> ActivationL1:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()


@STRUCTURED.register("activations")
def activation_scores(
    model: nn.Module, groups: Mapping[str, ChannelGroup], unit_masks: Mapping[str, torch.Tensor], ctx: ScoreContext
) -> UnitScores:
    """Running L1 norm of each unit's ReLU input (:class:`ActivationL1`), read from
    ``ctx.options["activations"]`` (``{layer: Tensor(units,)}``, what the pruning schedules pass);
    masked units score 0."""
    stats = (ctx.options or {}).get("activations") if ctx is not None else None
    if not isinstance(stats, Mapping):
        raise PrunelabError(
            "structured criterion 'activations' needs running activation statistics from training: use it in "
            "a pruning schedule (IterativeStructuredPruning, ...) or pass options['activations'] = ActivationL1(...).values"
        )
    out: UnitScores = {}
    for k in groups:
        if k not in stats:
            raise PrunelabError(f"no activation statistics for layer {k!r}; have: {', '.join(stats)}")
        score = stats[k].detach().clone()
        if k in unit_masks:
            score = score * unit_masks[k].to(score.device, score.dtype)
        out[k] = score
    return out


# --- which units to remove -------------------------------------------------------------------------
def select_units(
    scores: torch.Tensor,
    alive: torch.Tensor,
    k: int,
    target: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Bool vector of the ``k`` units to remove among the ``alive`` ones.

    ``smallest`` takes the k lowest scores (Prune_S), ``largest`` the k highest (Prune_L), ``random`` k
    uniformly at random (Prune_R, from ``generator``). Ties are broken by unit index (lower first).
    """
    if target not in TARGETS:
        raise PrunelabError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
    if alive.dtype != torch.bool or alive.shape != scores.shape or scores.dim() != 1:
        raise PrunelabError("scores and alive must be 1-D tensors of the same length (alive a bool tensor)")
    idx = torch.nonzero(alive.cpu(), as_tuple=False).flatten()
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= idx.numel():
        raise PrunelabError(f"cannot remove k={k!r} units: {idx.numel()} are still present")
    if target == "random":
        order = torch.randperm(idx.numel(), generator=generator)
    else:
        s = scores.detach().cpu().double()[idx]
        order = torch.sort(s, descending=(target == "largest"), stable=True).indices
    chosen = torch.zeros(alive.numel(), dtype=torch.bool)
    chosen[idx[order[:k]]] = True
    return chosen.to(alive.device)


def kept_units(num_units: int, fraction: float, event: int, num_events: int) -> int:
    """Units kept after pruning event ``event`` (1-based) of ``num_events``: a linear ramp.

    Bartoldson et al.'s code (``_prune_layer``): with N units and final count
    F = ceil((1 - fraction) N), event i keeps ceil(F + (N - F)(n - i)/n), so every event removes about
    (N - F)/n units and the last one reaches F. (``ceil`` is taken with a 1e-9 tolerance, so that
    float noise such as (1 - 0.7) * 10 = 3.0000000000000004 does not keep a unit too many.)
    """
    if not 0.0 <= fraction < 1.0:
        raise PrunelabError(f"fraction {fraction!r} must be in [0, 1)")
    if not 1 <= event <= num_events:
        raise PrunelabError(f"event {event} must be in 1..{num_events}")
    final = math.ceil((1.0 - fraction) * num_units - 1e-9)
    return math.ceil(final + (num_units - final) * (num_events - event) / num_events - 1e-9)
