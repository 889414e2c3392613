"""Effective sparsity: a kept weight that lies on no input-to-output path does nothing.

Vysogorets & Kempe, "Connectivity Matters: Neural Network Pruning Through the Lens of Effective
Sparsity", JMLR 24 (2023): a connection is *effective* iff it belongs to at least one path
from an input to an output through unpruned connections; effective sparsity is the fraction of the
prunable weights that are not effective, and it is always >= the direct sparsity.

How it is computed (one forward + one backward pass, any model that ``torch.fx`` can trace): the
model's graph is re-run as a *boolean connectivity network*. Every masked Linear/Conv weight becomes
its 0/1 mask (unmasked ones become all ones), biases are dropped, BatchNorm becomes a per-channel 0/1
scale, element-wise activations (ReLU, GELU, ``F.relu`` calls, ...) become the identity, max-pooling
becomes sum-pooling (a max could pick a zero and hide a live input), and after every op that sums
values a straight-through boolean ``x -> [x > 0]`` (backward ``g -> [g > 0]``) is applied. With an
all-ones input, a unit's forward value is 1 iff an input reaches it; with ``sum(outputs)`` as the loss,
its gradient is positive iff it reaches an output; so a kept weight's gradient is positive iff it lies
on an input-output path. Values stay in {0, 1} between ops and each sum is bounded by its fan-in, so
nothing can overflow or underflow. We do not use SynFlow-style float path counts (``|W|`` products
summed over paths, as the authors' code does): the number of paths grows like fan-in^depth
(~4608^13 for VGG-16), overflowing float32 and even float64 on deep nets, and small weights underflow
to 0, silently marking live weights dead.

Choices the paper leaves open, made here:
  * biases are not inputs: a unit fed only by its bias has no effective input (its output is a
    constant that training could fold into the next layer's bias), likewise BatchNorm shifts and
    constants added to activations;
  * conv nets are analysed at the level of (channel, position) nodes, so padding counts: a weight
    that only ever multiplies padding (or positions no pooling window reads) is not effective;
  * a BatchNorm channel whose weight is 0, or whose weight is masked, is cut; Linear/Conv weights
    not covered by the masks count as dense (all kept), whatever their values;
  * multiplying two activations (gating, attention) has no path semantics here and is an error, as
    is any op this module does not know: we name the op rather than guess.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.utils import compression_ratio

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_WEIGHTED = (nn.Linear, *_CONV)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# Modules and functions that act element-wise (so keep connectivity as it is) or only re-arrange values.
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardtanh, nn.Softplus, nn.Sigmoid, nn.Tanh, nn.PReLU, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Softmax, nn.LogSoftmax,
)
_RESHAPE_MODULES = (nn.Flatten, nn.Unflatten, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)
_SUMMING_MODULES = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.Upsample,
)
_MAX_POOL_MODULES = {nn.MaxPool1d: F.avg_pool1d, nn.MaxPool2d: F.avg_pool2d, nn.MaxPool3d: F.avg_pool3d}
_ADAPTIVE_MAX_MODULES = {
    nn.AdaptiveMaxPool1d: F.adaptive_avg_pool1d,
    nn.AdaptiveMaxPool2d: F.adaptive_avg_pool2d,
    nn.AdaptiveMaxPool3d: F.adaptive_avg_pool3d,
}

_ELEMENTWISE_FUNCTIONS = {
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardtanh, F.softplus, F.sigmoid, F.tanh, torch.relu, torch.relu_, torch.sigmoid,
    torch.tanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.softmax,
    F.log_softmax, torch.softmax, torch.log_softmax, operator.neg, operator.pos, torch.neg,
}
_RESHAPE_FUNCTIONS = {
    operator.getitem, builtins.getattr, torch.flatten, torch.reshape, torch.cat, torch.concat,
    torch.stack, torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute, torch.chunk,
    torch.split, torch.narrow, torch.movedim,
}
_SUMMING_FUNCTIONS = {
    torch.mean, torch.sum, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.interpolate,
}
_MAX_POOL_FUNCTIONS = {F.max_pool1d: F.avg_pool1d, F.max_pool2d: F.avg_pool2d, F.max_pool3d: F.avg_pool3d}
_ADAPTIVE_MAX_FUNCTIONS = {
    F.adaptive_max_pool1d: F.adaptive_avg_pool1d,
    F.adaptive_max_pool2d: F.adaptive_avg_pool2d,
    F.adaptive_max_pool3d: F.adaptive_avg_pool3d,
}
_ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub, torch.subtract}
_MUL = {operator.mul, operator.imul, torch.mul, torch.multiply}
_DIV = {operator.truediv, operator.itruediv, torch.div, torch.true_divide}

_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "softmax", "log_softmax", "neg", "gelu"}
_RESHAPE_METHODS = {
    "size", "dim", "numel", "view", "view_as", "reshape", "reshape_as", "flatten", "permute",
    "transpose", "t", "contiguous", "squeeze", "unsqueeze", "expand", "expand_as", "repeat", "chunk",
    "split", "unbind", "narrow", "float", "double", "to", "type_as", "clone", "movedim",
}
_SUMMING_METHODS = {"mean", "sum"}
_ADD_METHODS = {"add", "add_", "sub", "sub_"}
_MUL_METHODS = {"mul", "mul_", "div", "div_"}


class _Boolean(torch.autograd.Function):
    """Straight-through boolean: forward ``x -> [x > 0]``, backward ``g -> [g > 0]``.

    Forward marks "reached from an input", backward marks "reaches an output"; both stay in {0, 1}.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return (grad > 0).to(grad.dtype)


def _boolean(x: Tensor) -> Tensor:
    return _Boolean.apply(x)


def _has_tensor(obj: Any) -> bool:
    if isinstance(obj, Tensor):
        return True
    if isinstance(obj, (list, tuple)):
        return any(_has_tensor(o) for o in obj)
    if isinstance(obj, dict):
        return any(_has_tensor(o) for o in obj.values())
    return False


def _op_name(target: Any) -> str:
    return getattr(target, "__name__", None) or repr(target)


def _max_pool_as_sum(avg_pool: Any, args: tuple, kwargs: dict, where: str) -> Tensor:
    """Max-pool -> boolean of avg-pool over the same windows (F.max_pool*d argument order)."""
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    bound = {**dict(zip(names, args)), **kwargs}
    dilation = bound.get("dilation", 1)
    if any(d != 1 for d in (dilation if isinstance(dilation, (tuple, list)) else [dilation])):
        raise PrunelabError(f"{where}: max-pooling with dilation={dilation!r} is not supported (only 1)")
    if bound.get("return_indices", False):
        raise PrunelabError(f"{where}: max-pooling with return_indices=True is not supported")
    pooled = avg_pool(
        bound["input"],
        bound["kernel_size"],
        bound.get("stride") or bound["kernel_size"],
        bound.get("padding", 0),
        ceil_mode=bool(bound.get("ceil_mode", False)),
        count_include_pad=True,
    )
    return _boolean(pooled)


def _connect_add(a: Any, b: Any) -> Any:
    """Sum (or difference) of two activations: a node is reached if either input reaches it.

    A constant added to one activation is bias-like and dropped; signs are irrelevant to paths.
    """
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return _boolean(a + b)
    return a if isinstance(a, Tensor) else b


def _connect_scale(a: Any, b: Any, what: str, divide: bool) -> Tensor:
    """Activation times (or divided by) a constant: the same paths, unless the constant is 0."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        raise PrunelabError(
            f"{what}: {'dividing' if divide else 'multiplying'} two activations (gating/attention) has no "
            "path semantics; effective sparsity supports sums, not products, of activations"
        )
    if not isinstance(a, Tensor):
        if divide:
            raise PrunelabError(f"{what}: dividing a constant by an activation is not supported")
        a, b = b, a
    if not divide and float(b) == 0.0:
        return torch.zeros_like(a)
    return a


class _ConnectivityInterpreter:
    """Runs a traced model's graph as the boolean connectivity network of the module docstring."""

    def __init__(self, model: nn.Module, weights: dict[str, Tensor], scales: dict[str, Tensor]):
        self.model = model
        self.weights = weights  # module name -> 0/1 float weight (leaf, requires grad when masked)
        self.scales = scales  # BatchNorm module name -> 0/1 float per-channel scale
        self.outputs: dict[str, list[Tensor]] = {}  # weighted module name -> boolean outputs

    def get_attr(self, target: str, args: tuple, kwargs: dict) -> Any:
        raise PrunelabError(
            f"the model reads attribute {target!r} directly in forward(); effective sparsity only "
            "supports parameters used through Linear/Conv/BatchNorm modules"
        )

    def run(self, graph: torch.fx.Graph, x: Tensor) -> Any:
        """Evaluate ``graph`` node by node on input ``x`` (extra inputs take their defaults)."""
        env: dict[torch.fx.Node, Any] = {}
        first = True
        for node in graph.nodes:
            if node.op == "placeholder":
                if not first and not node.args:
                    raise PrunelabError(f"forward() input {node.target!r} has no default; only one input is supported")
                env[node] = x if first else node.args[0]
                first = False
                continue
            args = torch.fx.node.map_arg(node.args, env.__getitem__)
            kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
            if node.op == "output":
                return args[0]
            try:
                env[node] = getattr(self, node.op)(node.target, args, kwargs)
            except RuntimeError as exc:
                raise PrunelabError(
                    f"input_shape {tuple(x.shape[1:])} does not fit the model: {node.op} {_op_name(node.target)!r} "
                    f"failed ({str(exc).splitlines()[0]})"
                ) from None
        raise PrunelabError("the traced model has no output")

    def _record(self, name: str, y: Tensor) -> Tensor:
        if y.requires_grad:
            y.retain_grad()
        self.outputs.setdefault(name, []).append(y)
        return y

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        mod = self.model.get_submodule(target)
        where = f"module {target!r} ({type(mod).__name__})"
        x = args[0] if args else kwargs.get("input")
        if isinstance(mod, nn.Linear):
            return self._record(target, _boolean(F.linear(x, self._weight(target, mod, x))))
        if isinstance(mod, _CONV):
            return self._record(target, _boolean(mod._conv_forward(x, self._weight(target, mod, x), None)))
        if isinstance(mod, _BATCHNORM):
            scale = self.scales.get(target)
            if scale is None:
                return x
            return x * scale.view(1, -1, *([1] * (x.dim() - 2)))
        if isinstance(mod, _ELEMENTWISE_MODULES):
            return x
        if isinstance(mod, _RESHAPE_MODULES):
            return mod(x)
        if isinstance(mod, _SUMMING_MODULES):
            return _boolean(mod(x))
        if type(mod) in _MAX_POOL_MODULES:
            kw = dict(stride=mod.stride, padding=mod.padding, dilation=mod.dilation,
                      ceil_mode=mod.ceil_mode, return_indices=mod.return_indices)
            return _max_pool_as_sum(_MAX_POOL_MODULES[type(mod)], (x, mod.kernel_size), kw, where)
        if type(mod) in _ADAPTIVE_MAX_MODULES:
            if mod.return_indices:
                raise PrunelabError(f"{where}: return_indices=True is not supported")
            return _boolean(_ADAPTIVE_MAX_MODULES[type(mod)](x, mod.output_size))
        raise PrunelabError(
            f"{where} is not supported by effective sparsity; supported: Linear, Conv1d/2d/3d, "
            "BatchNorm, element-wise activations, dropout, pooling, flatten, zero padding, upsampling, "
            "and additions of activations"
        )

    def _weight(self, name: str, mod: nn.Module, x: Tensor) -> Tensor:
        if name not in self.weights:  # not masked: dense
            self.weights[name] = torch.ones(mod.weight.shape, dtype=x.dtype, device=x.device)
        return self.weights[name]

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if not _has_tensor(args) and not _has_tensor(kwargs):
            return target(*args, **kwargs)  # shape arithmetic on Python numbers
        where = f"function {_op_name(target)}"
        if target in _ELEMENTWISE_FUNCTIONS:
            return args[0] if args else kwargs["input"]
        if target in _RESHAPE_FUNCTIONS:
            return target(*args, **kwargs)
        if target in _SUMMING_FUNCTIONS:
            return _boolean(target(*args, **kwargs))
        if target in _MAX_POOL_FUNCTIONS:
            return _max_pool_as_sum(_MAX_POOL_FUNCTIONS[target], args, kwargs, where)
        if target in _ADAPTIVE_MAX_FUNCTIONS:
            x, size = (list(args) + [kwargs.get("output_size")])[:2]
            return _boolean(_ADAPTIVE_MAX_FUNCTIONS[target](x, size))
        if target is F.pad:
            mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
            return F.pad(args[0], kwargs.get("pad", args[1] if len(args) > 1 else None), mode=mode)
        a, b = self._two_operands(args, kwargs)
        if target in _ADD:
            return _connect_add(a, b)
        if target in _MUL or target in _DIV:
            return _connect_scale(a, b, where, divide=target in _DIV)
        raise PrunelabError(
            f"{where} is not supported by effective sparsity (its path semantics are unknown); "
            "use Linear/Conv/BatchNorm modules, element-wise activations, pooling, flatten and additions"
        )

    def call_method(self, target: str, args: tuple, kwargs: dict) -> Any:
        where = f"method Tensor.{target}"
        if target in _ELEMENTWISE_METHODS:
            return args[0]
        if target in _RESHAPE_METHODS:
            return getattr(args[0], target)(*args[1:], **kwargs)
        if target in _SUMMING_METHODS:
            return _boolean(getattr(args[0], target)(*args[1:], **kwargs))
        a, b = self._two_operands(args, kwargs)
        if target in _ADD_METHODS:
            return _connect_add(a, b)
        if target in _MUL_METHODS:
            return _connect_scale(a, b, where, divide=target.startswith("div"))
        raise PrunelabError(f"{where} is not supported by effective sparsity (its path semantics are unknown)")

    @staticmethod
    def _two_operands(args: tuple, kwargs: dict) -> tuple[Any, Any]:
        ops = list(args[:2])
        for key in ("input", "other"):
            if key in kwargs:
                ops.append(kwargs[key])
        return (ops + [None, None])[0], (ops + [None, None])[1]


# ---------------------------------------------------------------------------------------------------
# Input checks


def _owner(model: nn.Module, key: str) -> tuple[str, nn.Module]:
    module_name, _, param = key.rpartition(".")
    try:
        mod = model.get_submodule(module_name)
    except AttributeError:
        mod = None
    if mod is None or param != "weight" or not isinstance(mod, (*_WEIGHTED, *_BATCHNORM)):
        raise PrunelabError(
            f"mask key {key!r} is not the weight of a Linear, Conv1d/2d/3d or BatchNorm layer of the "
            "model; effective sparsity takes masks keyed by such parameter names (e.g. 'features.0.weight')"
        )
    return module_name, mod


def _check_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(masks, Mapping):
        raise PrunelabError(f"masks must be a mapping of parameter name -> bool tensor, got {type(masks).__name__}")
    if len(masks) == 0:
        raise PrunelabError("masks are empty: give at least one parameter name -> bool tensor")
    params = dict(model.named_parameters())
    out: dict[str, Tensor] = {}
    for key, mask in masks.items():
        if key not in params:
            raise PrunelabError(f"mask key {key!r} is not a parameter of the model")
        _owner(model, key)
        if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(params[key].shape):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise PrunelabError(f"mask {key!r} has shape {got}; the parameter has shape {tuple(params[key].shape)}")
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise PrunelabError(f"mask {key!r} must be bool (or 0/1 values), got other values of dtype {mask.dtype}")
            mask = mask != 0
        out[key] = mask.detach()
    return out


def _input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        for _, mod in model.named_modules():
            if len(list(mod.children())) > 0 or isinstance(mod, (nn.Flatten, nn.Identity, nn.Dropout)):
                continue
            if isinstance(mod, nn.Linear):  # an MLP: the first layer's fan-in is the input
                shape = (mod.in_features,)
            break
    if shape is None:
        raise PrunelabError(
            "input_shape is needed (e.g. (3, 32, 32)): pass input_shape= or give the model an "
            "input_shape attribute"
        )
    if not isinstance(shape, Sequence) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise PrunelabError(f"input_shape must be a non-empty tuple of positive ints, got {shape!r}")
    return tuple(shape)


def _trace(model: nn.Module) -> torch.fx.Graph:
    try:
        return torch.fx.Tracer().trace(model)
    except PrunelabError:
        raise
    except Exception as exc:  # fx raises several types (TraceError, TypeError, ...)
        raise PrunelabError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); effective "
            "sparsity needs a forward() without data-dependent control flow"
        ) from None


# ---------------------------------------------------------------------------------------------------
# The connectivity pass


@dataclass
class _Connectivity:
    masks: dict[str, Tensor]
    effective: dict[str, Tensor]
    reached: dict[str, Tensor]  # module name -> bool per output unit: some input reaches it
    reaching: dict[str, Tensor]  # module name -> bool per output unit: it reaches some output


def _sum_outputs(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out.sum() if out.is_floating_point() else None
    parts = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else []
    sums = [s for s in (_sum_outputs(o) for o in parts) if s is not None]
    return torch.stack(sums).sum() if sums else None


def _unit_any(t: Tensor, linear: bool) -> Tensor:
    """Per output unit: is any entry positive? Units are the last dim of Linear, dim 1 of Conv."""
    t = t.movedim(-1 if linear else 1, 0)
    return (t.reshape(t.shape[0], -1) > 0).any(dim=1)


def _connectivity(model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int] | None) -> _Connectivity:
    masks = _check_masks(model, masks)
    shape = _input_shape(model, input_shape)
    graph = _trace(model)
    first = next(iter(masks.values()))
    device = first.device
    weights: dict[str, Tensor] = {}
    scales: dict[str, Tensor] = {}
    leaves: dict[str, Tensor] = {}
    for key, mask in masks.items():
        name, mod = _owner(model, key)
        leaf = mask.to(device=device, dtype=torch.float32).requires_grad_(True)
        leaves[key] = leaf
        if isinstance(mod, _BATCHNORM):
            scales[name] = leaf
        else:
            weights[name] = leaf
    for name, mod in model.named_modules():
        if isinstance(mod, _BATCHNORM) and name not in scales and mod.weight is not None:
            scales[name] = (mod.weight.detach() != 0).to(device=device, dtype=torch.float32)
        elif isinstance(mod, _BATCHNORM) and name in scales and mod.weight is not None:
            scales[name] = scales[name] * (mod.weight.detach() != 0).to(device=device, dtype=torch.float32)
    interp = _ConnectivityInterpreter(model, weights, scales)
    with torch.enable_grad():
        out = interp.run(graph, torch.ones((1, *shape), device=device))
        total = _sum_outputs(out)
        if total is not None and total.requires_grad:
            total.backward()
    effective = {
        key: (masks[key] & (leaf.grad > 0).to(masks[key].device)) if leaf.grad is not None
        else torch.zeros_like(masks[key])
        for key, leaf in leaves.items()
    }
    reached, reaching = {}, {}
    for name, outs in interp.outputs.items():
        linear = isinstance(model.get_submodule(name), nn.Linear)
        reached[name] = torch.stack([_unit_any(y.detach(), linear) for y in outs]).any(0)
        grads = [_unit_any(y.grad, linear) for y in outs if y.grad is not None]
        reaching[name] = torch.stack(grads).any(0) if grads else torch.zeros_like(reached[name])
    return _Connectivity(masks=masks, effective=effective, reached=reached, reaching=reaching)


def _as_masks(d: dict[str, Tensor]) -> Masks:
    return Masks(d)


# ---------------------------------------------------------------------------------------------------
# Public API


def effective_masks(
    model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int] | None = None
) -> Any:
    """The masks with every weight that lies on no input-output path removed (same keys, bool).

    ``input_shape`` (no batch dim) defaults to ``model.input_shape``, or to the fan-in of a model
    whose first layer is Linear. Returns a ``Masks`` when ``prunelab.masks`` is importable,
    else a dict. Vysogorets & Kempe (2023); the algorithm is in this module's docstring.
    """
    return _as_masks(_connectivity(model, masks, input_shape).effective)


def effective_sparsity(
    model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int] | None = None
) -> float:
    """Fraction of the masked (prunable) weights that are not effective: pruned or disconnected."""
    eff = _connectivity(model, masks, input_shape).effective
    total = sum(m.numel() for m in eff.values())
    return 1.0 - sum(int(m.sum()) for m in eff.values()) / total


@dataclass
class LayerEffective:
    """Direct and effective counts of one masked weight tensor.

    ``units`` are the layer's output neurons/channels; a unit is *dead* when it is on no
    input-output path (no effective weight enters it). ``no_input`` / ``no_output`` count units that
    no input reaches / that reach no output (for conv layers: at no position at all).
    """

    name: str
    total: int
    direct_kept: int
    effective_kept: int
    units: int
    dead_units: int
    no_input: int
    no_output: int

    @property
    def direct_sparsity(self) -> float:
        return 1.0 - self.direct_kept / self.total

    @property
    def effective_sparsity(self) -> float:
        return 1.0 - self.effective_kept / self.total


@dataclass
class EffectiveReport:
    """Per-layer and total direct vs effective sparsity (Vysogorets & Kempe, 2023)."""

    layers: list[LayerEffective]

    @property
    def total(self) -> int:
        return sum(l.total for l in self.layers)

    @property
    def direct_kept(self) -> int:
        return sum(l.direct_kept for l in self.layers)

    @property
    def effective_kept(self) -> int:
        return sum(l.effective_kept for l in self.layers)

    @property
    def direct_sparsity(self) -> float:
        return 1.0 - self.direct_kept / self.total

    @property
    def effective_sparsity(self) -> float:
        return 1.0 - self.effective_kept / self.total

    @property
    def dead_units(self) -> int:
        return sum(l.dead_units for l in self.layers)

    def to_row(self) -> dict[str, float | int]:
        """Totals as one flat results-table row (compression = 1/density, inf when nothing is kept)."""
        return {
            "total_weights": self.total,
            "direct_kept": self.direct_kept,
            "effective_kept": self.effective_kept,
            "direct_sparsity": self.direct_sparsity,
            "effective_sparsity": self.effective_sparsity,
            "direct_compression": compression_ratio(self.total, self.direct_kept),
            "effective_compression": compression_ratio(self.total, self.effective_kept),
            "dead_units": self.dead_units,
        }

    def layer_rows(self) -> list[dict[str, float | int | str]]:
        """One row per masked tensor, for per-layer tables."""
        return [
            {**vars(l), "direct_sparsity": l.direct_sparsity, "effective_sparsity": l.effective_sparsity}
            for l in self.layers
        ]


def effective_report(
    model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int] | None = None
) -> EffectiveReport:
    """Direct/effective kept counts and dead units for every masked tensor (one connectivity pass)."""
    conn = _connectivity(model, masks, input_shape)
    layers = []
    for key, mask in conn.masks.items():
        name, mod = _owner(model, key)
        eff = conn.effective[key]
        units = eff.shape[0]
        alive = eff.reshape(units, -1).any(dim=1)
        reached = conn.reached.get(name)
        reaching = conn.reaching.get(name)
        if isinstance(mod, _BATCHNORM):  # a channel scale is its own unit
            reached = reaching = alive
        if reached is None:  # module never called in forward()
            reached = reaching = torch.zeros(units, dtype=torch.bool)
        layers.append(
            LayerEffective(
                name=key,
                total=mask.numel(),
                direct_kept=int(mask.sum()),
                effective_kept=int(eff.sum()),
                units=units,
                dead_units=int((~alive).sum()),
                no_input=int((~reached).sum()),
                no_output=int((~reaching).sum()),
            )
        )
    return EffectiveReport(layers=layers)
