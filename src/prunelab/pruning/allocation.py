"""Allocations: turn scores into masks that hit an overall sparsity.

An allocation is ``fn(scores, masks, sparsity, ctx=None) -> Masks`` registered in
:data:`prunelab.pruning.context.ALLOCATIONS`. All of them share these rules:

* The number of weights removed is ``round(sparsity * N)`` (Python's ``round``, as
  ``torch.nn.utils.prune`` does), N = all weights in ``masks``; so the result is exact, not just
  "within one weight".
* Already-pruned weights stay pruned (they score -inf); asking for less sparsity than the masks
  already have is an error.
* Inside a layer the highest scores are kept; ties are broken by index (the earlier weight is kept).

``global`` ranks all layers together. The others first fix how many weights each layer keeps from a
density family (``uniform``, ``uniform_plus``, ``erk``, ``igq``), solved so the real-valued counts sum
to the target (a layer cannot keep more than it has now), then round the counts: floors first, the
remainder to the largest fractional parts (earlier layer first on ties). :func:`layer_densities`
exposes the real-valued densities. An explicit ``{layer: sparsity}`` mapping is
:class:`ExplicitAllocation`. :func:`validate_allocation` checks an allocation against a model before
any work (e.g. before dense training in an experiment).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.pruning.context import ALLOCATIONS, ScoreContext

Scores = Mapping[str, torch.Tensor]


# --- shared pieces -------------------------------------------------------------------------------
def check_sparsity(sparsity: object, what: str = "sparsity") -> float:
    """``sparsity`` as a float in [0, 1), or a PrunelabError naming it."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not math.isfinite(sparsity):
        raise PrunelabError(f"{what} must be a number in [0, 1) (fraction of weights removed), got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise PrunelabError(f"{what} must be in [0, 1) (fraction of weights removed), got {sparsity!r}")
    return float(sparsity)


def as_masks(masks: Mapping[str, torch.Tensor]) -> Masks:
    masks = masks if isinstance(masks, Masks) else Masks(masks)
    if not masks:
        raise PrunelabError("masks are empty: the model has no prunable layer")
    return masks


def target_kept(masks: Masks, sparsity: float) -> int:
    """Weights to keep overall: N - round(sparsity * N); error if the masks already keep fewer."""
    total = masks.num_total()
    keep = total - round(sparsity * total)
    kept_now = masks.num_kept()
    if keep > kept_now:
        raise PrunelabError(
            f"sparsity {sparsity!r} asks to keep {keep} weights but the masks already keep only {kept_now} "
            f"(sparsity {masks.sparsity():.6f}); pruned weights are never revived"
        )
    return keep


def _score_dtype(scores: Scores, names: Sequence[str]) -> torch.dtype:
    return torch.float64 if any(scores[n].dtype == torch.float64 for n in names) else torch.float32


def check_scores(scores: Scores, masks: Masks) -> None:
    if not isinstance(scores, Mapping):
        raise PrunelabError(f"scores must be a mapping of layer name -> tensor, got {type(scores).__name__}")
    for name, mask in masks.items():
        if name not in scores:
            raise PrunelabError(f"scores lack layer {name!r}; the criterion must score every masked layer")
        s = scores[name]
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != tuple(mask.shape):
            shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise PrunelabError(f"scores of {name!r} have shape {shape}, the mask has {tuple(mask.shape)}")


def _sanitize(flat: torch.Tensor, keep: torch.Tensor, names: Sequence[str], sizes: Sequence[int]) -> None:
    """In place: NaN -> error naming the layer; ±inf of kept weights -> finite extremes; pruned -> -inf.

    Clamping ±inf keeps an already-pruned weight strictly below every kept one, so it is never revived.
    """
    if not bool(torch.isfinite(flat.sum())):  # one cheap reduction; NaN and ±inf all propagate
        nan = torch.isnan(flat)
        if bool(nan.any()):
            first = int(nan.nonzero()[0])
            layer = names[int(np.searchsorted(np.cumsum(sizes), first, side="right"))]
            raise PrunelabError(f"scores of layer {layer!r} contain NaN; the criterion failed on this model")
        info = torch.finfo(flat.dtype)
        flat.nan_to_num_(posinf=info.max, neginf=info.min)
    flat.masked_fill_(~keep, float("-inf"))


def keep_top(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask keeping the ``k`` largest entries of the 1-D ``flat``; ties go to the lower index.

    One ``kthvalue`` (selection, no full sort) finds the threshold; of the entries equal to it, the
    first ones in index order are the ones pruned, so exactly ``n - k`` entries are pruned.
    """
    n = flat.numel()
    k_prune = n - int(k)
    if k_prune <= 0:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    if k_prune >= n:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    threshold = torch.kthvalue(flat, k_prune).values
    prune = flat < threshold
    need = k_prune - int(torch.count_nonzero(prune))
    if need > 0:
        ties = (flat == threshold).nonzero().squeeze(1)[:need]
        prune[ties] = True
    return ~prune


# --- global --------------------------------------------------------------------------------------
@ALLOCATIONS.register("global")
def global_allocation(
    scores: Scores, masks: Mapping[str, torch.Tensor], sparsity: float, ctx: ScoreContext | None = None
) -> Masks:
    """One threshold over the scores of all layers (e.g. global magnitude pruning).

    The scores are concatenated once and ``torch.kthvalue`` selects the threshold on the flat vector.
    """
    masks = as_masks(masks)
    sparsity = check_sparsity(sparsity)
    check_scores(scores, masks)
    keep_total = target_kept(masks, sparsity)
    names = list(masks)
    sizes = [masks[n].numel() for n in names]
    device = masks[names[0]].device
    dtype = _score_dtype(scores, names)
    flat = torch.cat([scores[n].detach().reshape(-1).to(device=device, dtype=dtype) for n in names])
    keep = torch.cat([masks[n].reshape(-1).to(device) for n in names])
    _sanitize(flat, keep, names, sizes)
    kept = keep_top(flat, keep_total)
    return Masks({n: part.view(masks[n].shape).to(masks[n].device) for n, part in zip(names, kept.split(sizes))})


# --- per-layer counts ----------------------------------------------------------------------------
def round_counts(real: np.ndarray, caps: np.ndarray, total: int) -> np.ndarray:
    """Integers within [0, caps] summing to ``total``, each the floor or ceil of ``real`` where possible.

    Floors first; the remainder goes one by one to the largest fractional parts (the earlier layer on
    ties), or is taken from the smallest ones if the floors overshoot.
    """
    real = np.clip(real, 0.0, caps)
    counts = np.minimum(np.floor(real + 1e-9).astype(np.int64), caps)
    frac = real - counts
    order = sorted(range(len(real)), key=lambda i: (-frac[i], i))
    rest = int(total - counts.sum())
    while rest > 0:
        moved = False
        for i in order:
            if rest and counts[i] < caps[i]:
                counts[i] += 1
                rest -= 1
                moved = True
        if not moved:
            raise PrunelabError(f"cannot keep {total} weights: the layers hold only {int(caps.sum())}")
    while rest < 0:
        moved = False
        for i in reversed(order):
            if rest and counts[i] > 0:
                counts[i] -= 1
                rest += 1
                moved = True
        if not moved:  # pragma: no cover - counts are non-negative and total >= 0
            raise PrunelabError(f"cannot keep {total} weights")
    return counts


def allocate_counts(
    scores: Scores, masks: Masks, counts: Sequence[int]
) -> Masks:
    """Keep the top ``counts[i]`` scores of layer i (pruned weights score -inf)."""
    out: dict[str, torch.Tensor] = {}
    dtype = _score_dtype(scores, list(masks))
    for (name, mask), k in zip(masks.items(), counts):
        flat = scores[name].detach().reshape(-1).to(device=mask.device, dtype=dtype).clone()
        keep = mask.reshape(-1)
        _sanitize(flat, keep, [name], [flat.numel()])
        out[name] = keep_top(flat, int(k)).view(mask.shape)
    return Masks(out)


def _solve(kept_at: Callable[[float], np.ndarray], lo: float, hi: float, target: float) -> np.ndarray:
    """Real-valued per-layer kept counts at the parameter where their (nondecreasing) sum is ``target``."""
    if kept_at(hi).sum() <= target:
        return kept_at(hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if kept_at(mid).sum() < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * max(1.0, abs(hi)):
            break
    return kept_at(0.5 * (lo + hi))


# A density family maps the layer shapes to (kept_at, lo, hi): kept_at(t) gives each layer's real kept
# count (before the caps of the current masks), nondecreasing in the parameter t in [lo, hi].
Family = Callable[[list[tuple[int, ...]]], tuple[Callable[[float], np.ndarray], float, float]]


def _sizes(shapes: list[tuple[int, ...]]) -> np.ndarray:
    return np.array([math.prod(s) for s in shapes], dtype=np.float64)


def _uniform_family(shapes: list[tuple[int, ...]]):
    n = _sizes(shapes)
    return (lambda t: t * n), 0.0, 1.0


def _uniform_plus_family(shapes: list[tuple[int, ...]]):
    if len(shapes) < 2:
        raise PrunelabError("allocation 'uniform_plus' needs at least two prunable layers (first dense, last >= 20%)")
    n = _sizes(shapes)

    def kept_at(t: float) -> np.ndarray:
        d = np.full(len(n), t)
        d[0] = 1.0
        d[-1] = max(t, 0.2)
        return d * n

    return kept_at, 0.0, 1.0


def _erk_family(shapes: list[tuple[int, ...]]):
    n = _sizes(shapes)
    dims = np.array([sum(s) for s in shapes], dtype=np.float64)  # density ∝ sum(dims)/prod(dims)
    return (lambda eps: np.minimum(eps * dims, n)), 0.0, float((n / dims).max())


def _igq_family(shapes: list[tuple[int, ...]]):
    n = _sizes(shapes)
    # d_l = 1 / (1 + F n_l), parametrised by u = -log F so that the sum increases with u.
    return (lambda u: n / (1.0 + math.exp(-u) * n)), -100.0, 100.0


_FAMILIES: dict[str, Family] = {
    "uniform": _uniform_family,
    "uniform_plus": _uniform_plus_family,
    "erk": _erk_family,
    "igq": _igq_family,
}


def _real_counts(family: str, masks: Masks, sparsity: float) -> tuple[np.ndarray, np.ndarray, int]:
    shapes = [tuple(m.shape) for m in masks.values()]
    caps = np.array([int(torch.count_nonzero(m)) for m in masks.values()], dtype=np.int64)
    keep_total = target_kept(masks, sparsity)
    kept_at, lo, hi = _FAMILIES[family](shapes)
    capped = lambda t: np.minimum(kept_at(t), caps)
    floor = capped(lo).sum()
    if floor > keep_total + 1e-6:
        raise PrunelabError(
            f"allocation {family!r} cannot reach sparsity {sparsity!r} on these masks: it keeps at least "
            f"{int(math.ceil(floor))} of {masks.num_total()} weights (max sparsity "
            f"{1 - floor / masks.num_total():.6f})"
        )
    return _solve(capped, lo, hi, keep_total), caps, keep_total


def layer_densities(name: str, model_or_masks: nn.Module | Mapping[str, torch.Tensor], sparsity: float) -> dict[str, float]:
    """Real-valued per-layer densities (kept / layer size, before rounding) of a density allocation.

    ``name`` is one of ``uniform``, ``uniform_plus``, ``erk``, ``igq``; a model means fresh
    all-ones masks of its prunable weights.
    """
    if name not in _FAMILIES:
        raise PrunelabError(f"unknown density allocation {name!r}; valid: {', '.join(sorted(_FAMILIES))}")
    masks = Masks.ones(model_or_masks) if isinstance(model_or_masks, nn.Module) else as_masks(model_or_masks)
    real, _, _ = _real_counts(name, masks, check_sparsity(sparsity))
    return {k: float(r) / m.numel() for (k, m), r in zip(masks.items(), real)}


def _density_allocation(family: str) -> Callable[..., Masks]:
    def allocate(
        scores: Scores, masks: Mapping[str, torch.Tensor], sparsity: float, ctx: ScoreContext | None = None
    ) -> Masks:
        masks = as_masks(masks)
        sparsity = check_sparsity(sparsity)
        check_scores(scores, masks)
        real, caps, keep_total = _real_counts(family, masks, sparsity)
        return allocate_counts(scores, masks, round_counts(real, caps, keep_total))

    allocate.__name__ = f"{family}_allocation"
    return allocate


uniform_allocation = ALLOCATIONS.register("uniform")(_density_allocation("uniform"))
uniform_allocation.__doc__ = """Every layer at the same density (the common layer-wise baseline)."""

uniform_plus_allocation = ALLOCATIONS.register("uniform_plus")(_density_allocation("uniform_plus"))
uniform_plus_allocation.__doc__ = """Uniform+ (Gale, Elsen & Hooker, 2019, "The state of sparsity in deep
neural networks"; as used by Lee et al., ICLR 2021): the first prunable layer stays dense, the last
keeps at least 20% (is at most 80% sparse), the other layers share one density chosen to hit the
target. "First"/"last" follow the order of the masks (registration order of the modules)."""

erk_allocation = ALLOCATIONS.register("erk")(_density_allocation("erk"))
erk_allocation.__doc__ = """Erdős–Rényi-Kernel (Evci, Gale, Menick, Castro & Elsen, ICML 2020, RigL,
Sec. 3): density_l = eps * sum(dims_l) / prod(dims_l), i.e. (n_in + n_out)/(n_in n_out) for Linear and
(n_in + n_out + k_h + k_w)/(n_in n_out k_h k_w) for Conv2d, with eps scaled to hit the target; layers
that would exceed density 1 are dense and eps is re-solved for the rest (the RigL code's loop; here
one bisection on eps of sum_l min(n_l, eps * sum(dims_l)) gives the same fixed point)."""

igq_allocation = ALLOCATIONS.register("igq")(_density_allocation("igq"))
igq_allocation.__doc__ = """Ideal Gas Quotas (Vysogorets & Kempe, JMLR 2023, Sec. 6): density_l =
1 / (1 + F n_l) with n_l the layer's weight count and F > 0 found by bisection (on log F) so the
total hits the target; larger layers are pruned more."""


# --- explicit per-layer sparsities -----------------------------------------------------------------
class ExplicitAllocation:
    """Per-layer sparsities given by the user: ``ExplicitAllocation({"fc1.weight": 0.9, ...})``.

    Keys are mask names (``"fc1.weight"``) or module names (``"fc1"``); values are sparsities in
    [0, 1). Listed layers get their sparsity (``round`` of the real count, adjusted by at most one
    weight so the total is exact); unlisted layers share one uniform density chosen so the overall
    sparsity hits the target. When every layer is listed, the implied overall sparsity must match the
    requested one (within one weight per layer), else a PrunelabError gives the implied value.
    """

    def __init__(self, sparsities: Mapping[str, float]) -> None:
        if not isinstance(sparsities, Mapping) or not sparsities:
            raise PrunelabError(f"an explicit allocation must be a non-empty mapping layer -> sparsity, got {sparsities!r}")
        for k, v in sparsities.items():
            if not isinstance(k, str):
                raise PrunelabError(f"explicit allocation keys must be layer names, got {k!r}")
            if (
                isinstance(v, bool)
                or not isinstance(v, numbers.Real)
                or not math.isfinite(v)
                or not 0.0 <= float(v) < 1.0
            ):
                raise PrunelabError(
                    f"sparsity of layer {k!r} must be a number in [0, 1) (fraction of its weights removed), "
                    f"got {v!r}"
                )
        self.sparsities = {k: float(v) for k, v in sparsities.items()}

    def resolve(self, masks: Masks) -> dict[str, float]:
        """Mask name -> sparsity, accepting module names; unknown names are an error listing the layers."""
        out: dict[str, float] = {}
        given_as: dict[str, str] = {}
        unknown = []
        for key, s in self.sparsities.items():
            name = key if key in masks else f"{key}.weight"
            if name not in masks:
                unknown.append(key)
                continue
            if name in out:
                raise PrunelabError(
                    f"explicit allocation gives layer {name!r} twice (as {given_as[name]!r} and {key!r})"
                )
            out[name], given_as[name] = s, key
        if unknown:
            what = "layer" if len(unknown) == 1 else "layers"
            raise PrunelabError(
                f"explicit allocation names {what} {', '.join(map(repr, unknown))}, which "
                f"{'is' if len(unknown) == 1 else 'are'} not prunable; layers: {', '.join(masks)}"
            )
        return out

    def plan(self, masks: Masks, sparsity: float) -> tuple[np.ndarray, np.ndarray, int]:
        """(real kept count per layer, caps, total kept) for ``masks`` at ``sparsity``, or a PrunelabError.

        Needs no scores, so it checks an allocation before any scoring (see :func:`validate_allocation`).
        """
        fixed = self.resolve(masks)
        keep_total = target_kept(masks, sparsity)
        names = list(masks)
        n = np.array([masks[k].numel() for k in names], dtype=np.float64)
        caps = np.array([int(torch.count_nonzero(masks[k])) for k in names], dtype=np.int64)
        real = np.zeros(len(names))
        for i, k in enumerate(names):
            if k in fixed:
                real[i] = (1.0 - fixed[k]) * n[i]
                if real[i] > caps[i] + 0.5:
                    raise PrunelabError(
                        f"layer {k!r} is asked to keep {1 - fixed[k]:.6f} of its weights but already keeps only "
                        f"{caps[i] / n[i]:.6f}; pruned weights are never revived"
                    )
        free = np.array([k not in fixed for k in names])
        listed = int(round(real[~free].sum()))
        rest = keep_total - real[~free].sum()
        if not free.any():
            if abs(rest) > len(names):
                implied = 1.0 - real.sum() / n.sum()
                raise PrunelabError(
                    f"the explicit allocation lists every layer and implies overall sparsity {implied:.6f}, "
                    f"not {sparsity!r}; pass sparsity={implied:.6f}"
                )
        else:
            unlisted = ", ".join(k for k, f in zip(names, free) if f)
            room = float(caps[free].sum())
            if rest < -0.5:
                raise PrunelabError(
                    f"the explicit allocation keeps {listed} weights in the listed layers "
                    f"({', '.join(fixed)}), more than the {keep_total} that sparsity {sparsity!r} keeps "
                    f"overall even with the unlisted layers ({unlisted}) emptied: raise the listed "
                    "sparsities or lower the overall sparsity"
                )
            if rest > room + 0.5:
                raise PrunelabError(
                    f"the explicit allocation keeps {listed} weights in the listed layers ({', '.join(fixed)}); "
                    f"reaching sparsity "
                    f"{sparsity!r} ({keep_total} kept) would need the unlisted layers ({unlisted}) to keep "
                    f"{int(round(rest))} weights, but they hold only {int(room)}: lower the listed "
                    "sparsities or raise the overall sparsity"
                )
            n_free, caps_free = n[free], caps[free]
            real[free] = _solve(lambda t: np.minimum(t * n_free, caps_free), 0.0, 1.0, max(rest, 0.0))
        return real, caps, keep_total

    def __call__(
        self, scores: Scores, masks: Mapping[str, torch.Tensor], sparsity: float, ctx: ScoreContext | None = None
    ) -> Masks:
        masks = as_masks(masks)
        sparsity = check_sparsity(sparsity)
        check_scores(scores, masks)
        real, caps, keep_total = self.plan(masks, sparsity)
        return allocate_counts(scores, masks, round_counts(real, caps, keep_total))


def validate_allocation(
    model_or_masks: nn.Module | Mapping[str, torch.Tensor],
    allocation: str | Mapping[str, float] | Callable[..., Masks],
    sparsity: float | None = None,
    *,
    include: tuple[type[nn.Module], ...] | None = None,
    exclude: tuple[str, ...] = (),
) -> None:
    """Check ``allocation`` against a model (its fresh masks, ``include``/``exclude`` as in ``prune``) or
    masks, before any work: a PrunelabError naming the bad value, else None.

    A name must be registered in ``ALLOCATIONS`` (the error lists them); a ``{layer: sparsity}``
    mapping must name prunable layers (module or parameter names; the error lists the valid ones),
    each once, with sparsities in [0, 1); a function is accepted as is. With ``sparsity`` (the overall
    target) the mapping must also be reachable (unlisted layers able to make up the rest; every layer
    listed -> the implied sparsity must match), and a density allocation (``uniform``,
    ``uniform_plus``, ``erk``, ``igq``) must be able to reach it. An experiment calls this before
    dense training, so a bad allocation fails in a second, not after the training.
    """
    if isinstance(model_or_masks, nn.Module):
        masks = Masks.ones(model_or_masks, include, exclude)
        if not masks:
            raise PrunelabError(
                f"model {type(model_or_masks).__name__} has no prunable layer (include={include!r}, "
                f"exclude={exclude!r}); by default the weights of Linear and Conv1d/2d/3d layers are prunable"
            )
    else:
        masks = as_masks(model_or_masks)
    target = check_sparsity(sparsity) if sparsity is not None else None
    if isinstance(allocation, str):
        ALLOCATIONS.get(allocation)
        if target is not None and allocation.lower() in _FAMILIES:
            _real_counts(allocation.lower(), masks, target)
    elif isinstance(allocation, Mapping):
        explicit = ExplicitAllocation(allocation)
        if target is not None:
            explicit.plan(masks, target)
        else:
            explicit.resolve(masks)
    elif not callable(allocation):
        raise PrunelabError(
            f"allocation must be a name ({', '.join(ALLOCATIONS.names())}), a {{layer: sparsity}} mapping "
            f"or a function, got {allocation!r}"
        )
