"""How sparse a pruned model is: parameters, compression and FLOPs, per layer and in total.

Counts come from the masks, not from the weight values (a kept weight that happens to be 0 still
counts as kept). The total counts every parameter of the model (biases, BatchNorm, unpruned layers)
as dense except the pruned weights, so ``compression = dense / non-zero`` is the usual whole-model
compression ratio; the per-layer rows count the layer's weight tensor only.

FLOPs are multiply-accumulates for one input, measured by forward hooks on a dummy batch of one:
Linear (and ``transformers.Conv1D``, a Linear with a transposed weight) ``in * out`` per output row,
Conv ``(weight numel) * output positions`` (the kernel MACs per output position times the positions,
groups included); the sparse count uses the kept weights instead of all weights. Only Linear and Conv
layers are counted (the layers that dominate and that pruning changes; attention's score and value
products and embedding lookups are not); layers that are not masked count the same dense and sparse.
The dummy input comes from the model's adapter (:mod:`prunelab.models.adapters`): zeros of
``(1, *input_shape)`` for plain models; for token models ``input_shape = (T,)`` is the sequence
length, the input one sequence of T token ids (the decoder too gets T tokens), and T defaults to the
config's context length (``max_position_embeddings`` / ``n_positions``); a ViT's default is its
configured image size.

A weight tied to several modules (an LM head sharing the embedding matrix) is one parameter: it is
counted once in ``params`` and ``nonzero`` (``model.parameters()`` lists it once) and carries one mask
under its ``named_parameters`` name; each module using it still counts its own MACs.

Effective sparsity (Vysogorets & Kempe, JMLR 2023) is filled in through
``prunelab.analysis.effective.effective_masks`` when that module is importable and supports the model;
otherwise the effective fields are None and ``effective_note`` says why. Models that are not plain
tensor models (``transformers`` models) are analysed on their adapter's dummy input (``example_input``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn

from prunelab.analysis.effective import effective_masks
from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.models.adapters import ModelAdapter, TensorAdapter, adapter_for, check_adapter, is_conv1d
from prunelab.report.tables import Col, compact_count, fit_table, fixed, ratio, write_csv
from prunelab.utils import compression_ratio, eval_mode

_COUNTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class LayerSparsity:
    """One masked weight tensor. ``sparsity`` is direct (fraction pruned by the mask)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    nonzero: int
    sparsity: float
    compression: float
    flops_dense: int | None = None
    flops_sparse: int | None = None
    effective_sparsity: float | None = None
    effective_compression: float | None = None


@dataclass
class SparsityReport:
    """Per-layer rows plus totals over the whole model (see the module docstring for definitions)."""

    layers: list[LayerSparsity]
    params: int  # every parameter of the model
    nonzero: int  # params minus pruned weights
    prunable: int  # weights covered by the masks
    prunable_kept: int
    flops_dense: int | None = None
    flops_sparse: int | None = None
    effective_kept: int | None = None  # prunable weights on an input-output path
    effective_note: str | None = None
    input_shape: tuple[int, ...] | None = field(default=None)

    @property
    def sparsity(self) -> float:
        """Direct sparsity of the prunable weights (what ``prunelab.prune`` targets)."""
        return 1.0 - self.prunable_kept / self.prunable if self.prunable else 0.0

    @property
    def compression(self) -> float:
        """Whole-model compression: all parameters / non-zero parameters."""
        return compression_ratio(self.params, self.nonzero)

    @property
    def effective_sparsity(self) -> float | None:
        if self.effective_kept is None or not self.prunable:
            return None
        return 1.0 - self.effective_kept / self.prunable

    @property
    def effective_compression(self) -> float | None:
        if self.effective_kept is None:
            return None
        return compression_ratio(self.params, self.params - (self.prunable - self.effective_kept))

    def summary(self) -> dict[str, Any]:
        """Totals as a flat dict (the columns a results table needs)."""
        flops_ratio = (
            self.flops_dense / self.flops_sparse
            if self.flops_dense is not None and self.flops_sparse
            else None
        )
        return {
            "params": self.params,
            "nonzero": self.nonzero,
            "prunable": self.prunable,
            "prunable_kept": self.prunable_kept,
            "sparsity": self.sparsity,
            "compression": self.compression,
            "flops_dense": self.flops_dense,
            "flops_sparse": self.flops_sparse,
            "flops_speedup": flops_ratio,
            "effective_sparsity": self.effective_sparsity,
            "effective_compression": self.effective_compression,
        }

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per layer, then a ``"total"`` row with the same keys."""
        rows = []
        for layer in self.layers:
            row = asdict(layer)
            row["shape"] = "x".join(str(d) for d in layer.shape)
            rows.append(row)
        rows.append(
            {
                "name": "total",
                "kind": "",
                "shape": "",
                "params": self.params,
                "nonzero": self.nonzero,
                "sparsity": self.sparsity,
                "compression": self.compression,
                "flops_dense": self.flops_dense,
                "flops_sparse": self.flops_sparse,
                "effective_sparsity": self.effective_sparsity,
                "effective_compression": self.effective_compression,
            }
        )
        return rows

    def to_table(self, title: str | None = "Sparsity report", width: int | None = 80) -> Table:
        """A ``rich`` table of :meth:`to_rows` that fits ``width`` characters (None: every column).

        Layers are named by module (``features.0`` for ``features.0.weight``), counts are compact
        (``2.36M``); when the columns do not fit, the least essential go first (type, dense MACs,
        effective compression, shape, ...) and the caption names them. Columns that are None in
        every row (FLOPs without an input shape, effective sparsity not computed) are left out and
        the caption says why. Exact values: :meth:`to_rows` / :meth:`to_csv`.
        """
        rows = self.to_rows()
        for row in rows:
            if isinstance(row["name"], str) and row["name"].endswith(".weight"):
                row["name"] = row["name"][: -len(".weight")]
        cols = [
            Col("name", "layer", str, 0, "left", 30), Col("kind", "type", str, 7, "left"),
            Col("shape", "shape", str, 4, "left"), Col("params", "params", _count, 0),
            Col("nonzero", "non-\nzero", _count, 1), Col("sparsity", "sparsity", fixed(4), 0),
            Col("compression", "compr.", ratio, 3), Col("flops_dense", "MACs\ndense", _count, 6),
            Col("flops_sparse", "MACs\nsparse", _count, 2),
            Col("effective_sparsity", "eff.\nsparsity", fixed(4), 1),
            Col("effective_compression", "eff.\ncompr.", ratio, 5),
        ]
        notes = []
        if self.flops_dense is None:
            cols = [c for c in cols if not c.key.startswith("flops")]
            notes.append("MACs: no input shape")
        if self.effective_kept is None:
            cols = [c for c in cols if not c.key.startswith("effective")]
            notes.append(f"effective sparsity: {self.effective_note or 'not computed'}")
        return fit_table(rows, cols, width=width, title=title, caption="; ".join(notes) or None,
                         sections=(len(rows) - 2,))

    def to_csv(self, path) -> Path:
        """:meth:`to_rows` with exact values, one row per layer and the total (atomic write)."""
        return write_csv(path, self.to_rows())


def _count(value: Any) -> str:
    return "" if value == "" else compact_count(value)


def resolve_input_shape(
    model: nn.Module, input_shape: Sequence[int] | None = None, adapter: ModelAdapter | None = None
) -> tuple[int, ...] | None:
    """``input_shape``, else ``model.input_shape``, else an MLP's fan-in (plain models) or the
    adapter's default (other models: ``adapter.default_input_shape``), else None (no batch dim)."""
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None and adapter is not None and type(adapter) is not TensorAdapter:
        shape = adapter.default_input_shape(model)
    elif shape is None:  # an MLP whose first layer is Linear: its fan-in is the input size
        leaves = [m for m in model.modules() if not list(m.children())]
        leaves = [m for m in leaves if not isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout))]
        if leaves and isinstance(leaves[0], nn.Linear):
            shape = (leaves[0].in_features,)
    if shape is None:
        return None
    if isinstance(shape, int):
        shape = (shape,)
    if not all(isinstance(d, int) and d > 0 for d in shape):
        raise PrunelabError(f"input_shape must be positive integers without the batch dim, got {shape!r}")
    return tuple(int(d) for d in shape)


def count_flops(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    input_shape: Sequence[int],
    adapter: ModelAdapter | None = None,
) -> dict[str, tuple[int, int]]:
    """Module name -> (dense MACs, sparse MACs) of every Linear/Conv1D/Conv for one input of
    ``input_shape`` (the ``adapter``'s dummy input; default :func:`adapter_for` the model).

    A module called several times in one forward pass accumulates over the calls. A module whose
    weight is tied to another's reads the mask stored under the weight's ``named_parameters`` name.
    """
    adapter = adapter_for(model) if adapter is None else check_adapter(adapter)
    kept = {name: int(torch.count_nonzero(m)) for name, m in masks.items()}
    canonical: dict[int, str] = {}
    for pname, p in model.named_parameters():
        canonical.setdefault(id(p), pname)
    counts: dict[str, list[int]] = {}
    handles = []

    def hook(name: str, module: nn.Module):
        key = canonical.get(id(module.weight), f"{name}.weight" if name else "weight")

        def count(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            weight = mod.weight
            if isinstance(mod, nn.Linear) or is_conv1d(mod):
                positions = output.numel() // output.shape[-1]  # rows the weight is applied to
            else:
                positions = output[0, 0].numel()  # output positions per channel, batch of one
            dense = weight.numel() * positions
            sparse = kept.get(key, weight.numel()) * positions
            total = counts.setdefault(name, [0, 0])
            total[0] += dense
            total[1] += sparse

        return count

    for name, module in model.named_modules():
        if (isinstance(module, _COUNTED) or is_conv1d(module)) and isinstance(getattr(module, "weight", None), torch.Tensor):
            handles.append(module.register_forward_hook(hook(name, module)))
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    try:
        args, kwargs = adapter.dummy_input(model, tuple(input_shape), dtype=dtype, device=device)
        with eval_mode(model), torch.no_grad():
            model(*args, **kwargs)
    except PrunelabError:
        raise
    except Exception as exc:  # a shape mismatch deep in torch: say which input shape was tried
        raise PrunelabError(
            f"could not run the model on a dummy input of shape {tuple(input_shape)} to count FLOPs: {exc}"
        ) from None
    finally:
        for h in handles:
            h.remove()
    return {name: (c[0], c[1]) for name, c in counts.items()}


def model_effective_masks(model: nn.Module, masks: Mapping[str, torch.Tensor],
                          input_shape: Sequence[int] | None = None, adapter: ModelAdapter | None = None) -> Masks:
    """:func:`prunelab.analysis.effective.effective_masks` of any model: plain tensor models on
    ``input_shape``, others (language models: token ids) on their adapter's dummy input."""
    adapter = adapter if adapter is not None else adapter_for(model)
    if type(adapter) is TensorAdapter:
        return effective_masks(model, masks, input_shape=input_shape)
    if input_shape is None:
        raise PrunelabError(f"effective sparsity of {type(model).__name__} needs an input shape (none known)")
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    args, kwargs = adapter.dummy_input(model, input_shape, dtype=dtype, device=device)
    example = kwargs if not args else args if not kwargs else None
    if example is None:
        raise PrunelabError(f"effective sparsity of {type(model).__name__}: the model takes positional and "
                            "keyword inputs together, which the connectivity analysis cannot feed")
    return effective_masks(model, masks, example_input=example)


def _effective(model: nn.Module, masks: Masks, input_shape: tuple[int, ...] | None, adapter: ModelAdapter):
    """(effective masks or None, note explaining a None)."""
    try:
        if type(adapter) is not TensorAdapter and input_shape is None:
            return None, "effective sparsity not computed: no input shape"
        return model_effective_masks(model, masks, input_shape, adapter), None
    except PrunelabError as exc:  # e.g. an op the connectivity analysis does not support
        return None, f"effective sparsity not computed: {exc}"


def sparsity_report(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
    input_shape: Sequence[int] | None = None,
    *,
    effective: bool = True,
    adapter: ModelAdapter | None = None,
) -> SparsityReport:
    """Per-layer and total parameters, sparsity, compression, FLOPs and effective sparsity.

    ``masks`` default to the non-zero pattern of the prunable weights; ``input_shape`` (no batch
    dim; (T,) for token models) defaults to ``model.input_shape``, else the adapter's default (see
    the module docstring); without one, FLOPs are None. ``effective=False`` skips the
    effective-sparsity analysis. ``adapter`` (default :func:`adapter_for` the model) makes the dummy
    input of the FLOP count.
    """
    adapter = adapter_for(model) if adapter is None else check_adapter(adapter)
    masks = Masks.from_weights(model) if masks is None else masks if isinstance(masks, Masks) else Masks(masks)
    masks.validate(model)
    shape = resolve_input_shape(model, input_shape, adapter)
    modules = dict(model.named_modules())
    flops = count_flops(model, masks, shape, adapter) if shape is not None else None
    eff, note = _effective(model, masks, shape, adapter) if effective else (None, "not requested")

    flops_of: dict[str, list[int]] = {}  # mask name -> MACs of every module using that weight (tied: several)
    canonical = {id(p): n for n, p in model.named_parameters()}  # named_parameters lists a tied weight once
    for mod_name, (dense, sparse) in (flops or {}).items():
        key = canonical.get(id(getattr(modules.get(mod_name), "weight", None)), f"{mod_name}.weight")
        total = flops_of.setdefault(key, [0, 0])
        total[0] += dense
        total[1] += sparse

    layers: list[LayerSparsity] = []
    for name, mask in masks.items():
        mod_name = name.rpartition(".")[0]
        params, kept = mask.numel(), int(torch.count_nonzero(mask))
        row = LayerSparsity(
            name=name,
            kind=type(modules.get(mod_name)).__name__,
            shape=tuple(mask.shape),
            params=params,
            nonzero=kept,
            sparsity=1.0 - kept / params if params else 0.0,
            compression=compression_ratio(params, kept),
        )
        if name in flops_of:
            row.flops_dense, row.flops_sparse = flops_of[name]
        if eff is not None and name in eff:
            eff_kept = int(torch.count_nonzero(eff[name]))
            row.effective_sparsity = 1.0 - eff_kept / params if params else 0.0
            row.effective_compression = compression_ratio(params, eff_kept)
        layers.append(row)

    total_params = sum(p.numel() for p in model.parameters())
    prunable, prunable_kept = masks.num_total(), masks.num_kept()
    report = SparsityReport(
        layers=layers,
        params=total_params,
        nonzero=total_params - (prunable - prunable_kept),
        prunable=prunable,
        prunable_kept=prunable_kept,
        effective_note=note,
        input_shape=shape,
    )
    if flops is not None:
        report.flops_dense = sum(d for d, _ in flops.values())
        report.flops_sparse = sum(s for _, s in flops.values())
    if eff is not None:
        report.effective_kept = sum(int(torch.count_nonzero(eff[k])) for k in masks if k in eff)
    return report
