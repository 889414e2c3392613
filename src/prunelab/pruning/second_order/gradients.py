"""The gradient matrix G (N x d) behind the empirical Fisher.

Row n of G is the gradient of the loss on one sample (``batch == 1``) or the mean loss over a mini-batch
of ``batch`` samples, taken with respect to the kept prunable weights only (a :class:`Layout`), at the
*masked* network (pruned weights read as zero). Rows are computed ``chunk`` at a time with
``torch.func.vmap(torch.func.grad(...))`` over ``functional_call`` — one vectorised backward pass per
chunk instead of one per sample. The model is put in ``eval()`` mode while this runs (BatchNorm uses its
running statistics, dropout is off) and restored afterwards.

Models that are not plain tensor models (``transformers`` models, any custom
:class:`~prunelab.models.adapters.ModelAdapter`) are run through their adapter: batches are taken
apart with ``adapter.select`` and each row is one backward pass of ``adapter.loss`` (``vmap`` cannot
trace the data-dependent masking of token losses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from prunelab.errors import PrunelabError
from prunelab.models.adapters import ModelAdapter, TensorAdapter, logits_of
from prunelab.pruning.second_order.layout import Layout
from prunelab.utils import eval_mode

Batch = tuple[torch.Tensor, torch.Tensor]


def _tensor_adapter(adapter: ModelAdapter | None) -> bool:
    return adapter is None or type(adapter) is TensorAdapter


def sample_pool(
    batches: Sequence[Batch], count: int, generator: torch.Generator, adapter: ModelAdapter | None = None
) -> Batch:
    """``count`` samples drawn without replacement from all ``batches`` (order from ``generator``);
    batches of a non-tensor ``adapter`` are pooled with ``adapter.concat`` / ``adapter.select``."""
    if not _tensor_adapter(adapter):
        pool = adapter.concat(batches)
        total = adapter.batch_size(pool)
        if count > total:
            raise PrunelabError(
                f"the Fisher needs fisher_samples * fisher_batch = {count} samples but the data has "
                f"{total}; pass more data or lower fisher_samples / fisher_batch"
            )
        return adapter.select(pool, torch.randperm(total, generator=generator)[:count])
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    if count > xs.shape[0]:
        raise PrunelabError(
            f"the Fisher needs fisher_samples * fisher_batch = {count} samples but the data has "
            f"{xs.shape[0]}; pass more data or lower fisher_samples / fisher_batch"
        )
    idx = torch.randperm(xs.shape[0], generator=generator)[:count].to(xs.device)
    return xs[idx], ys[idx]


def gradient_matrix(
    model: nn.Module,
    layout: Layout,
    masks: dict[str, torch.Tensor],
    inputs: Any,
    targets: Any,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: int = 1,
    chunk_bytes: int = 2**26,
    *,
    adapter: ModelAdapter | None = None,
) -> torch.Tensor:
    """G: (N, dim) float32, N = len(inputs) // batch; row n = grad of the mean loss of mini-batch n.

    G is an (N, dim) view of a contiguous (dim, N) buffer, so one weight's gradients (a column of G)
    are contiguous in memory; every consumer only uses indexing and matmul, which accept the view.

    ``inputs``/``targets`` are split into N consecutive mini-batches of ``batch`` samples (a remainder
    is an error). ``chunk_bytes`` bounds the per-chunk gradient memory. With a non-tensor ``adapter``
    (``inputs`` then a dict of tensors) the loss is ``adapter.loss`` and ``loss_fn`` is not used.
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise PrunelabError(f"fisher_batch must be a positive integer, got {batch!r}")
    if not _tensor_adapter(adapter):
        return _adapter_gradient_matrix(model, layout, masks, (inputs, targets), adapter, batch)
    total = inputs.shape[0]
    if total == 0 or total % batch:
        raise PrunelabError(f"{total} samples do not split into mini-batches of fisher_batch={batch}")
    n_rows = total // batch
    device = inputs.device
    params = dict(model.named_parameters())
    masked = {n: (params[n] * masks[n].to(device=params[n].device, dtype=params[n].dtype)).detach() for n in layout.names}
    fixed = {n: p.detach() for n, p in params.items() if n not in masked}
    fixed.update(dict(model.named_buffers()))

    def loss_of(weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**fixed, **weights}, (x,))
        return loss_fn(out if isinstance(out, torch.Tensor) else logits_of(out), y)

    per_row = vmap(grad(loss_of), in_dims=(None, 0, 0))
    numel = sum(p.numel() for p in masked.values())
    rows_per_chunk = max(1, chunk_bytes // (4 * numel * max(batch, 1)))
    xs = inputs.reshape(n_rows, batch, *inputs.shape[1:])
    ys = targets.reshape(n_rows, batch, *targets.shape[1:])
    # column-major: each weight's N gradients are contiguous (CBS-S reads single columns of G)
    out = torch.empty(layout.dim, n_rows, dtype=torch.float32, device=device).T
    # None where a layer is fully kept: a plain copy instead of a gather
    kept = [None if k.numel() == masked[n].numel() else k.to(device) for n, k in zip(layout.names, layout.kept)]
    widths = [int(k.numel()) for k in layout.kept]
    with eval_mode(model):
        for lo in range(0, n_rows, rows_per_chunk):
            hi = min(n_rows, lo + rows_per_chunk)
            try:
                grads = per_row(masked, xs[lo:hi], ys[lo:hi])
            except RuntimeError:
                grads = _loop_gradients(loss_of, masked, xs[lo:hi], ys[lo:hi])
            for name, idx, start, width in zip(layout.names, kept, layout.offsets, widths):
                rows = grads[name].reshape(hi - lo, -1)
                out[lo:hi, start : start + width] = rows if idx is None else rows.index_select(1, idx)
    if not torch.isfinite(out.T).all():  # .T is the contiguous buffer: a linear scan
        raise PrunelabError("the per-sample gradients contain NaN or inf; the Fisher is undefined for this model/data")
    return out


def _masked_and_fixed(model: nn.Module, layout: Layout, masks: dict[str, torch.Tensor]):
    params = dict(model.named_parameters())
    masked = {n: (params[n] * masks[n].to(device=params[n].device, dtype=params[n].dtype)).detach() for n in layout.names}
    fixed = {n: p.detach() for n, p in params.items() if n not in masked}
    fixed.update(dict(model.named_buffers()))
    return masked, fixed


def _adapter_gradient_matrix(
    model: nn.Module, layout: Layout, masks: dict[str, torch.Tensor], pool: Any, adapter: ModelAdapter, batch: int
) -> torch.Tensor:
    """G through ``adapter``: one backward pass of ``adapter.loss`` per row (mini-batch of ``batch``)."""
    total = adapter.batch_size(pool)
    if total == 0 or total % batch:
        raise PrunelabError(f"{total} samples do not split into mini-batches of fisher_batch={batch}")
    n_rows = total // batch
    masked, fixed = _masked_and_fixed(model, layout, masks)
    device = next(iter(masked.values())).device
    out = torch.empty(layout.dim, n_rows, dtype=torch.float32, device=device).T
    with eval_mode(model):
        for r in range(n_rows):
            sub = adapter.select(pool, torch.arange(r * batch, (r + 1) * batch))
            leaf = {n: w.clone().requires_grad_(True) for n, w in masked.items()}
            loss = adapter.loss(model, sub, {**fixed, **leaf})
            grads = torch.autograd.grad(loss, list(leaf.values()), allow_unused=True)
            for name, g, k, start in zip(layout.names, grads, layout.kept, layout.offsets):
                width = int(k.numel())
                if g is None:
                    out[r, start : start + width] = 0.0
                else:
                    flat = g.reshape(-1)
                    out[r, start : start + width] = flat if width == flat.numel() else flat.index_select(0, k.to(flat.device))
    if not torch.isfinite(out.T).all():  # .T is the contiguous buffer: a linear scan
        raise PrunelabError("the per-sample gradients contain NaN or inf; the Fisher is undefined for this model/data")
    return out


def _loop_gradients(loss_of, weights, xs, ys) -> dict[str, torch.Tensor]:
    """Fallback for models ``vmap`` cannot trace (e.g. in-place ops on inputs): one backward per row."""
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in weights}
    for x, y in zip(xs, ys):
        leaf = {n: w.clone().requires_grad_(True) for n, w in weights.items()}
        gs = torch.autograd.grad(loss_of(leaf, x, y), list(leaf.values()), allow_unused=True)
        for (n, w), g in zip(leaf.items(), gs):
            rows[n].append(torch.zeros_like(w) if g is None else g)
    return {n: torch.stack(v) for n, v in rows.items()}
