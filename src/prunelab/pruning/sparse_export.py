"""Unstructured export: Linear / Conv layers that store sparse weights and run ``torch.sparse`` kernels.

:func:`to_sparse` returns a deep copy of a model with ``masks`` applied in which every masked
``nn.Linear``, ``transformers`` ``Conv1D`` and ``nn.Conv1d/2d`` is replaced by a module holding its
weight in **CSR** (``torch.sparse_csr``) or **BSR** (``torch.sparse_bsr``, blocks of ``blocksize``)
form and computing with ``torch.addmm(bias, W_sparse, X)``:

* :class:`SparseLinear`: ``y = x W^T + b`` as ``(W x^T)^T``, the sparse matrix on the left (the
  sparse @ dense product torch implements natively; dense @ sparse is ~100x slower on CPU);
* :class:`SparseConv2d` (and ``Conv1d`` through a height-1 image): im2col (``F.unfold``, one sample at
  a time) followed by the same product, ``W`` viewed as ``(out, in * kh * kw)``; zero padding, any
  stride and dilation. (im2col copies every input ``kh * kw`` times: on CPU the dense direct
  convolution stays faster at moderate sparsity, see ``benchmarks/speedup.py``.)

Not converted (left dense, with masked weights) -- or, with ``strict=True``, an error naming them:
``Conv3d`` (no ``unfold``), grouped convolutions, padding modes other than ``"zeros"``, string
paddings, and, for BSR, layers whose 2-D weight is not divisible by ``blocksize``. Index tensors are
``int32`` (CSR/BSR indices of any layer here fit), halving their size against torch's ``int64``
default; :func:`model_bytes` counts values + indices.

The state dict holds plain dense tensors (``crow_indices``, ``col_indices``, ``values``, ``bias``), so
it can be written with safetensors, which cannot hold sparse tensors; loading it into a sparse model
built from the same architecture takes the stored shapes (the number of non-zeros differs between
masks). Outputs equal the masked model's to float tolerance (the sums run in a different order).

Speed on CPU: CSR pays off only at high sparsity (~90%+) and small batches; BSR needs
block-structured masks (its blocks store their zeros) and is mainly a GPU format. N:M masks
(:mod:`prunelab.pruning.nm`) are unstructured as far as these kernels go; NVIDIA's 2:4 tensor-core
kernels (``torch.sparse.to_sparse_semi_structured``) need a CUDA GPU and fp16/bf16.
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.models.adapters import is_conv1d

__all__ = ["LAYOUTS", "SparseConv2d", "SparseLinear", "model_bytes", "sparse_layers", "to_sparse"]

LAYOUTS = ("csr", "bsr")
_INDEX = torch.int32


def _compress(w2d: Tensor, layout: str, blocksize: tuple[int, int] | None) -> tuple[Tensor, Tensor, Tensor]:
    """(crow_indices, col_indices, values) of the 2-D ``w2d`` (int32 indices)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        s = w2d.to_sparse_csr() if layout == "csr" else w2d.to_sparse_bsr(blocksize)
    return s.crow_indices().to(_INDEX), s.col_indices().to(_INDEX), s.values().contiguous()


class _SparseWeight(nn.Module):
    """Holds a 2-D sparse weight as three dense buffers and rebuilds the sparse tensor on use."""

    def _init_sparse(self, w2d: Tensor, layout: str, blocksize: tuple[int, int] | None) -> None:
        self.layout = layout
        self.weight_shape = (int(w2d.shape[0]), int(w2d.shape[1]))
        crow, col, values = _compress(w2d.detach(), layout, blocksize)
        self.register_buffer("crow_indices", crow)
        self.register_buffer("col_indices", col)
        self.register_buffer("values", values)

    def sparse_weight(self) -> Tensor:
        make = torch.sparse_csr_tensor if self.layout == "csr" else torch.sparse_bsr_tensor
        return make(self.crow_indices, self.col_indices, self.values, self.weight_shape, check_invariants=False)

    def dense_weight_2d(self) -> Tensor:
        return self.sparse_weight().to_dense()

    @property
    def weight(self) -> Tensor:
        """The weight as a sparse tensor (read-only; it has the dtype and device models check, e.g. T5's
        feed-forward reads ``wo.weight.dtype``)."""
        return self.sparse_weight()

    @property
    def nnz(self) -> int:
        """Stored values (for BSR: whole blocks, zeros inside them included)."""
        return int(self.values.numel())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # the number of stored values depends on the masks: take the stored shapes
        for name in ("crow_indices", "col_indices", "values"):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _product(self, cols: Tensor) -> Tensor:
        """``W @ cols (+ bias per row)``: (out, K) x (K, P) -> (out, P)."""
        w = self.sparse_weight()
        if self.bias is not None:
            return torch.addmm(self.bias.unsqueeze(1), w, cols)
        return torch.sparse.mm(w, cols)


class SparseLinear(_SparseWeight):
    """``y = x W^T + b`` with ``W`` (out, in) stored sparse (CSR or BSR)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, layout: str = "csr",
                 blocksize: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = int(weight.shape[1]), int(weight.shape[0])
        self._init_sparse(weight, layout, blocksize)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    @classmethod
    def from_dense(cls, module: nn.Module, layout: str = "csr", blocksize: tuple[int, int] | None = None) -> SparseLinear:
        """From an ``nn.Linear`` or a ``transformers`` ``Conv1D`` (weight (in, out))."""
        w = module.weight.detach()
        return cls(w.t() if is_conv1d(module) else w, module.bias, layout, blocksize)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = self._product(x2.t().contiguous()).t()  # sparse @ strided dense: ~7x faster than on a transposed view
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, layout={self.layout}, nnz={self.nnz}, bias={self.bias is not None}"


class SparseConv2d(_SparseWeight):
    """A zero-padded, ungrouped ``Conv2d`` (or ``Conv1d``, as a height-1 image) by im2col + sparse matmul."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, layout: str = "csr", blocksize: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.one_d = isinstance(conv, nn.Conv1d)
        pair = (lambda v: (1, int(v[0]))) if self.one_d else (lambda v: (int(v[0]), int(v[1])))
        zero = (lambda v: (0, int(v[0]))) if self.one_d else pair
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = pair(conv.kernel_size), pair(conv.stride)
        self.padding, self.dilation = zero(conv.padding), pair(conv.dilation)
        w = conv.weight.detach()
        self._init_sparse(w.reshape(w.shape[0], -1), layout, blocksize)
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        if self.one_d:
            x = x.unsqueeze(2)
        n, _, h, w = x.shape
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        weight = self.sparse_weight()
        bias = self.bias.unsqueeze(1) if self.bias is not None else None
        out = x.new_empty((n, self.out_channels, ho * wo))
        for i in range(n):  # one sample's im2col at a time: it stays in cache (2.5x faster than the batch's)
            cols = F.unfold(x[i : i + 1], self.kernel_size, dilation=self.dilation, padding=self.padding,
                            stride=self.stride)[0]
            if bias is not None:
                torch.addmm(bias, weight, cols, out=out[i])
            else:
                out[i] = torch.sparse.mm(weight, cols)
        y = out.view(n, self.out_channels, ho, wo)
        return y.squeeze(2) if self.one_d else y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, layout={self.layout}, nnz={self.nnz}")


def _why_not(module: nn.Module, layout: str, blocksize: tuple[int, int] | None) -> str | None:
    """Why ``module`` cannot be exported (None if it can)."""
    if isinstance(module, nn.Conv3d):
        return "Conv3d has no im2col (F.unfold) in torch"
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1:
            return f"grouped convolution (groups={module.groups})"
        if module.padding_mode != "zeros":
            return f"padding_mode {module.padding_mode!r}"
        if isinstance(module.padding, str):
            return f"padding {module.padding!r} (give it as numbers)"
        if module.transposed:
            return "transposed convolution"
    elif not (isinstance(module, nn.Linear) or is_conv1d(module)):
        return f"{type(module).__name__} is not a Linear, Conv1D or Conv1d/2d layer"
    if layout == "bsr":
        w = module.weight
        rows, cols = (w.shape[1], w.shape[0]) if is_conv1d(module) else (w.shape[0], w[0].numel())
        if rows % blocksize[0] or cols % blocksize[1]:
            return f"its weight ({rows} x {cols} as a matrix) is not divisible into {blocksize[0]}x{blocksize[1]} blocks"
    return None


def _check_blocksize(layout: Any, blocksize: Any) -> tuple[int, int] | None:
    if layout not in LAYOUTS:
        raise PrunelabError(f"unknown sparse layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if layout == "csr":
        if blocksize is not None:
            raise PrunelabError("blocksize is for layout='bsr'; CSR stores single values")
        return None
    if isinstance(blocksize, int) and not isinstance(blocksize, bool):
        blocksize = (blocksize, blocksize)
    if (not isinstance(blocksize, (tuple, list)) or len(blocksize) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in blocksize)):
        raise PrunelabError(f"layout='bsr' needs blocksize=(rows, cols) of positive integers, got {blocksize!r}")
    return int(blocksize[0]), int(blocksize[1])


def to_sparse(
    model: nn.Module,
    masks: Mapping[str, Tensor] | None = None,
    layout: str = "csr",
    blocksize: int | tuple[int, int] | None = None,
    *,
    strict: bool = False,
    exclude: Sequence[str] = (),
) -> nn.Module:
    """A deep copy of ``model`` with ``masks`` applied whose masked layers store and run sparse weights.

    ``masks`` default to the non-zero pattern of the prunable weights (:meth:`Masks.from_weights`);
    only layers with a mask (a ``"<module>.weight"`` key) are converted, except those matching an
    fnmatch pattern of ``exclude``. ``layout`` is ``"csr"`` or ``"bsr"`` (then ``blocksize``, an int or
    (rows, cols)). Layers that cannot be exported (see the module doc) stay dense; with ``strict=True``
    they are an error naming them. The copy is in eval mode; ``model`` is not changed.
    """
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    block = _check_blocksize(layout, blocksize)
    masks = Masks.from_weights(model) if masks is None else masks if isinstance(masks, Masks) else Masks(masks)
    masks.validate(model)
    if isinstance(exclude, str):
        exclude = (exclude,)
    work = copy.deepcopy(model)
    masks.apply(work)
    work.eval()
    targets: list[str] = []
    refused: list[str] = []
    for key in masks:
        mod_name, _, attr = key.rpartition(".")
        if attr != "weight" or any(fnmatch.fnmatchcase(mod_name, p) for p in exclude):
            continue
        module = work.get_submodule(mod_name) if mod_name else work
        why = _why_not(module, layout, block)
        if why is None:
            targets.append(mod_name)
        else:
            refused.append(f"{mod_name!r} ({why})")
    if strict and refused:
        raise PrunelabError(f"cannot export {len(refused)} layer(s) as {layout}: {'; '.join(refused)}")
    for mod_name in targets:
        module = work.get_submodule(mod_name)
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            new: nn.Module = SparseConv2d(module, layout, block)
        else:
            new = SparseLinear.from_dense(module, layout, block)
        new.to(module.weight.device)
        parent_name, _, child = mod_name.rpartition(".")
        parent = work.get_submodule(parent_name) if parent_name else work
        setattr(parent, child, new)
    return work


def sparse_layers(model: nn.Module) -> dict[str, _SparseWeight]:
    """Module name -> the sparse layers of ``model`` (what :func:`to_sparse` converted)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _SparseWeight)}


def model_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (a sparse layer: its values, indices and bias)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total
