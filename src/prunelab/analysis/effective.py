"""Effective sparsity: a kept weight that lies on no input-to-output path does nothing.

Vysogorets & Kempe, "Connectivity Matters: Neural Network Pruning Through the Lens of Effective
Sparsity", JMLR 24 (2023): a connection is *effective* iff it belongs to at least one path
from an input to an output through unpruned connections; effective sparsity is the fraction of the
prunable weights that are not effective, and it is always >= the direct sparsity.

How it is computed (one forward + one backward pass): the model is traced with ``torch.fx`` (else
with ``torch.export``, which handles most HF transformers) and its graph is re-run as a *boolean
connectivity network* (``prunelab.analysis.effective_ops``; docs/effective_sparsity.md has the rule
of every op). Every masked weight becomes its 0/1 mask (unmasked ones become all ones), biases are
dropped, normalisation layers become 0/1 scales after mixing their group, element-wise activations
keep connectivity, max-pooling becomes sum-pooling (a max could pick a zero and hide a live input),
products of two activations (attention, gates) pass a path through one factor where the other is not
identically zero, and after every op that sums values a straight-through boolean ``x -> [x > 0]``
(backward ``g -> [g > 0]``) is applied. With an all-ones input, a unit's forward value is 1 iff a
source reaches it; with ``sum(outputs)`` as the loss, its gradient is positive iff it reaches an
output; so a kept weight's gradient is positive iff it lies on a source-output path. Values stay in
{0, 1} between ops and each sum is bounded by its fan-in, so nothing can overflow or underflow. We do
not use SynFlow-style float path counts (``|W|`` products summed over paths, as the authors' code
does): the number of paths grows like fan-in^depth (~4608^13 for VGG-16), overflowing float32 and
even float64 on deep nets, and small weights underflow to 0, silently marking live weights dead.

Choices the paper leaves open, made here:
  * biases are not inputs: a unit fed only by its bias has no effective input (its output is a
    constant that training could fold into the next layer's bias), likewise normalisation shifts and
    constants added to activations; the network analysed is the model without them;
  * sources are the model's floating-point inputs and parameters read directly in forward()
    (``cls_token``, position embeddings); for token-id inputs the embedding output is the input: every
    embedding row is an input unit that may sit at any position;
  * conv nets are analysed at the level of (channel, position) nodes, so padding counts: a weight
    that only ever multiplies padding (or positions no pooling window reads) is not effective;
  * a BatchNorm/LayerNorm/GroupNorm/RMSNorm channel whose weight is 0, or masked, is cut;
    Linear/Conv/embedding weights not covered by the masks count as dense, whatever their values;
  * ops whose path semantics are unknown (sorting, data-dependent indexing, comparisons of
    activations) are an error naming the op: we name the op rather than guess.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from prunelab.analysis import effective_ops as ops
from prunelab.analysis.effective_ops import Act, Network, Param, Unsupported
from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.models.adapters import TensorAdapter, UnsupportedAdapter, adapter_for
from prunelab.utils import compression_ratio

_FX_FUNCTIONS = ops.fx_function_rules()
_FX_METHODS = ops.fx_method_rules()
_ATEN = ops.aten_rules()


def _op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None) or repr(target)
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod.startswith("torch") or mod == "" or getattr(target, "__self__", None) is torch:
        return f"torch.{name}" if not mod.startswith("_operator") else name
    return f"{mod}.{name}" if mod and mod not in {"builtins", "_operator"} else name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


# ---------------------------------------------------------------------------------------------------
# Running a graph


class _Run:
    """One connectivity pass over a torch.fx or torch.export graph."""

    def __init__(self, model: nn.Module, net: Network, alias: dict[int, str], what: str) -> None:
        self.model = model
        self.net = net
        self.alias = alias
        self.what = what  # how the inputs were given, for "does not fit" messages
        self.token_nodes: set[torch.fx.Node] = set()  # nodes whose value derives from integer model inputs

    def tokens(self, node: torch.fx.Node, value: Any) -> None:
        """Mark an integer model input (token ids) and what is computed from it."""
        found = [v for v in ([value] if isinstance(value, Tensor) else list(value) if isinstance(value, (list, tuple)) else [])
                 if isinstance(v, Tensor) and not v.is_floating_point()]
        if found:
            self.token_nodes.add(node)
            self.net.token_values.update(id(v) for v in found)

    def user_input(self, node: torch.fx.Node, value: Any) -> Any:
        self.tokens(node, value)
        return _Inputs.live(value)

    def attribute(self, owner: nn.Module, target: str) -> Any:
        obj: Any = owner
        for part in target.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, nn.Parameter) and id(obj) in self.alias:
            return self.net.param(self.alias[id(obj)])
        return obj

    def call(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        if kind == "call_module":
            mod = self.model.get_submodule(target)
            where = f"module {target!r} ({type(mod).__name__})"
            x = args[0] if args else next(iter(kwargs.values()), None)
            return ops.module_rule(self.net, target, mod, x, where)
        if not ops.has_live(args, kwargs):
            if kind == "call_method":
                return getattr(args[0], target)(*args[1:], **kwargs)
            return target(*args, **kwargs)  # constants: shape arithmetic, masks, position ids
        if kind == "call_method":
            where = f"method Tensor.{target}"
            entry = _FX_METHODS.get(target)
            if entry is None:
                raise Unsupported(f"{where} is not supported by effective sparsity (its path semantics are unknown)")
            rule, fn = entry
            return rule(self.net, fn, args, kwargs, target)
        if isinstance(target, torch._ops.OpOverload):
            where = f"op {target}"
            rule = _ATEN.get(target.overloadpacket)
            name = str(target)
        else:
            where = f"function {_op_name(target)}"
            rule = _FX_FUNCTIONS.get(target)
            name = getattr(target, "__name__", "")
        if rule is None:
            raise Unsupported(f"{where} is not supported by effective sparsity (its path semantics are unknown)")
        return rule(self.net, target, args, kwargs, name)

    def node(self, node: torch.fx.Node, env: dict) -> Any:
        args = torch.fx.node.map_arg(node.args, env.__getitem__)
        kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
        try:
            out = self.call(node.op, node.target, args, kwargs)
            if any(n in self.token_nodes for n in node.all_input_nodes):  # computed from token ids
                self.tokens(node, out)
            return out
        except (RuntimeError, IndexError) as exc:
            raise PrunelabError(
                f"{self.what} does not fit the model: {node.op} {_op_name(node.target)!r} failed "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            ) from None

    def run_fx(self, graph: torch.fx.Graph, inputs: _Inputs) -> Any:
        env: dict[torch.fx.Node, Any] = {}
        positional = list(inputs.args)
        for node in graph.nodes:
            if node.op == "placeholder":
                name = str(node.target).lstrip("*")
                if positional:
                    env[node] = self.user_input(node, positional.pop(0))
                elif name in inputs.kwargs:
                    env[node] = self.user_input(node, inputs.kwargs[name])
                elif node.args:
                    env[node] = node.args[0]
                else:
                    raise PrunelabError(
                        f"forward() input {name!r} has no default; give it in example_input= "
                        "(a tensor, a tuple of positional inputs or a dict of keyword inputs)"
                    )
            elif node.op == "get_attr":
                env[node] = self.attribute(self.model, node.target)
            elif node.op == "output":
                return env_map(node.args[0], env)
            else:
                env[node] = self.node(node, env)
        raise PrunelabError("the traced model has no output")

    def run_export(self, ep: Any, wrapper: nn.Module, inputs: _Inputs) -> Any:
        from torch.export.graph_signature import InputKind, OutputKind

        flat = torch.utils._pytree.tree_flatten((inputs.args, inputs.kwargs))[0]
        specs = list(ep.graph_signature.input_specs)
        if sum(s.kind == InputKind.USER_INPUT for s in specs) != len(flat):
            raise Unsupported(
                f"the torch.export graph takes {sum(s.kind == InputKind.USER_INPUT for s in specs)} inputs, the "
                f"example input has {len(flat)}"
            )
        user = iter(flat)
        env: dict[torch.fx.Node, Any] = {}
        placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
        for node, spec in zip(placeholders, specs):
            if spec.kind == InputKind.PARAMETER:
                env[node] = self.attribute(wrapper, spec.target)
            elif spec.kind == InputKind.BUFFER:
                env[node] = wrapper.get_buffer(spec.target)
            elif spec.kind == InputKind.CONSTANT_TENSOR:
                env[node] = ep.constants[spec.target]
            elif spec.kind == InputKind.USER_INPUT:
                env[node] = self.user_input(node, next(user))
            else:
                raise Unsupported(f"torch.export input of kind {spec.kind.name} is not supported")
        for node in ep.graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "get_attr":
                env[node] = self.attribute(ep.graph_module, node.target)
            elif node.op == "output":
                outs = env_map(node.args[0], env)
                kinds = [s.kind for s in ep.graph_signature.output_specs]
                return [o for o, k in zip(outs, kinds) if k == OutputKind.USER_OUTPUT]
            else:
                env[node] = self.node(node, env)
        raise PrunelabError("the exported model has no output")


def env_map(arg: Any, env: dict) -> Any:
    return torch.fx.node.map_arg(arg, env.__getitem__)


# ---------------------------------------------------------------------------------------------------
# Input checks


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
        if "bias" in key.rpartition(".")[2]:
            raise PrunelabError(
                f"mask key {key!r} is a bias, not the weight of a layer: biases are not inputs of the "
                "connectivity network and have no effective mask (give weights, e.g. 'features.0.weight')"
            )
        if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(params[key].shape):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise PrunelabError(f"mask {key!r} has shape {got}; the parameter has shape {tuple(params[key].shape)}")
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise PrunelabError(f"mask {key!r} must be bool (or 0/1 values), got other values of dtype {mask.dtype}")
            mask = mask != 0
        out[key] = mask.detach()
    return out


def _first_leaf(model: nn.Module) -> nn.Module | None:
    for _, mod in model.named_modules():
        if len(list(mod.children())) > 0 or isinstance(mod, (nn.Flatten, nn.Identity, nn.Dropout)):
            continue
        return mod
    return None


def _input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        first = _first_leaf(model)
        if isinstance(first, nn.Linear):  # an MLP: the first layer's fan-in is the input
            shape = (first.in_features,)
    if shape is None:
        raise PrunelabError(
            "input_shape is needed (e.g. (3, 32, 32)): pass input_shape= or give the model an "
            "input_shape attribute; for token models pass example_input= (e.g. token ids of shape (1, T))"
        )
    if not isinstance(shape, Sequence) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise PrunelabError(f"input_shape must be a non-empty tuple of positive ints, got {shape!r}")
    return tuple(shape)


@dataclass
class _Inputs:
    """The example call: positional and keyword inputs (real values, used to trace)."""

    args: tuple
    kwargs: dict
    what: str

    @staticmethod
    def live(x: Any) -> Any:
        """Floating-point inputs are the sources (all ones); ids and masks stay as they are."""
        return Act(torch.ones(x.shape, dtype=torch.float32, device=x.device)) if ops._is_data(x) else x


def _inputs(model: nn.Module, input_shape: Sequence[int] | None, example_input: Any, device: torch.device) -> _Inputs:
    if example_input is not None:
        if input_shape is not None:
            raise PrunelabError("give input_shape= or example_input=, not both")
        if isinstance(example_input, Tensor):
            return _Inputs((example_input,), {}, "example_input")
        if isinstance(example_input, tuple):
            return _Inputs(example_input, {}, "example_input")
        if isinstance(example_input, Mapping):
            return _Inputs((), dict(example_input), "example_input")
        raise PrunelabError(
            f"example_input must be a tensor, a tuple of positional inputs or a dict of keyword inputs, "
            f"got {type(example_input).__name__}"
        )
    adapter = adapter_for(model)
    if not isinstance(adapter, (TensorAdapter, UnsupportedAdapter)):  # a transformers model with a head
        shape = tuple(input_shape) if input_shape is not None else adapter.default_input_shape(model)
        shape = _input_shape(model, shape)
        args, kwargs = adapter.dummy_input(model, shape, dtype=torch.float32, device=device)
        return _Inputs(tuple(args), dict(kwargs), f"input_shape {shape}")
    shape = _input_shape(model, input_shape)
    if isinstance(_first_leaf(model), nn.Embedding):  # token ids: the embedding output is the input
        return _Inputs((torch.zeros((1, *shape), dtype=torch.long, device=device),), {}, f"input_shape {shape}")
    return _Inputs((torch.ones((1, *shape), device=device),), {}, f"input_shape {shape}")


# ---------------------------------------------------------------------------------------------------
# Tracing


class _Tracer(torch.fx.Tracer):
    """Keeps torch.nn modules with a connectivity rule as leaves and traces into every other module."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, ops.LEAF_MODULES) and type(m).__module__.startswith("torch.nn")


def _trace_fx(model: nn.Module) -> torch.fx.Graph:
    try:
        return _Tracer().trace(model)
    except PrunelabError:
        raise
    except Exception as exc:  # noqa: BLE001  (fx raises several types: TraceError, TypeError, ...)
        raise Unsupported(f"cannot trace {type(model).__name__} with torch.fx ({_first_line(exc)})") from None


class _Outputs(nn.Module):
    """Calls the model and returns its tensors as a flat tuple (HF outputs hold caches export can't)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Tensor, ...]:
        found: list[Tensor] = []

        def walk(o: Any) -> None:
            if isinstance(o, Tensor):
                found.append(o)
            elif isinstance(o, Mapping):
                for v in o.values():
                    walk(v)
            elif isinstance(o, (list, tuple)):
                for v in o:
                    walk(v)

        walk(self.model(*args, **kwargs))
        return tuple(found)


@contextlib.contextmanager
def _quiet_torch_logs() -> Any:
    """torch.export logs graphs and guards at WARNING when it fails; we report one line instead."""
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("torch")]
    loggers.append(logging.getLogger("torch"))
    levels = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in levels:
            lg.setLevel(level)


def _export(model: nn.Module, inputs: _Inputs) -> tuple[Any, nn.Module]:
    """torch.export of the model in inference mode (its train/eval flags are restored)."""
    wrapper = _Outputs(model)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with _quiet_torch_logs():
            ep = torch.export.export(wrapper, tuple(inputs.args), dict(inputs.kwargs), strict=False)
    finally:
        for m, flag in flags:
            m.training = flag
    return ep, wrapper


# ---------------------------------------------------------------------------------------------------
# The connectivity pass


@dataclass
class _Connectivity:
    masks: dict[str, Tensor]
    effective: dict[str, Tensor]
    used: set[str]  # masked keys read in forward()
    records: dict[str, list[tuple[Tensor, int, int]]] = field(default_factory=dict)


def _sum_outputs(out: Any) -> Tensor | None:
    if isinstance(out, Act):
        return out.r.sum()
    if isinstance(out, Param):
        return out.conn.sum()
    if isinstance(out, Tensor):
        return None  # a constant output (no source reaches it)
    parts = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else []
    sums = [s for s in (_sum_outputs(o) for o in parts) if s is not None]
    return torch.stack(sums).sum() if sums else None


def _unit_any(t: Tensor, axis: int) -> Tensor:
    """Per unit along ``axis``: is any entry positive?"""
    t = t.movedim(axis, 0)
    return (t.reshape(t.shape[0], -1) > 0).any(dim=1)


def _params(model: nn.Module) -> tuple[dict[str, Tensor], dict[int, str]]:
    params = dict(model.named_parameters())
    alias = {id(p): name for name, p in params.items()}
    return params, alias


def _pass(model: nn.Module, masks: dict[str, Tensor], inputs: _Inputs, device: torch.device,
          graph: torch.fx.Graph | None, exported: tuple[Any, nn.Module] | None) -> Network:
    params, alias = _params(model)
    net = Network(params, masks, device)
    run = _Run(model, net, alias, inputs.what)
    with torch.enable_grad():
        out = run.run_fx(graph, inputs) if graph is not None else run.run_export(*exported, inputs)
        total = _sum_outputs(out)
        if total is not None and total.requires_grad:
            total.backward()
    return net


def _connectivity(
    model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int] | None, example_input: Any = None
) -> _Connectivity:
    masks = _check_masks(model, masks)
    device = next(iter(masks.values())).device
    inputs = _inputs(model, input_shape, example_input, device)
    try:
        net = _pass(model, masks, inputs, device, _trace_fx(model), None)
    except Unsupported as fx_error:  # fx cannot trace it, or its graph has an op without a rule
        try:
            exported = _export(model, inputs)
        except Exception as exc:  # noqa: BLE001  (whatever torch.export raises on a model it cannot trace)
            if str(fx_error).startswith("cannot trace"):
                raise PrunelabError(
                    f"{fx_error} nor with torch.export ({_first_line(exc)}); effective sparsity needs a "
                    "forward() without data-dependent control flow"
                ) from None
            raise PrunelabError(str(fx_error)) from None
        try:
            net = _pass(model, masks, inputs, device, None, exported)
        except Unsupported as exc:
            if str(fx_error).startswith("cannot trace"):
                raise PrunelabError(f"{exc} (in the torch.export graph of {type(model).__name__})") from None
            raise PrunelabError(f"{fx_error} (in the torch.export graph too: {exc})") from None
    effective = {}
    for key, mask in masks.items():
        grad = net.leaves[key].grad
        effective[key] = mask & (grad > 0).to(mask.device) if grad is not None else torch.zeros_like(mask)
    return _Connectivity(masks=masks, effective=effective, used=set(net.used), records=net.records)


def _as_masks(d: dict[str, Tensor]) -> Masks:
    return Masks(d)


# ---------------------------------------------------------------------------------------------------
# Public API


def effective_masks(
    model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int] | None = None,
    example_input: Any = None,
) -> Any:
    """The masks with every weight that lies on no input-output path removed (same keys, bool).

    ``input_shape`` (no batch dim) defaults to ``model.input_shape``, or to the fan-in of a model
    whose first layer is Linear; a model whose first layer is an Embedding gets token ids of that
    shape. ``example_input`` (instead of ``input_shape``): a tensor, a tuple of positional inputs or a
    dict of keyword inputs (e.g. ``{"input_ids": ids}`` for an HF model); its floating-point tensors
    are the inputs (the pass feeds ones of their shapes), integer/bool tensors (token ids, attention
    masks) are used as they are. Returns a ``Masks``. Vysogorets & Kempe (2023); the algorithm is in
    this module's docstring, the rule of every op in docs/effective_sparsity.md.
    """
    return _as_masks(_connectivity(model, masks, input_shape, example_input).effective)


def effective_sparsity(
    model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int] | None = None,
    example_input: Any = None,
) -> float:
    """Fraction of the masked (prunable) weights that are not effective: pruned or disconnected."""
    eff = _connectivity(model, masks, input_shape, example_input).effective
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
    model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int] | None = None,
    example_input: Any = None,
) -> EffectiveReport:
    """Direct/effective kept counts and dead units for every masked tensor (one connectivity pass).

    A weight's units are the output units it feeds (Linear rows, conv output channels, the output
    features of an embedding or of ``x @ W``); a scale (BatchNorm, LayerNorm, ...) or a parameter
    read directly is its own unit.
    """
    conn = _connectivity(model, masks, input_shape, example_input)
    layers = []
    for key, mask in conn.masks.items():
        eff = conn.effective[key]
        records = conn.records.get(key, [])
        w_axis = records[0][2] if records else 0
        if eff.dim() == 0:
            eff, mask, w_axis = eff.reshape(1), mask.reshape(1), 0
        units = eff.shape[w_axis]
        alive = _unit_any(eff, w_axis)
        same = [(y, axis) for y, axis, w in records if w == w_axis]
        if same:
            reached = torch.stack([_unit_any(y.detach(), axis).to(eff.device) for y, axis in same]).any(0)
            grads = [_unit_any(y.grad, axis).to(eff.device) for y, axis in same if y.grad is not None]
            reaching = torch.stack(grads).any(0) if grads else torch.zeros_like(reached)
        elif key in conn.used:  # a scale or a source: its own unit
            reached = reaching = alive
        else:  # never read in forward()
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
