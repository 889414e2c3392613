"""``prunelab.prune``: the one entry point for mask-based pruning."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.models.adapters import ModelAdapter
from prunelab.pruning.direct import prune_direct
from prunelab.pruning.effective_target import prune_to_effective_sparsity


def prune(
    model: nn.Module,
    sparsity: float,
    criterion: str | Callable[..., dict[str, torch.Tensor]] = "magnitude",
    allocation: str | Mapping[str, float] | Callable[..., Masks] = "global",
    data: Any = None,
    seed: int = 0,
    *,
    masks: Mapping[str, torch.Tensor] | None = None,
    include: tuple[type[nn.Module] | str, ...] | None = None,
    exclude: tuple[str, ...] = (),
    iterations: int | None = None,
    update: str | Callable[..., None] | None = "auto",
    options: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    adapter: ModelAdapter | None = None,
    sparsity_kind: str = "direct",
    effective: bool = False,
) -> Masks:
    """Prune ``model`` to ``sparsity`` and return the masks. **The model's weights are changed**:
    pruned weights are set to 0 (and a weight update such as OBS may move the kept ones).

    ``sparsity`` is the overall fraction of the prunable weights removed, in [0, 1). ``criterion``
    (see ``CRITERIA``) scores weights, ``allocation`` (see ``ALLOCATIONS``, or a ``{layer: sparsity}``
    mapping) turns scores into masks. ``data`` is an (inputs, targets) pair or an iterable of pairs,
    needed by data-dependent criteria; for ``transformers`` models a batch is a dict (``input_ids``,
    ``attention_mask``, ``labels``, ...) or an (inputs, targets) pair whose inputs is such a dict.
    ``masks`` continue from existing masks (their pruned weights stay pruned); otherwise the weights of
    every Linear/Conv are prunable (``include``: module types, and fnmatch patterns of names that add
    weights, e.g. ``("lm_head",)``; minus ``exclude`` fnmatch patterns); for a ``transformers`` model
    the default is the Linear-like projections (``Conv1D`` included) of its attention and MLP blocks,
    embeddings and heads excluded, and a tied weight is one mask under its ``named_parameters`` name
    (see :func:`prunelab.masks.prunable_modules`). ``iterations=k`` repeats score -> allocate k times on an
    exponential density schedule (criteria flagged ``iterative``, e.g. SynFlow, default to their own
    count, overridable by ``options["iterations"]``). ``update`` is ``"auto"`` (the criterion's
    ``default_update``), None (off) or a name in ``UPDATES``. ``options`` go to the criterion through
    ``ctx.options``, with ``ctx.options["sparsity"]`` set to the sparsity of the current round and
    ``ctx.options["allocation"]`` to the allocation's name (``"explicit"`` for a mapping).
    ``device`` moves the model there (default: where its parameters are). ``loss_fn(outputs,
    targets)`` defaults to cross-entropy. Same seed, same device -> same masks.

    ``adapter`` (a :class:`prunelab.models.adapters.ModelAdapter`) says how the model is called on a
    batch and what its loss is (inputs -> outputs -> logits -> loss); every criterion and update runs
    the model through it. Default: :func:`prunelab.models.adapters.adapter_for` the model with
    ``loss_fn`` -- plain models as above; ``transformers`` sequence/image/token classification, causal
    LMs (next-token loss, padding ignored) and seq2seq LMs (``labels`` required) by class name. Give
    either ``adapter`` or ``loss_fn``. A token model's input shape is (T,), the sequence length, taken
    from ``model.input_shape``, else the first data batch, else the config; SynFlow feeds token models
    an all-ones embedding input. See docs/models.md ("Models nobody here wrote").

    Every argument is checked before any work; bad input is a one-line ``PrunelabError``. ``data`` is
    checked once up front (:func:`prunelab.pruning.context.as_batches` and ``check_data``: 0 samples,
    x/y lengths, the input shape by one probe forward pass, and with the default loss integer labels in
    0..C-1); a criterion or update flagged ``fn.needs_data = True`` without data is an error naming it.

    ``sparsity_kind="effective"`` makes ``sparsity`` a target for the *effective* sparsity (weights
    cut off from input or output count as removed; Vysogorets & Kempe 2023): the number of
    lowest-scored weights to prune is found by bisection. ``effective=True`` also returns the
    effective masks (disconnected weights dropped for free, their budget re-spent on the next-best
    weights); it implies ``sparsity_kind="effective"``. See :mod:`prunelab.pruning.effective_target`.
    """
    if sparsity_kind not in ("direct", "effective"):
        raise PrunelabError(f"sparsity_kind {sparsity_kind!r} is not one of: direct, effective")
    if sparsity_kind == "effective" or effective:
        return prune_to_effective_sparsity(
            model, sparsity, criterion, allocation, data, seed, effective=bool(effective), masks=masks,
            include=include, exclude=exclude, iterations=iterations, update=update, options=options,
            device=device, loss_fn=loss_fn, adapter=adapter,
        )
    return prune_direct(
        model, sparsity, criterion, allocation, data, seed, masks=masks, include=include, exclude=exclude,
        iterations=iterations, update=update, options=options, device=device, loss_fn=loss_fn, adapter=adapter,
    )
