"""What a criterion, allocation or weight update may use, and the registries they live in.

A **criterion** is ``fn(model, masks, ctx) -> dict[name, Tensor]``: one float score per prunable weight
(same shape as the weight; higher means keep), scoring the *currently masked* network. It must not
change the model's weights (it may run forward/backward passes).

An **allocation** is ``fn(scores, masks, sparsity, ctx) -> Masks``: given the scores and the current
masks, decide which weights to keep so that the overall sparsity (fraction of prunable weights removed)
is ``sparsity`` to within one weight. Already-pruned weights stay pruned.

An **update** is ``fn(model, old_masks, new_masks, ctx) -> None``: after a mask is chosen, change the
remaining weights in place (OBS, CBS-U). A criterion may name its default update through the attribute
``fn.default_update = "name"``; ``prunelab.prune(update=None)`` turns updates off.

A criterion or update that reads ``ctx.batches`` says so with ``fn.needs_data = True`` (see
:func:`needs_data`): ``prunelab.prune`` then refuses to run it without data, before any work is done.
Data itself is checked once, up front, by :func:`prepare_batches`: for plain models
:func:`as_batches` (structure, x/y lengths, empty batches, non-finite inputs) and :func:`check_data`
(one probe forward pass: input shape, label dtype and range); for other models the model adapter's
``batches`` and ``check`` (:mod:`prunelab.models.adapters`).

A criterion runs the model only through its adapter, ``ctx.adapter_for(model)``
(:class:`prunelab.models.adapters.ModelAdapter`): ``adapter.loss(model, batch, params)`` is the loss
of one batch with ``params`` substituted, ``adapter.forward`` its logits. For plain models the adapter
is a :class:`~prunelab.models.adapters.TensorAdapter` around ``ctx.loss_fn`` and does exactly what
``ctx.loss_fn(functional_call(model, params, (x,)), y)`` did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from prunelab.errors import PrunelabError, validation_error
from prunelab.models.adapters import ModelAdapter, TensorAdapter, adapter_for, logits_of
from prunelab.registry import Registry
from prunelab.utils import eval_mode

Batch = tuple[torch.Tensor, torch.Tensor]

class CriterionOptions(BaseModel):
    """Options every criterion takes (a criterion's own options model extends this)."""

    model_config = ConfigDict(extra="forbid")
    iterations: int | None = Field(None, gt=0, description="score/prune rounds on an exponential density "
                                      "schedule (default: the criterion's own, 1 for one-shot criteria)")


class GradientOptions(CriterionOptions):
    """Options of criteria that run the model on data."""

    train_mode: bool = Field(False, description="score in train mode (batch statistics); buffers are restored")


#: Keys ``prunelab.prune`` sets in ``ctx.options`` itself (never user options).
INTERNAL_OPTIONS = ("sparsity", "allocation")


def parse_options(methods: Sequence[tuple[str, str, Any]], options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate the ``options`` of one pruning call against the options models of ``methods``.

    ``methods`` are (kind, name, function) triples (criterion, allocation, update: they share
    ``ctx.options``); each registered function carries ``options_model``. A key no model knows is a
    one-line :class:`PrunelabError` naming the valid keys; each model validates its own keys. The
    result holds the given keys, validated (each method applies its own defaults to the others).
    """
    options = dict(options or {})
    models = [(f"{kind} {name!r}", getattr(fn, "options_model", None)) for kind, name, fn in methods if fn is not None]
    known_anyway = any(m is None for _, m in models)  # a custom function without an options model: unchecked
    valid: list[str] = []
    for _, m in models:
        for f in (m.model_fields if m is not None else {}):
            if f not in valid:
                valid.append(f)
    unknown = [k for k in options if k not in valid and k not in INTERNAL_OPTIONS]
    if unknown and not known_anyway:
        names = " / ".join(what for what, _ in models)
        raise PrunelabError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for {names}; "
            f"valid: {', '.join(valid) or 'none'}"
        )
    out: dict[str, Any] = {k: v for k, v in options.items() if k in unknown}
    for what, m in models:
        if m is None:
            continue
        mine = {k: v for k, v in options.items() if k in m.model_fields}
        try:
            validated = m.model_validate(mine)
        except ValidationError as err:
            raise validation_error(err, f"options of {what}", m) from None
        out.update({k: getattr(validated, k) for k in mine})  # given keys only: methods default the rest
    return out


CRITERIA: Registry[Callable[..., dict[str, torch.Tensor]]] = Registry("criterion")
ALLOCATIONS: Registry[Callable[..., Any]] = Registry("allocation")
UPDATES: Registry[Callable[..., None]] = Registry("update")


@dataclass
class ScoreContext:
    """Everything a criterion may need besides the model and masks.

    ``batches`` is a list of (inputs, targets) pairs already on ``device`` (None for data-free
    criteria): tensors for plain models, dicts of tensors as inputs for ``transformers`` models;
    ``loss_fn`` maps (outputs, targets) to a scalar (plain models); ``adapter`` says how to call the
    model and what its loss is (None: :func:`prunelab.models.adapters.adapter_for` the model, with
    ``loss_fn``; see :meth:`adapter_for`); ``input_shape`` is the per-sample input shape ((T,) for
    token models); ``options`` carries criterion-specific settings (e.g. ``{"iterations": 100}``
    for SynFlow, Fisher damping for WoodFisher), each criterion documenting the keys it reads.
    """

    batches: list[Batch] | None = None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    input_shape: tuple[int, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    adapter: ModelAdapter | None = None

    def adapter_for(self, model: nn.Module) -> ModelAdapter:
        """The adapter criteria run ``model`` through: ``self.adapter``, else the built-in one for
        ``model`` (:class:`~prunelab.models.adapters.TensorAdapter` around ``loss_fn`` for plain models)."""
        return self.adapter if self.adapter is not None else adapter_for(model, self.loss_fn)

    def require_data(self, who: str) -> list[Batch]:
        """The batches, or a clear error saying that criterion ``who`` needs data (none, or 0 samples)."""
        if not self.batches:
            raise PrunelabError(no_data_message(who))
        size = self.adapter.batch_size if self.adapter is not None else (lambda b: int(b[0].shape[0]))
        if all(size(b) == 0 for b in self.batches):
            raise PrunelabError(zero_samples_message(who))
        return self.batches

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from ``seed`` (plus ``offset`` for independent streams)."""
        return torch.Generator().manual_seed(int(self.seed) + int(offset))


def needs_data(fn: Any) -> bool:
    """Whether criterion/update ``fn`` reads ``ctx.batches`` (flagged ``fn.needs_data = True``)."""
    return bool(getattr(fn, "needs_data", False))


def no_data_message(who: str, kind: str = "criterion") -> str:
    return (
        f"{kind} {who!r} is data-dependent: pass data=(inputs, targets) or an iterable of "
        "such batches to prunelab.prune"
    )


def zero_samples_message(who: str | None) -> str:
    whose = f"data for criterion {who!r}" if who else "data"
    return f"{whose} has 0 samples: give at least one (inputs, targets) batch with at least one sample"


def as_batches(data: Any, device: torch.device | str = "cpu", *, who: str | None = None) -> list[Batch] | None:
    """Normalise ``data`` (None, an (x, y) pair of tensors, or an iterable of pairs) to a batch list.

    Checks what needs no model: every item is a pair of tensors with a batch dimension, inputs and
    targets of a batch have the same length, no batch is empty (a mean over 0 samples is NaN), all
    batches have the same per-sample input shape, and the inputs are finite. ``who`` (the criterion)
    is named in the error for data with 0 samples.
    """
    if data is None:
        return None
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], torch.Tensor)
        and isinstance(data[1], torch.Tensor)
    ):
        pairs: Iterable = [tuple(data)]
    else:
        pairs = data
    out: list[Batch] = []
    try:
        for item in pairs:
            x, y = item
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise TypeError
            out.append((x.to(device), y.to(device)))
    except (TypeError, ValueError):
        raise PrunelabError(
            f"data must be an (inputs, targets) pair of tensors or an iterable of such pairs, "
            f"got {type(data).__name__}"
        ) from None
    if not out:
        raise PrunelabError(zero_samples_message(who))
    for i, (x, y) in enumerate(out):
        if x.dim() == 0 or y.dim() == 0:
            which = "inputs" if x.dim() == 0 else "targets"
            raise PrunelabError(
                f"data: the {which} of {_where(i, out)} are a 0-d tensor; inputs must be (N, *input_shape) "
                "and targets (N, ...), the batch dimension first"
            )
    if all(int(x.shape[0]) == 0 for x, _ in out):
        raise PrunelabError(zero_samples_message(who))
    first = None
    for i, (x, y) in enumerate(out):
        where = _where(i, out)
        if x.shape[0] != y.shape[0]:
            raise PrunelabError(
                f"data: {where} has {x.shape[0]} inputs but {y.shape[0]} targets "
                f"(shapes {tuple(x.shape)} and {tuple(y.shape)}); they must have the same length"
            )
        if x.shape[0] == 0:
            raise PrunelabError(
                f"data: {where} of {len(out)} has 0 samples; every batch needs at least one "
                "(a mean loss over 0 samples is NaN)"
            )
        if first is None:
            first = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != first:
            raise PrunelabError(
                f"data: {where} has inputs of shape {tuple(x.shape)} but batch 0 has per-sample shape "
                f"{first}; every batch must have the same per-sample shape"
            )
        if (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x).all()):
            raise PrunelabError(f"data: the inputs of {where} contain NaN or inf")
    return out


def _where(i: int, batches: list[Batch]) -> str:
    return f"batch {i}" if len(batches) > 1 else "the batch"


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_data(
    model: nn.Module,
    batches: list[Batch],
    *,
    input_shape: Sequence[int] | None = None,
    class_labels: bool = True,
) -> list[Batch]:
    """Check ``batches`` (from :func:`as_batches`) against ``model``; return them, labels as int64.

    One probe forward pass on (at most) two samples of the first batch, in eval mode without
    gradients (the model is not changed), turns a shape or dtype mismatch into a PrunelabError that
    gives the data's shape and the one the model takes (``input_shape``, e.g. ``model.input_shape``),
    instead of a RuntimeError from inside torch. With ``class_labels`` (the default cross-entropy
    loss) the targets must be integer class indices (not float, not bool) of shape (N,) — (N, d1, ...)
    for outputs (N, C, d1, ...) — in 0..C-1, C the model's output width; integer labels of another
    dtype are converted to int64 (cross-entropy takes only int64). With a custom loss the targets are
    the loss's business and are not checked.
    """
    x0 = batches[0][0][:2]
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x0)
    except PrunelabError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise PrunelabError(_forward_failure(model, batches[0][0], input_shape, exc)) from None
    if not class_labels:
        return batches
    if not isinstance(out, torch.Tensor):  # a dict / ModelOutput / tuple: the loss sees its logits
        try:
            out = logits_of(out)
        except PrunelabError:
            pass
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PrunelabError(
            f"data: the model's output for {x0.shape[0]} inputs has shape {shape}; the default "
            "cross-entropy loss needs logits of shape (N, C): pass loss_fn= for other outputs"
        )
    classes = int(out.shape[1])
    fixed: list[Batch] = []
    lo, hi = math.inf, -math.inf
    for i, (x, y) in enumerate(batches):
        where = _where(i, batches)
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise PrunelabError(
                f"data: the targets of {where} have dtype {y.dtype}; the default cross-entropy loss needs "
                f"integer class labels (int64) in 0..{classes - 1}: convert them (y.long()) or pass loss_fn="
            )
        want = (x.shape[0], *out.shape[2:])
        if tuple(y.shape) != tuple(want):
            raise PrunelabError(
                f"data: the targets of {where} have shape {tuple(y.shape)}, but for model outputs of shape "
                f"(N, {classes}{''.join(f', {d}' for d in out.shape[2:])}) cross-entropy needs class "
                f"indices of shape {tuple(want)}"
            )
        if y.dtype != torch.int64:
            y = y.long()
        b_lo, b_hi = torch.aminmax(y)
        lo, hi = min(lo, int(b_lo)), max(hi, int(b_hi))
        fixed.append((x, y))
    if lo < 0 or hi >= classes:
        raise PrunelabError(
            f"data: labels must be class indices in 0..{classes - 1} (the model has {classes} outputs), "
            f"got labels from {lo} to {hi}"
        )
    return fixed


def prepare_batches(
    adapter: ModelAdapter,
    model: nn.Module,
    data: Any,
    device: torch.device | str = "cpu",
    *,
    who: str | None = None,
    input_shape: Sequence[int] | None = None,
) -> list[Any] | None:
    """``data`` checked and normalised once for ``model``: :func:`as_batches` then :func:`check_data`
    for a plain :class:`~prunelab.models.adapters.TensorAdapter` (labels checked with the default
    loss only), the adapter's ``batches`` then ``check`` for any other adapter."""
    if type(adapter) is TensorAdapter:
        batches = as_batches(data, device, who=who)
        if batches is None:
            return None
        return check_data(model, batches, input_shape=input_shape, class_labels=not adapter.custom_loss)
    batches = adapter.batches(data, device, who=who)
    if batches is None:
        return None
    return adapter.check(model, batches)


def _forward_failure(model: nn.Module, x: torch.Tensor, input_shape: Sequence[int] | None, exc: BaseException) -> str:
    per_sample = tuple(x.shape[1:])
    if input_shape is not None and per_sample != tuple(input_shape):
        return (
            f"data: inputs have shape {tuple(x.shape)} but the model takes {tuple(input_shape)} per sample: "
            f"give inputs of shape (N, {', '.join(map(str, input_shape))})"
        )
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weight is not None and x.dtype != weight.dtype:
        return (
            f"data: inputs have dtype {x.dtype} but the model's weights are {weight.dtype}: convert the "
            f"inputs (torch: {_first_line(exc)})"
        )
    return f"data: the model's forward pass fails on inputs of shape {tuple(x.shape)}: {_first_line(exc)}"
