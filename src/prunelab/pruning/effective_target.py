"""Prune to a target *effective* sparsity ("effective pruning" of Vysogorets & Kempe, JMLR 2023).

Pruning k weights may disconnect others, so the effective sparsity (see
:mod:`prunelab.analysis.effective`) of a pruning is at least its direct sparsity. To compare methods
fairly, the paper prunes to a requested *effective* sparsity: it bisects on the number k of
lowest-scored weights to remove until the effective sparsity reaches the target (their code:
``effective_correction_from_global_scores`` in github.com/avysogorets/effective-sparsity). Here:

* ``k`` is the number of weights ``prunelab.prune`` removes (sparsity ``k / N``; allocations remove
  exactly ``round(sparsity * N)``), and the search returns the **smallest** k whose effective
  sparsity is >= the target (the paper's code keeps the largest k whose effective sparsity is <= the
  target; we never undershoot the requested sparsity). The target in weights is
  ``round(target * N)`` ineffective weights. Removing one weight can disconnect many, so the
  effective sparsity found can exceed the target by the size of that last jump; where no jump
  straddles the target it is met to the weight.
* **Exact vs heuristic.** Bisection finds the smallest k only if effective sparsity grows
  monotonically with k, which holds when a higher sparsity prunes a superset (nested masks): true
  for one-shot criteria (``random`` with a fixed seed draws the same scores, ``magnitude``,
  ``snip``, ``grasp``, ``lamp`` on fixed weights/data) with ``global`` allocation, and for density
  allocations (``uniform``, ``erk``, ``igq``, ``uniform_plus``) up to their per-layer rounding (a
  one-weight shift between layers can break nesting). For iterative criteria (``synflow``, or any
  ``iterations > 1``) and weight updates the masks at different k are not nested: the result still
  meets the target, but k may not be the smallest.
* ``effective=True`` returns the *effective* masks of that pruning: disconnected weights removed
  "for free", so the budget they held is re-spent on the next-best-scored weights and the returned
  masks have direct sparsity == effective sparsity (>= target, see above).

The search prunes deep copies of the model; the caller's model receives the weights of the chosen
pruning (``load_state_dict`` of the pruned copy, so weight updates such as OBS carry over) only at
the end, further zeroing disconnected weights when ``effective=True``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunelab.analysis.sparsity import model_effective_masks
from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.models.adapters import TensorAdapter, adapter_for
from prunelab.pruning.direct import prune_direct


@dataclass
class Evaluation:
    """One pruning tried by the search: ``pruned`` weights removed directly, ``effective_kept`` left on paths."""

    pruned: int
    direct_kept: int
    effective_kept: int


@dataclass
class EffectiveSearch:
    """Outcome of :func:`search_effective_sparsity`: the chosen pruning and every pruning tried."""

    masks: Masks  # direct masks of the chosen pruning
    effective: Masks  # their effective masks
    target: float
    total: int
    evaluations: list[Evaluation] = field(default_factory=list)

    @property
    def direct_sparsity(self) -> float:
        return self.masks.sparsity()

    @property
    def effective_sparsity(self) -> float:
        return self.effective.sparsity()

    def to_row(self) -> dict[str, float | int]:
        return {
            "target_effective_sparsity": self.target,
            "direct_sparsity": self.direct_sparsity,
            "effective_sparsity": self.effective_sparsity,
            "search_evaluations": len(self.evaluations),
        }


def _check(target: Any, prune_kwargs: dict[str, Any]) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 <= float(target) < 1.0:
        raise PrunelabError(f"target effective sparsity must be a number in [0, 1), got {target!r}")
    taken = {"model", "sparsity", "criterion", "allocation", "data", "seed"}
    allowed = set(inspect.signature(prune_direct).parameters) - taken
    unknown = sorted(set(prune_kwargs) - allowed)
    if unknown:
        raise PrunelabError(
            f"unknown prune option(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    return float(target)


def _start_masks(model: nn.Module, prune_kwargs: dict[str, Any]) -> Masks:
    given = prune_kwargs.get("masks")
    if given is not None:
        return given if isinstance(given, Masks) else Masks(given)
    return Masks.ones(model, prune_kwargs.get("include"), prune_kwargs.get("exclude", ()))


def _search(
    model: nn.Module,
    target: float,
    criterion: Any,
    allocation: Any,
    data: Any,
    seed: int,
    input_shape: Sequence[int] | None,
    prune_kwargs: dict[str, Any],
) -> tuple[EffectiveSearch, nn.Module]:
    """Bisection on the pruned count; returns the result and the pruned copy of the chosen pruning."""
    target = _check(target, prune_kwargs)
    start = _start_masks(model, prune_kwargs)
    total = start.num_total()
    if total == 0:
        raise PrunelabError("the model has no prunable weights")
    keep_goal = total - round(target * total)  # at most this many weights may stay effective
    already = total - start.num_kept()
    cache: dict[int, tuple[Masks, Masks, nn.Module]] = {}
    evaluations: list[Evaluation] = []
    adapter = prune_kwargs.get("adapter") or adapter_for(model)  # token models: connectivity of their ids
    shape = input_shape
    if shape is None and type(adapter) is not TensorAdapter:
        shape = adapter.default_input_shape(model)

    def meets(k: int) -> bool:
        if k not in cache:
            pruned_copy = copy.deepcopy(model)
            masks = prune_direct(pruned_copy, k / total, criterion, allocation, data, seed, **prune_kwargs)
            eff = model_effective_masks(pruned_copy, masks, shape, adapter)
            eff = eff if isinstance(eff, Masks) else Masks(eff)
            cache[k] = (masks, eff, pruned_copy)
            evaluations.append(Evaluation(k, masks.num_kept(), eff.num_kept()))
        return cache[k][1].num_kept() <= keep_goal

    hi = max(total - keep_goal, already)  # direct sparsity = target: effective sparsity >= target
    if not meets(hi):
        raise PrunelabError(
            f"pruning {hi} of {total} weights left {cache[hi][1].num_kept()} effective weights, more than the "
            f"{keep_goal} a target of {target} allows; the allocation did not remove the requested count"
        )
    lo = already - 1  # sentinel: one fewer than the fewest weights that can be pruned
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meets(mid):
            hi = mid
        else:
            lo = mid
        for k, (m, e, c) in cache.items():  # keep only the best pruned copy in memory
            if k != hi and c is not None:
                cache[k] = (m, e, None)  # type: ignore[assignment]
    masks, eff, pruned_copy = cache[hi]
    return EffectiveSearch(masks, eff, target, total, evaluations), pruned_copy


def search_effective_sparsity(
    model: nn.Module,
    target: float,
    criterion: Any = "magnitude",
    allocation: Any = "global",
    data: Any = None,
    seed: int = 0,
    *,
    input_shape: Sequence[int] | None = None,
    **prune_kwargs: Any,
) -> EffectiveSearch:
    """Find the smallest direct pruning (by ``prunelab.prune``) whose effective sparsity >= ``target``.

    The model is left unchanged; the result lists every pruning tried. See the module docstring for
    when the bisection is exact. ``prune_kwargs`` go to ``prunelab.prune`` (``masks``, ``include``,
    ``exclude``, ``iterations``, ``update``, ``options``, ...); ``input_shape`` to the effective-sparsity
    analysis (default ``model.input_shape``).
    """
    return _search(model, target, criterion, allocation, data, seed, input_shape, prune_kwargs)[0]


def prune_to_effective_sparsity(
    model: nn.Module,
    target: float,
    criterion: Any = "magnitude",
    allocation: Any = "global",
    data: Any = None,
    seed: int = 0,
    *,
    effective: bool = False,
    input_shape: Sequence[int] | None = None,
    **prune_kwargs: Any,
) -> Masks:
    """Prune ``model`` (in place, like ``prunelab.prune``) so its *effective* sparsity reaches ``target``.

    Returns the direct masks of the smallest such pruning, or with ``effective=True`` their effective
    masks (disconnected weights removed too; direct == effective sparsity). Vysogorets & Kempe (2023),
    "effective pruning"; exactness and the choices made are in the module docstring.
    """
    if not isinstance(effective, bool):
        raise PrunelabError(f"effective must be True or False, got {effective!r}")
    result, pruned_copy = _search(model, target, criterion, allocation, data, seed, input_shape, prune_kwargs)
    model.load_state_dict(pruned_copy.state_dict())
    if effective:
        result.effective.apply(model)
        return result.effective
    return result.masks
