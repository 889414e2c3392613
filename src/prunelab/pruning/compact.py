"""Physically remove pruned units: a plain, smaller ``nn.Module`` with the masked model's outputs.

:func:`remove_pruned_units` (and :func:`compact`, which also says what it did) takes a model and
masks, and returns a deep copy in which every removable pruned **unit** -- an output channel of a
``Conv``, an output neuron of a ``Linear`` or of ``transformers``' ``Conv1D`` (GPT-2), an MLP channel,
a whole attention head -- is gone, together with everything that depends on it: its bias, the
BatchNorm channel after it, the input columns of the layers that read it, residual-coupled channels,
concatenations. The dependency analysis is Torch-Pruning's ``DependencyGraph`` (Fang et al., CVPR
2023, "DepGraph: Towards Any Structural Pruning"); this module decides *which* units may go and runs
the graph's pruning groups.

**Which units.** A unit is a candidate when its weight row is entirely pruned (all False in the
mask of a masked layer; after ``masks.apply`` the row is exactly zero). Such a unit outputs a constant
(its bias, or 0), whatever the input. For a candidate, Torch-Pruning's group lists every tensor that
shares its index; the unit is removed only if removing the whole group leaves the outputs unchanged:

* every *producer* in the group is constant at that index: the weight rows of all Linear/Conv layers
  whose outputs meet there (for a ResNet's residual stream: the stem and every block's last conv of
  the stage, each must have pruned that channel), channel-wise ops (BatchNorm in eval mode, element-wise
  activations, additions, pooling, reshapes) and zero channels of option-A shortcuts;
* the group touches no op that mixes channels in a way the removal would change (LayerNorm,
  GroupNorm, an embedding, ``nn.MultiheadAttention``, an LSTM) and none of the model's outputs (a
  pruned row of the classifier is kept: removing it would change the output's shape);
* every *consumer* (a Linear/Conv/Conv1D reading the channel) receives either exactly 0 -- then
  dropping its input columns changes nothing -- or a non-zero constant ``c`` (a pruned unit whose bias,
  or BatchNorm shift, is not pruned: ``relu(b)`` is a constant). The constant is then **folded** into
  the consumer's bias, ``b' = b + W[:, j] c`` (Linear / Conv1D, also after a flatten) or
  ``b' = b + sum_k W[:, j, k] c`` (a convolution *without padding*, where every tap reads the constant);
  a zero-padded convolution reads 0 at the borders instead of ``c``, so there the unit is **kept**;
  so is a unit whose constant reaches a consumer that is not affine (an option-A shortcut);
* attention heads go whole: in a ``transformers`` attention module (BERT/ViT ``query/key/value`` or
  ``q_proj/k_proj/v_proj``, GPT-2's fused ``c_attn``) the q, k and v rows of a head are one group
  (Torch-Pruning couples them through the attention op) and a head is removed only when all of its
  rows are removable; the module's ``num_attention_heads`` / ``num_heads`` / ``all_head_size`` /
  ``split_size`` are updated. A pruned head with constant q and k has constant attention scores along
  the keys, softmax turns them into equal weights, and the head outputs its constant value vector,
  folded into the output projection's bias.

Every removal is checked: the compact model runs on the example inputs and its outputs must equal
the masked model's (float tolerance), else a :class:`~prunelab.errors.PrunelabError` says by how much
(a model whose ops Torch-Pruning misreads). Equality holds in **eval mode** (BatchNorm with running
statistics; in train mode a BatchNorm normalises with batch statistics, and a constant channel's
statistics differ).

**What Torch-Pruning (1.6) does not do, done here:**

* no pruner for ``transformers``' ``Conv1D`` (GPT-2; weight stored ``(in, out)``): a customised pruner;
* ``F.pad`` over channels (option-A shortcuts, :class:`~prunelab.models.resnet.PadShortcut`) is taken
  for an element-wise op, coupling channel ``j`` of a 32-channel stage with channel ``j`` of the
  16-channel stage before it (index 20 of stage 2 "is" index 20 of a 16-channel stage): the
  shortcuts are replaced by :class:`SelectPadShortcut`, with its own customised pruner;
* a ``split`` is mapped only along dim 1, and its graph outputs are paired with its chunks in the
  order the trace met them: GPT-2's ``query, key, value = c_attn(x).split(E, dim=2)`` is not mapped
  at all (q's head h coupled with the wrong columns of ``c_proj``), and where it is, the order can be
  wrong; here splits along dim 1 or the last dim are mapped by each consumer's autograd output number;
* every reshape of a 4-D tensor gets a conv-flatten index mapping (channel ``c`` -> features
  ``c*H*W...``), also a transformer's (batch, tokens, heads, head_dim) -> (batch, tokens, hidden)
  merge, where it scrambles head dimensions (seen on ``GPT2Model``): only 4-D -> 2-D reshapes keep it;
* its head bookkeeping (``num_heads``) lives in its ``MetaPruner`` and does not update
  ``transformers`` modules; it does not know which units are constant, folds no bias, and a group that
  reaches a model output (a classifier row) is not flagged.

Masks come from :mod:`prunelab.pruning.structured` (``expand_unit_masks``: weight rows plus bias and
BatchNorm entries, so removed units are exactly zero) or any masks whose rows are all pruned;
:func:`unit_masks` and :func:`head_masks` build them by layer name for ``transformers`` models, which
``torch.fx`` cannot trace. A model carrying forward hooks (e.g. the
:class:`~prunelab.pruning.structured.ResidualGates` of ``apply_unit_masks``) is refused: the copy's hooks
would still index the old channels. Remove them first; the gated residual channels of layers whose
coupled layers do not all prune them then stay (zero weight rows).
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.models.adapters import adapter_for, is_conv1d
from prunelab.models.resnet import PadShortcut

try:  # a declared dependency; compact() says so if an installation lacks it
    import torch_pruning as tp

    try:  # torch-pruning >= 1.5 (a dependency package); 1.4 kept them in dependency.py
        from torch_pruning.dependency.index_mapping import _FlattenIndexMapping, _SplitIndexMapping
    except ImportError:  # pragma: no cover - older torch-pruning
        from torch_pruning.dependency import _FlattenIndexMapping, _SplitIndexMapping  # type: ignore[no-redef]
except ImportError:  # pragma: no cover - exercised only without the dependency
    tp = None

__all__ = [
    "CompactResult",
    "SelectPadShortcut",
    "compact",
    "head_masks",
    "remove_pruned_units",
    "unit_masks",
]

#: ops in a group that make a removal change the function (they mix the channels they normalise / read)
_MIXING = (nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.MultiheadAttention, nn.LSTM, nn.GRU, nn.RNN)
#: channel-wise ops: a constant channel stays constant (BatchNorm in eval mode)
_CHANNELWISE = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.PReLU)


# --- modules and pruners Torch-Pruning lacks -------------------------------------------------------
class SelectPadShortcut(nn.Module):
    """Option-A shortcut with arbitrary channel placement: ``out[:, o] = x[:, ::s, ::s][source[o]]``, or 0
    where ``source[o] == -1``.

    :class:`~prunelab.models.resnet.PadShortcut` is the case ``source = [0, ..., in - 1, -1, ...]``;
    removing channels on either side only edits ``source`` (a buffer, so it is in the state dict).
    """

    def __init__(self, in_channels: int, source: Sequence[int], stride: int) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.stride = int(stride)
        self.register_buffer("source", torch.as_tensor(list(source), dtype=torch.long))

    @property
    def out_channels(self) -> int:
        return int(self.source.numel())

    @classmethod
    def from_pad(cls, pad: PadShortcut) -> SelectPadShortcut:
        source = list(range(pad.in_channels)) + [-1] * (pad.out_channels - pad.in_channels)
        return cls(pad.in_channels, source, pad.stride)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        zero = x.new_zeros((x.shape[0], 1, *x.shape[2:]))
        index = torch.where(self.source >= 0, self.source, self.in_channels).to(x.device)
        return torch.cat([x, zero], dim=1).index_select(1, index)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


if tp is not None:

    class _SelectPadPruner(tp.pruner.BasePruningFunc):
        """Output and input channels of a :class:`SelectPadShortcut` are pruned independently."""

        TARGET_MODULES = (SelectPadShortcut,)

        def prune_out_channels(self, layer: SelectPadShortcut, idxs: Sequence[int]) -> SelectPadShortcut:
            drop = {int(i) for i in idxs}
            keep = [o for o in range(layer.out_channels) if o not in drop]
            layer.source = layer.source[keep].clone()
            return layer

        def prune_in_channels(self, layer: SelectPadShortcut, idxs: Sequence[int]) -> SelectPadShortcut:
            drop = {int(i) for i in idxs}
            new_index = torch.full((layer.in_channels,), -1, dtype=torch.long)
            kept = [i for i in range(layer.in_channels) if i not in drop]
            new_index[kept] = torch.arange(len(kept))
            src = layer.source.cpu()
            mapped = torch.where(src >= 0, new_index[src.clamp_min(0)], torch.full_like(src, -1))
            layer.source = mapped.to(layer.source.device)
            layer.in_channels = len(kept)
            return layer

        def get_out_channels(self, layer: SelectPadShortcut) -> int:
            return layer.out_channels

        def get_in_channels(self, layer: SelectPadShortcut) -> int:
            return layer.in_channels

    class _Conv1DPruner(tp.pruner.BasePruningFunc):
        """``transformers.pytorch_utils.Conv1D``: ``x @ W + b`` with ``W`` of shape (in, out)."""

        TARGET_MODULES = None

        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            keep = sorted(set(range(layer.weight.shape[1])) - {int(i) for i in idxs})
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
            if layer.bias is not None:
                layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
            layer.nf = len(keep)
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            keep = sorted(set(range(layer.weight.shape[0])) - {int(i) for i in idxs})
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
            if hasattr(layer, "nx"):
                layer.nx = len(keep)
            return layer

        def get_out_channels(self, layer: nn.Module) -> int:
            return int(layer.weight.shape[1])

        def get_in_channels(self, layer: nn.Module) -> int:
            return int(layer.weight.shape[0])


# --- masks by layer name ---------------------------------------------------------------------------
def _weighted(model: nn.Module, name: str) -> nn.Module:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise PrunelabError(f"the model has no module {name!r}") from None
    if not (isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or is_conv1d(module)):
        raise PrunelabError(f"module {name!r} is a {type(module).__name__}, not a Linear, Conv or Conv1D layer")
    return module


def _num_units(module: nn.Module) -> int:
    if is_conv1d(module):
        return int(module.weight.shape[1])
    if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
        return int(module.weight.shape[1])
    return int(module.weight.shape[0])


def _unit_view(module: nn.Module, tensor: Tensor) -> Tensor:
    """``tensor`` (of the weight's shape) as (units, everything else)."""
    if is_conv1d(module):
        return tensor.t()
    if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:  # (in, out / groups, *kernel)
        return tensor.transpose(0, 1).reshape(tensor.shape[1], -1)
    return tensor.reshape(tensor.shape[0], -1)


def _row_mask(module: nn.Module, keep: Tensor) -> Tensor:
    w = module.weight
    if is_conv1d(module):
        return keep.view(1, -1).expand_as(w).clone()
    return keep.view((-1,) + (1,) * (w.dim() - 1)).expand_as(w).clone()


def unit_masks(
    model: nn.Module, keep: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None, *, bias: bool = True
) -> Masks:
    """Masks that prune whole units of Linear / Conv / Conv1D layers given by module name.

    ``keep[layer]`` is a bool vector (True = kept) over the layer's output units (a ``Conv1D``'s
    columns). The weight rows of pruned units are masked, and with ``bias=True`` their bias entries
    too (then the unit outputs exactly 0); ``masks`` (optional) are combined with (AND) the result.
    For models ``torch.fx`` traces, :func:`prunelab.pruning.structured.expand_unit_masks` also masks
    the BatchNorm after each layer.
    """
    out: dict[str, Tensor] = dict(masks or {})
    params = dict(model.named_parameters())
    for name, k in keep.items():
        module = _weighted(model, name)
        n = _num_units(module)
        if not isinstance(k, Tensor) or k.dtype != torch.bool or k.shape != (n,):
            raise PrunelabError(f"keep[{name!r}] must be a bool tensor of shape ({n},) (the layer's units)")
        k = k.to(module.weight.device)
        entries = [(f"{name}.weight", _row_mask(module, k))]
        if bias and getattr(module, "bias", None) is not None:
            entries.append((f"{name}.bias", k.clone()))
        for key, m in entries:
            if key not in params:
                raise PrunelabError(f"parameter {key!r} of layer {name!r} is not a named parameter of the model")
            out[key] = out[key].to(m.device) & m if key in out else m
    return Masks(out)


@dataclass(frozen=True)
class _Attention:
    """A ``transformers`` attention module: its q/k/v projections and head size."""

    name: str
    module: nn.Module
    qkv: tuple[str, ...]  # child names: 3 separate projections, or 1 fused (q|k|v along the output)
    out: str | None
    head_dim: int

    @property
    def fused(self) -> bool:
        return len(self.qkv) == 1

    def layers(self) -> list[nn.Module]:
        return [getattr(self.module, n) for n in self.qkv]

    def q_width(self) -> int:
        w = _num_units(self.layers()[0])
        return w // 3 if self.fused else w

    def head_of(self, layer: nn.Module, idx: int) -> int:
        width = self.q_width()
        return (idx % width if self.fused else idx) // self.head_dim

    def num_heads(self) -> int:
        return self.q_width() // self.head_dim


_SEPARATE = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q", "k", "v"))
_FUSED = ("c_attn", "qkv", "query_key_value")
_OUT = ("o_proj", "out_proj", "c_proj", "dense", "proj", "o")
_HEAD_DIM = ("attention_head_size", "head_dim", "head_size")


def attention_modules(model: nn.Module) -> dict[str, _Attention]:
    """The attention modules :func:`compact` removes heads from, by module name (see the module doc)."""
    found: dict[str, _Attention] = {}
    for name, module in model.named_modules():
        head_dim = next((getattr(module, a) for a in _HEAD_DIM if isinstance(getattr(module, a, None), int)), None)
        if not head_dim:
            continue
        children = dict(module.named_children())

        def ok(n: str, children: dict[str, nn.Module] = children) -> bool:
            return n in children and (isinstance(children[n], nn.Linear) or is_conv1d(children[n]))

        qkv: tuple[str, ...] | None = next((s for s in _SEPARATE if all(ok(n) for n in s)), None)
        if qkv is None:
            fused = next((n for n in _FUSED if ok(n) and _num_units(children[n]) % (3 * head_dim) == 0), None)
            if fused is None:
                continue
            qkv = (fused,)
        widths = {_num_units(children[n]) for n in qkv}
        if len(widths) != 1 or next(iter(widths)) % head_dim:
            continue  # grouped-query attention (k/v narrower than q) is not handled here
        out = next((n for n in _OUT if ok(n) and n not in qkv), None)
        found[name] = _Attention(name, module, qkv, out, int(head_dim))
    return found


def head_masks(
    model: nn.Module, heads: Mapping[str, Iterable[int]], masks: Mapping[str, Tensor] | None = None, *, bias: bool = True
) -> Masks:
    """Masks that prune whole attention heads: ``heads[attention_module_name] = [head, ...]``.

    The q, k and v rows of each head (of the separate projections or of GPT-2's fused ``c_attn``) are
    masked, with their biases when ``bias=True``; ``masks`` are combined (AND) with the result.
    """
    att = attention_modules(model)
    keep: dict[str, Tensor] = {}
    for name, hs in heads.items():
        if name not in att:
            raise PrunelabError(
                f"{name!r} is not an attention module with q/k/v projections; found: {', '.join(att) or '(none)'}"
            )
        a = att[name]
        hs = sorted({int(h) for h in hs})
        if any(not 0 <= h < a.num_heads() for h in hs):
            raise PrunelabError(f"heads of {name!r} must be in 0..{a.num_heads() - 1}, got {hs}")
        for child, layer in zip(a.qkv, a.layers()):
            k = torch.ones(_num_units(layer), dtype=torch.bool)
            parts = 3 if a.fused else 1
            for p in range(parts):
                for h in hs:
                    start = p * a.q_width() + h * a.head_dim
                    k[start : start + a.head_dim] = False
            keep[f"{name}.{child}" if name else child] = k
    return unit_masks(model, keep, masks, bias=bias)


# --- the result -------------------------------------------------------------------------------------
@dataclass
class CompactResult:
    """What :func:`compact` returns: the smaller model and an account of every candidate unit.

    ``removed[layer]`` are the original indices of the units removed from the layer's output (units
    removed because a coupled layer's were are listed under that layer too); ``kept[layer]`` maps each
    pruned unit that stayed to the reason; ``folded[layer]`` counts the constant input channels folded
    into that layer's bias; ``heads_removed[attention module]`` the original head indices removed.
    """

    model: nn.Module
    removed: dict[str, list[int]] = field(default_factory=dict)
    kept: dict[str, dict[int, str]] = field(default_factory=dict)
    folded: dict[str, int] = field(default_factory=dict)
    heads_removed: dict[str, list[int]] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    max_abs_diff: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "units_removed": sum(len(v) for v in self.removed.values()),
            "pruned_units_kept": sum(len(v) for v in self.kept.values()),
            "heads_removed": sum(len(v) for v in self.heads_removed.values()),
            "max_abs_diff": self.max_abs_diff,
        }


# --- inputs and outputs -------------------------------------------------------------------------
def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _tensors(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _tensors(v)]
    return []


def default_example_inputs(model: nn.Module, batch: int = 2, seed: int = 0) -> Any:
    """Random example inputs of ``batch`` samples: ``randn`` of ``model.input_shape`` for plain models;
    for ``transformers`` models the adapter's input (``prunelab.models.adapters``) with random token
    ids / pixels. A PrunelabError when the model does not say what it takes."""
    adapter = adapter_for(model)
    shape = adapter.default_input_shape(model)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    if shape is None:
        raise PrunelabError(
            f"{type(model).__name__} does not say what input it takes (no input_shape): pass example_inputs="
        )
    try:
        args, kwargs = adapter.dummy_input(model, tuple(shape), dtype=dtype, device=device)
    except PrunelabError as exc:
        raise PrunelabError(f"cannot make example inputs for {type(model).__name__} ({exc}): pass example_inputs=") from None
    g = torch.Generator().manual_seed(seed)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)

    def rand(name: str, t: Tensor) -> Tensor:
        size = (batch, *t.shape[1:])
        if t.is_floating_point():
            return torch.randn(size, generator=g, dtype=torch.float32).to(t.dtype).to(t.device)
        if name in ("input_ids", "decoder_input_ids", "inputs") and isinstance(vocab, int):
            return torch.randint(0, vocab, size, generator=g).to(t.device)
        return t.expand(size).clone()

    if kwargs and not args:
        out = {k: rand(k, v) if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        try:
            if "use_cache" in inspect.signature(model.forward).parameters:
                out["use_cache"] = False  # outputs are compared, a cache object is not
        except (TypeError, ValueError):
            pass
        return out
    if len(args) == 1 and not kwargs:
        return rand("inputs", args[0])
    raise PrunelabError(f"cannot make example inputs for {type(model).__name__}: pass example_inputs=")


# --- the plan -----------------------------------------------------------------------------------
def _check_no_hooks(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:
            raise PrunelabError(
                f"module {name or type(m).__name__!r} carries forward hooks (e.g. structured.ResidualGates from "
                "apply_unit_masks: call gates.remove()); remove them before removing pruned units"
            )


class _OutputShapes(TorchFunctionMode):
    """Records the shape of every tensor a torch function returns, by its autograd node."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[Any, tuple[int, ...]] = {}

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor) and t.grad_fn is not None:
                self.shapes[t.grad_fn] = tuple(t.shape)
        return out


def _fix_reshapes(dg: Any, shapes: Mapping[Any, tuple[int, ...]]) -> None:
    """Reshapes that only split or merge the channel dimension map channel indices one to one.

    Torch-Pruning gives every reshape of a 4-D tensor a flatten mapping (channel ``c`` of a (N, C, H, W)
    map -> features ``c*H*W ... (c+1)*H*W - 1``), which is right for a conv net's ``flatten`` into its
    classifier but wrong for a transformer's (batch, tokens, heads, head_dim) -> (batch, tokens,
    hidden) reshape, where it sends head dimension ``j`` of one head to another index. Only 4-D -> 2-D
    reshapes keep that mapping here; the others become pass-through ops (identity mapping).
    """
    for node in dg.module2node.values():
        if node.type != tp.ops.OPTYPE.RESHAPE:
            continue
        sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None) or getattr(node.grad_fn, "_saved_self_sizes", None)
        out = shapes.get(node.grad_fn)
        if sizes is None or out is None or (len(sizes) == 4 and len(out) == 2):
            continue
        node.type = tp.ops.OPTYPE.ELEMENTWISE  # Torch-Pruning's index updates no longer touch it
        for dep in node.dependencies:
            if isinstance(dep.index_mapping[0], _FlattenIndexMapping):
                dep.index_mapping[0] = None
        for other in node.inputs + node.outputs:
            for dep in other.dependencies:
                if dep.target is node and isinstance(dep.index_mapping[0], _FlattenIndexMapping):
                    dep.index_mapping[0] = None


def _fix_splits(dg: Any) -> None:
    """Index mappings through channel splits, each output matched to its chunk by autograd's output number.

    Torch-Pruning maps a split only along dim 1 and pairs the split's graph outputs with its chunks in
    the order the trace met them, which need not be the split's order (GPT-2's ``query, key, value =
    c_attn(x).split(...)``: the trace meets key and value first). Here splits along dim 1 or along the
    last dim of a >= 3-D (batch, tokens, channels) tensor are mapped, output ``k`` of the split to the
    k-th chunk, read from the ``output_nr`` of the consumer's autograd edge.
    """
    for node in dg.module2node.values():
        if node.type != tp.ops.OPTYPE.SPLIT or not node.enable_index_mapping:
            continue
        sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
        dim = getattr(node.grad_fn, "_saved_dim", None)
        offsets = node.module.offsets
        if sizes is None or dim is None or offsets is None or not 0 <= dim < len(sizes):
            continue
        if not (dim == 1 or (len(sizes) >= 3 and dim == len(sizes) - 1)):
            continue
        chunks = []
        for out_node in node.outputs:
            numbers = {nr for fn, nr in getattr(out_node.grad_fn, "next_functions", ()) if fn is node.grad_fn}
            if len(numbers) != 1:
                break  # several chunks into one op: leave Torch-Pruning's mapping
            chunks.append((out_node, numbers.pop()))
        if len(chunks) != len(node.outputs) or not chunks:
            continue
        for out_node, k in chunks:
            for dep in node.dependencies:
                if dep.target == out_node:
                    dep.index_mapping[0] = _SplitIndexMapping(offset=offsets[k : k + 2], reverse=False)
            for dep in out_node.dependencies:
                if dep.target == node:
                    dep.index_mapping[0] = _SplitIndexMapping(offset=offsets[k : k + 2], reverse=True)
        node.type = tp.ops.OPTYPE.ELEMENTWISE  # so that Torch-Pruning's index updates keep these mappings


def _is_weighted(m: Any) -> bool:
    return isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) or is_conv1d(m)


def _grouped(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1


def _channel_dim(m: nn.Module) -> int:
    return -1 if isinstance(m, nn.Linear) or is_conv1d(m) else 1


class _Planner:
    """Decides and performs the removals on ``work`` (a masked, eval-mode copy)."""

    def __init__(self, work: nn.Module, inputs: Any, masks: Masks) -> None:
        self.work, self.inputs = work, inputs
        self.names = {m: n for n, m in work.named_modules()}
        self.masked_layers = [m for n, m in work.named_modules() if _is_weighted(m) and f"{n}.weight" in masks]
        self.pruned_rows: dict[nn.Module, set[int]] = {}
        for m in self.masked_layers:
            rows = _unit_view(m, masks[f"{self.names[m]}.weight"].to(torch.bool))
            self.pruned_rows[m] = {int(i) for i in torch.nonzero(~rows.any(dim=1)).flatten()}
        self.attention = attention_modules(work)
        self.att_of: dict[nn.Module, _Attention] = {}
        for a in self.attention.values():
            for layer in a.layers():
                self.att_of[layer] = a
        self.heads0 = {a.name: a.num_heads() for a in self.attention.values()}
        self.head_ids = {a.name: list(range(a.num_heads())) for a in self.attention.values()}
        self.orig = {m: list(range(_num_units(m))) for m in work.modules() if _is_weighted(m)}
        self.removed: dict[str, list[int]] = {}
        self.kept: dict[str, dict[int, str]] = {}
        self.folded: dict[str, int] = {}
        pruners: dict[Any, Any] = {SelectPadShortcut: _SelectPadPruner()}
        for cls in {type(m) for m in work.modules() if is_conv1d(m)}:
            pruners[cls] = _Conv1DPruner()
        recorder = _OutputShapes()

        def forward(m: nn.Module, x: Any) -> list[Tensor]:
            with recorder:
                return _tensors(_call(m, x))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.dg = tp.DependencyGraph().build_dependency(
                work, inputs, forward_fn=forward, customized_pruners=pruners, verbose=False,
            )
        _fix_reshapes(self.dg, recorder.shapes)
        _fix_splits(self.dg)
        recorder.shapes.clear()

    # -- measurements ---------------------------------------------------------------------------
    def measure(self) -> dict[nn.Module, Tensor]:
        """The input of every Linear/Conv/Conv1D/shortcut on the example inputs, as (positions, channels)."""
        seen: dict[nn.Module, list[Tensor]] = {}

        def hook(mod: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], Tensor):
                x = args[0].detach()
                d = _channel_dim(mod) % x.dim()
                seen.setdefault(mod, []).append(x.movedim(d, -1).reshape(-1, x.shape[d]))

        handles = [m.register_forward_pre_hook(hook) for m in self.work.modules()
                   if _is_weighted(m) or isinstance(m, SelectPadShortcut)]
        try:
            with torch.no_grad():
                _call(self.work, self.inputs)
        finally:
            for h in handles:
                h.remove()
        return {m: torch.cat(v) for m, v in seen.items()}

    # -- one layer ------------------------------------------------------------------------------
    def candidates(self, layer: nn.Module) -> list[int]:
        """Current indices of ``layer``'s units whose mask rows are all pruned."""
        if _grouped(layer):
            return []
        rows = self.pruned_rows[layer]
        return [k for k, o in enumerate(self.orig[layer]) if o in rows]

    def out_fn(self, layer: nn.Module) -> Any:
        return self.dg.get_pruner_of_module(layer).prune_out_channels

    def judge(self, layer: nn.Module, roots: list[int], values: dict[nn.Module, Tensor]) -> tuple[dict[int, str], list]:
        """(bad root -> reason, folds) for the group of ``roots`` of ``layer``; folds are
        (consumer, [(input index, root)]) of the consumers that read the roots' channels."""
        group = self.dg.get_pruning_group(layer, self.out_fn(layer), roots)
        bad: dict[int, str] = {}
        folds: list[tuple[nn.Module, list[tuple[int, int]]]] = []

        def mark(rts: Iterable[int], why: str) -> None:
            for r in rts:
                bad.setdefault(int(r), why)

        for item in group:
            dep, node = item.dep, item.dep.target
            target = node.module
            pairs = [(int(i), int(r)) for i, r in zip(item.idxs, item.root_idxs)]
            rts = [r for _, r in pairs]
            is_out = self.dg.is_out_channel_pruning_fn(dep.handler)
            tname = self.names.get(target, type(target).__name__)
            if isinstance(target, tp.ops._OutputOp) or (is_out and not node.outputs):
                mark(rts, f"feeds a model output (at {tname}): removing it would change the output's shape")
            elif isinstance(target, nn.Parameter):
                p = target.detach()
                for i, r in pairs:
                    if bool(p.select(node.pruning_dim, i).ne(0).any()):
                        mark([r], "coupled with a free parameter (e.g. a position embedding) that is not zero there")
            elif isinstance(target, _MIXING):
                mark(rts, f"coupled with {tname} ({type(target).__name__}), which mixes channels")
            elif _is_weighted(target):
                if _grouped(target):
                    mark(rts, f"coupled with grouped convolution {tname}")
                elif is_out:
                    rows = _unit_view(target, target.weight.detach())
                    for i, r in pairs:
                        if bool(rows[i].ne(0).any()):
                            mark([r], f"coupled with live unit {self.orig[target][i]} of {tname}")
                else:
                    folds.append((target, pairs))
            elif isinstance(target, SelectPadShortcut):
                if is_out:
                    for i, r in pairs:
                        if int(target.source[i]) >= 0:
                            mark([r], f"coupled with an identity channel of shortcut {tname}")
                else:
                    folds.append((target, pairs))
            elif isinstance(target, _CHANNELWISE) or type(target).__module__.startswith("torch_pruning"):
                pass  # a channel-wise op, or a pass-through op of the graph (element-wise, reshape, cat, ...)
            else:
                mark(rts, f"coupled with {tname} ({type(target).__name__}), which prunelab cannot prove unchanged")

        for consumer, pairs in folds:
            cname = self.names.get(consumer, type(consumer).__name__)
            x = values.get(consumer)
            if x is None:
                mark([r for _, r in pairs], f"the input of {cname} was not observed on the example inputs")
                continue
            cols = x[:, [i for i, _ in pairs]]
            spread = cols.max(0).values - cols.min(0).values
            const = spread <= 1e-5 * (1.0 + cols.abs().max(0).values)
            nonzero = cols.ne(0).any(0)
            padded = isinstance(consumer, nn.modules.conv._ConvNd) and _has_padding(consumer)
            for k, (_, r) in enumerate(pairs):
                if not bool(const[k]):
                    mark([r], f"the input of {cname} at this channel is not constant on the example inputs")
                elif bool(nonzero[k]) and isinstance(consumer, SelectPadShortcut):
                    mark([r], f"the constant {float(cols[0, k]):.4g} reaches shortcut {cname}, which is not affine")
                elif bool(nonzero[k]) and padded:
                    mark([r], f"the constant {float(cols[0, k]):.4g} reaches zero-padded convolution {cname}: "
                              "folding it into the bias would not be exact at the borders")
        return bad, folds

    def head_filter(self, group: Any, good: set[int]) -> dict[int, str]:
        """Roots that would leave a head of an attention module partly removed."""
        bad: dict[int, str] = {}
        for item in group:
            target = item.dep.target.module
            a = self.att_of.get(target) if isinstance(target, nn.Module) else None
            if a is None or not self.dg.is_out_channel_pruning_fn(item.dep.handler):
                continue
            per_head: dict[int, tuple[set[int], set[int]]] = {}  # head -> (its indices here, their roots)
            for i, r in zip(item.idxs, item.root_idxs):
                if int(r) in good:
                    idx, rts = per_head.setdefault(a.head_of(target, int(i)), (set(), set()))
                    idx.add(int(i))
                    rts.add(int(r))
            whole = a.head_dim * (3 if a.fused else 1)  # a fused projection holds the q, k and v rows
            for h, (idx, rts) in per_head.items():
                if len(idx) != whole:
                    for r in rts:
                        bad.setdefault(r, f"would remove only part of head {self.head_ids[a.name][h]} of {a.name}")
        return bad

    def plan(self, layer: nn.Module, values: dict[nn.Module, Tensor]) -> tuple[list[int], dict[int, str], list]:
        """(removable roots, kept root -> reason, folds) for ``layer``.

        A group of several roots lists an index shared by two roots under one of them, so after
        dropping bad roots the rest is judged again, until nothing changes."""
        good = self.candidates(layer)
        bad: dict[int, str] = {}
        folds: list = []
        while good:
            new_bad, folds = self.judge(layer, good, values)
            if not new_bad:
                group = self.dg.get_pruning_group(layer, self.out_fn(layer), good)
                new_bad = self.head_filter(group, set(good))
                if not new_bad:
                    if self.dg.check_pruning_group(group):
                        break
                    new_bad = {good[-1]: "the last unit of a layer or head (Torch-Pruning keeps at least one channel)"}
            bad.update(new_bad)
            good = [r for r in good if r not in new_bad]
        return good, bad, (folds if good else [])

    def step(self, layer: nn.Module) -> bool:
        """Remove what can be removed of ``layer``'s pruned units; whether anything was."""
        if not self.candidates(layer):
            return False
        values = self.measure()
        good, _, folds = self.plan(layer, values)
        if not good:
            return False
        for consumer, pairs in folds:
            if isinstance(consumer, SelectPadShortcut):
                continue  # only zeros reach it (judge)
            idxs = list(dict.fromkeys(i for i, _ in pairs))  # an index reached from two roots is listed twice
            value = values[consumer][0, idxs]
            if bool(value.ne(0).any()):
                _fold(consumer, idxs, value)
                cname = self.names.get(consumer, "")
                self.folded[cname] = self.folded.get(cname, 0) + int(value.ne(0).sum())
        group = self.dg.get_pruning_group(layer, self.out_fn(layer), good)
        gone_heads: dict[str, list[int]] = {}
        for item in group:
            t = item.dep.target.module
            if not (isinstance(t, nn.Module) and t in self.orig and self.dg.is_out_channel_pruning_fn(item.dep.handler)):
                continue
            drop = {int(i) for i in item.idxs}
            self.removed.setdefault(self.names[t], []).extend(o for k, o in enumerate(self.orig[t]) if k in drop)
            a = self.att_of.get(t)
            if a is not None and t is a.layers()[0]:
                gone_heads[a.name] = sorted({a.head_of(t, i) for i in drop})
            self.orig[t] = [o for k, o in enumerate(self.orig[t]) if k not in drop]
        group.prune(record_history=False)
        for a in self.attention.values():
            _update_heads(a)
            if a.name in gone_heads:
                self.head_ids[a.name] = [h for k, h in enumerate(self.head_ids[a.name]) if k not in gone_heads[a.name]]
        return True

    def run(self) -> None:
        changed = True
        while changed:
            changed = False
            for layer in self.masked_layers:
                changed |= self.step(layer)
        values = self.measure()
        for layer in self.masked_layers:  # what stays, with the reasons, in original indices
            name = self.names[layer]
            if _grouped(layer):
                reasons = {o: "grouped convolutions are not compacted" for o in sorted(self.pruned_rows[layer])}
            else:
                good, bad, _ = self.plan(layer, values)
                if good:
                    raise PrunelabError(f"internal: units of {name!r} were left removable")
                reasons = {self.orig[layer][r]: why for r, why in sorted(bad.items())}
            if reasons:
                self.kept[name] = reasons


def _has_padding(conv: nn.modules.conv._ConvNd) -> bool:
    pad = conv.padding
    if isinstance(pad, str):
        return pad != "valid"
    return any(int(p) != 0 for p in pad)


def _fold(consumer: nn.Module, idxs: list[int], value: Tensor) -> None:
    """bias += (contribution of the constant input channels ``idxs`` with values ``value``)."""
    if not bool(value.ne(0).any()):
        return
    with torch.no_grad():
        w = consumer.weight.detach()
        v = value.to(w.dtype)
        if is_conv1d(consumer):
            delta = v @ w[idxs, :]
        elif isinstance(consumer, nn.Linear):
            delta = w[:, idxs] @ v
        else:  # unpadded, ungrouped convolution
            delta = w[:, idxs].flatten(2).sum(2) @ v
        if consumer.bias is None:
            consumer.bias = nn.Parameter(delta.clone())
        else:
            consumer.bias.add_(delta)


def _update_heads(a: _Attention) -> None:
    width, heads = a.q_width(), a.num_heads()
    for attr in ("num_attention_heads", "num_heads"):
        if isinstance(getattr(a.module, attr, None), int):
            setattr(a.module, attr, heads)
    for attr in ("all_head_size", "split_size"):
        if isinstance(getattr(a.module, attr, None), int):
            setattr(a.module, attr, width)


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compact(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    example_inputs: Any = None,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> CompactResult:
    """Remove the pruned units of ``model`` that can go without changing its outputs (see the module doc).

    ``model`` is not changed: the result's model is a deep copy, with ``masks`` applied, in eval mode,
    physically smaller. ``example_inputs`` (a tensor, a tuple of positional arguments or a dict of
    keyword arguments) drive Torch-Pruning's trace, the constant checks and the final comparison;
    default: :func:`default_example_inputs`. The outputs are compared with ``|a - b| <= atol *
    max(1, max|a|) + rtol |a|``.
    """
    if tp is None:
        raise PrunelabError("removing pruned units needs the torch-pruning package: pip install 'torch-pruning>=1.4'")
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    masks = masks if isinstance(masks, Masks) else Masks(masks)
    masks.validate(model)
    _check_no_hooks(model)
    work = copy.deepcopy(model)
    masks.apply(work)
    work.eval()
    if example_inputs is None:
        example_inputs = default_example_inputs(work)
    try:
        with torch.no_grad():
            reference = [t.detach().clone() for t in _tensors(_call(work, example_inputs))]
    except PrunelabError:
        raise
    except Exception as exc:  # noqa: BLE001  (whatever the model raises on inputs it cannot take)
        line = (str(exc).strip().splitlines() or [""])[0]
        raise PrunelabError(f"the model fails on example_inputs: {type(exc).__name__}: {line}") from None
    if not reference:
        raise PrunelabError(f"{type(model).__name__} returned no tensor on example_inputs")
    for m in list(work.modules()):
        for child_name, child in list(m.named_children()):
            if type(child) is PadShortcut:
                setattr(m, child_name, SelectPadShortcut.from_pad(child))
    params_before = _param_count(work)
    flags = {p: p.requires_grad for p in work.parameters()}
    try:
        for p in work.parameters():
            if p.is_floating_point():
                p.requires_grad_(True)  # Torch-Pruning traces the autograd graph
        planner = _Planner(work, example_inputs, masks)
        planner.run()
    finally:
        for p in work.parameters():
            p.requires_grad_(flags.get(p, False))
            p.grad = None
    with torch.no_grad():
        outputs = [t.detach() for t in _tensors(_call(work, example_inputs))]
    diff = _compare(reference, outputs, rtol, atol)
    heads = {}
    for name in planner.attention:
        gone = sorted(set(range(planner.heads0[name])) - set(planner.head_ids[name]))
        if gone:
            heads[name] = gone
    return CompactResult(
        model=work,
        removed={k: sorted(v) for k, v in planner.removed.items() if v},
        kept=planner.kept,
        folded=planner.folded,
        heads_removed=heads,
        params_before=params_before,
        params_after=_param_count(work),
        max_abs_diff=diff,
    )


def _compare(reference: list[Tensor], outputs: list[Tensor], rtol: float, atol: float) -> float:
    if len(reference) != len(outputs):
        raise PrunelabError(f"the compact model returns {len(outputs)} tensors, the masked model {len(reference)}")
    worst = 0.0
    for i, (a, b) in enumerate(zip(reference, outputs)):
        if a.shape != b.shape:
            raise PrunelabError(
                f"output {i} of the compact model has shape {tuple(b.shape)}, the masked model's {tuple(a.shape)}"
            )
        if not a.is_floating_point():
            if not torch.equal(a, b):
                raise PrunelabError(f"output {i} of the compact model differs from the masked model's")
            continue
        d = (a - b).abs()
        worst = max(worst, float(d.max()) if d.numel() else 0.0)
        tol = atol * max(1.0, float(a.abs().max()) if a.numel() else 1.0) + rtol * a.abs()
        if bool((d > tol).any()):
            raise PrunelabError(
                f"removing units changed output {i} by up to {float(d.max()):.3g} (Torch-Pruning's graph misreads an "
                "op of this model); the masked model is the reference"
            )
    return worst


def remove_pruned_units(model: nn.Module, masks: Mapping[str, Tensor], example_inputs: Any = None) -> nn.Module:
    """A deep copy of ``model`` with the pruned units physically removed (:func:`compact`'s model)."""
    return compact(model, masks, example_inputs).model
