"""Pruning to a *direct* sparsity: score, allocate, (optionally) update weights, repeat; return the masks.

:func:`prunelab.prune` (in :mod:`prunelab.pruning.api`) calls :func:`prune_direct` for
``sparsity_kind="direct"`` and the bisection of :mod:`prunelab.pruning.effective_target` (which calls
:func:`prune_direct` in turn) for ``"effective"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from prunelab.analysis.sparsity import resolve_input_shape
from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.models.adapters import ModelAdapter, TensorAdapter, UnsupportedAdapter, adapter_for, check_adapter

# Importing the modules registers the built-in criteria (and, above, the allocations).
from prunelab.pruning import criteria as _criteria  # noqa: F401
from prunelab.pruning.allocation import ExplicitAllocation, check_sparsity
from prunelab.pruning.context import (
    ALLOCATIONS,
    CRITERIA,
    UPDATES,
    ScoreContext,
    needs_data,
    no_data_message,
    parse_options,
    prepare_batches,
)
from prunelab.utils import resolve_device


def _check_count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PrunelabError(f"{what} must be a positive integer, got {value!r}")
    return value


def _pick(registry: Any, value: Any, what: str) -> Callable[..., Any]:
    if isinstance(value, str):
        return registry.get(value)
    if callable(value):
        return value
    raise PrunelabError(f"{what} must be a name ({', '.join(registry.names())}) or a function, got {value!r}")


def _update_fn(update: Any, criterion_fn: Callable[..., Any]) -> Callable[..., None] | None:
    if update is None:
        return None
    if isinstance(update, str) and update == "auto":
        name = getattr(criterion_fn, "default_update", None)
        return UPDATES.get(name) if name else None
    return _pick(UPDATES, update, "update")


#: built-in criteria/updates that still call the model on tensor batches with ``ctx.loss_fn`` and so
#: cannot take a model adapter: name -> why (refused up front with a one-line error).
TENSOR_ONLY: dict[str, str] = {}


def _check_tensor_only(score_fn: Callable[..., Any], name: str, adapter: ModelAdapter, model: nn.Module) -> None:
    if type(adapter) is TensorAdapter or name not in TENSOR_ONLY or score_fn is not CRITERIA.get(name):
        return
    raise PrunelabError(
        f"criterion {name!r} cannot run {type(model).__name__} through its {adapter.name} adapter yet: "
        f"{TENSOR_ONLY[name]}; use criterion 'woodfisher' (optionally with update='cbs') instead"
    )


def resolve_adapter(model: nn.Module, adapter: Any, loss_fn: Any) -> ModelAdapter:
    """The adapter of one pruning call: ``adapter`` (checked), else :func:`adapter_for` the model with
    ``loss_fn``; giving both is an error (an adapter carries its loss)."""
    if adapter is None:
        return adapter_for(model, loss_fn)
    if loss_fn is not None:
        raise PrunelabError("give either adapter= or loss_fn=, not both (an adapter carries its loss)")
    return check_adapter(adapter)


def schedule(start_density: float, sparsity: float, iterations: int) -> list[float]:
    """Sparsities of an exponential schedule: density_k = d0 * (d / d0)^(k / n), k = 1..n, d = 1 - sparsity.

    With fresh masks (d0 = 1) this is Tanaka et al.'s (2020) ``density^(k/n)``; the last entry is
    exactly ``sparsity``.
    """
    ratio = (1.0 - sparsity) / start_density
    return [1.0 - start_density * ratio ** (k / iterations) for k in range(1, iterations)] + [sparsity]


def prune_direct(
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
) -> Masks:
    """:func:`prunelab.prune` with ``sparsity_kind="direct"``: the arguments are documented there."""
    sparsity = check_sparsity(sparsity)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise PrunelabError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if options is not None and not isinstance(options, Mapping):
        raise PrunelabError(f"options must be a dict of criterion settings, got {options!r}")
    options = dict(options or {})
    if loss_fn is not None and not callable(loss_fn):
        raise PrunelabError(f"loss_fn must be a function (outputs, targets) -> scalar loss, got {loss_fn!r}")
    adapter = resolve_adapter(model, adapter, loss_fn)

    score_fn = _pick(CRITERIA, criterion, "criterion")
    criterion_name = criterion.lower() if isinstance(criterion, str) else getattr(score_fn, "__name__", "custom")
    allocate = ExplicitAllocation(allocation) if isinstance(allocation, Mapping) else _pick(ALLOCATIONS, allocation, "allocation")
    update_fn = _update_fn(update, score_fn)
    _check_tensor_only(score_fn, criterion_name, adapter, model)
    if isinstance(adapter, UnsupportedAdapter) and (data is not None or needs_data(score_fn)):
        adapter.require()
    if data is None:  # fail before any work (an unflagged criterion still fails in ctx.require_data)
        if needs_data(score_fn):
            raise PrunelabError(no_data_message(criterion_name))
        if needs_data(update_fn):
            name = update if isinstance(update, str) and update != "auto" else getattr(score_fn, "default_update", None)
            name = name if isinstance(name, str) else getattr(update_fn, "__name__", "update")
            raise PrunelabError(no_data_message(name, "update"))
    allocation_name = (
        allocation.lower() if isinstance(allocation, str)
        else "explicit" if isinstance(allocation, Mapping) else getattr(allocation, "__name__", "custom")
    )
    update_name = update if isinstance(update, str) and update != "auto" else getattr(
        score_fn, "default_update", None) or getattr(update_fn, "__name__", "custom")
    options = parse_options(
        [("criterion", criterion_name, score_fn),
         ("allocation", allocation_name, None if isinstance(allocate, ExplicitAllocation) else allocate),
         ("update", update_name, update_fn)],
        options,
    )

    if device is not None:
        model.to(resolve_device(device))
    first = next(iter(model.parameters()), None)
    dev = first.device if first is not None else torch.device("cpu")

    if masks is None:
        masks = Masks.ones(model, include, exclude)
        if not masks:
            default = (
                "the Linear-like projections inside a transformers model's blocks"
                if type(adapter) is not TensorAdapter else "the weights of Linear and Conv1d/2d/3d layers"
            )
            raise PrunelabError(
                f"model {type(model).__name__} has no prunable layer (include={include!r}, exclude={exclude!r}); "
                f"by default {default} are prunable"
            )
    else:
        if include is not None or tuple(exclude or ()):
            raise PrunelabError("give either masks= or include=/exclude=, not both (masks already say what is prunable)")
        masks = (masks if isinstance(masks, Masks) else Masks(masks)).to(dev)
        if not masks:
            raise PrunelabError("masks= is empty: there is nothing to prune")
        masks.validate(model)

    if iterations is None:
        default = getattr(score_fn, "default_iterations", 1) if getattr(score_fn, "iterative", False) else 1
        n_rounds = _check_count(default if options.get("iterations") is None else options["iterations"], "options['iterations']")
    else:
        n_rounds = _check_count(iterations, "iterations")

    if isinstance(allocate, ExplicitAllocation) and n_rounds > 1:
        raise PrunelabError(
            f"an explicit per-layer allocation is one-shot, but {n_rounds} rounds were asked for "
            "(iterations / options['iterations'] / an iterative criterion): pass iterations=1"
        )
    if isinstance(allocate, ExplicitAllocation):  # unknown layers / unreachable targets before scoring
        allocate.plan(masks, sparsity)
    # data is checked once, up front: structure and lengths, then one probe forward pass (shapes, labels)
    tensor_model = type(adapter) is TensorAdapter
    carried = getattr(model, "input_shape", None)  # other models: only a shape they carry, no guessing
    input_shape = resolve_input_shape(model, None) if tensor_model or carried is not None else None
    batches = prepare_batches(adapter, model, data, dev, who=criterion_name, input_shape=input_shape)
    if input_shape is None and batches:  # the model carries none: the first batch's per-sample shape
        input_shape = adapter.sample_shape(batches[0]) if not tensor_model else tuple(batches[0][0].shape[1:])
    if input_shape is None and not tensor_model:  # data-free: the config's (context length, image size)
        input_shape = adapter.default_input_shape(model)
    ctx = ScoreContext(
        batches=batches,
        seed=seed,
        device=dev,
        input_shape=input_shape,
        options=options,
        adapter=adapter,
        **({"loss_fn": loss_fn} if loss_fn is not None else {}),
    )

    total, kept = masks.num_total(), masks.num_kept()
    if total - round(sparsity * total) > kept:  # counted as the allocations count
        raise PrunelabError(
            f"sparsity {sparsity!r} is below the sparsity the given masks already have ({masks.sparsity():.6f}); "
            "pruned weights are never revived"
        )
    masks.apply(model)
    for round_sparsity in schedule(kept / total, sparsity, n_rounds):
        # within one weight of the masks' sparsity, rounding can put a round just below it: clamp
        round_sparsity = max(round_sparsity, 1.0 - kept / total) if round_sparsity != sparsity else sparsity
        # the allocation's name lets set-selecting criteria (CBS) check that they run with "global"
        ctx.options = {**options, "sparsity": round_sparsity, "allocation": allocation_name}
        scores = score_fn(model, masks, ctx)
        new_masks = allocate(scores, masks, round_sparsity, ctx)
        if not isinstance(new_masks, Masks):
            new_masks = Masks(new_masks)
        if update_fn is not None:
            update_fn(model, masks, new_masks, ctx)
        new_masks.apply(model)
        masks = new_masks
    return masks

