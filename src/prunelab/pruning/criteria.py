"""Pruning criteria: one score per prunable weight, higher = keep.

Each criterion is ``fn(model, masks, ctx) -> dict[name, Tensor]`` registered in
:data:`prunelab.pruning.context.CRITERIA`. It scores the *currently masked* network (weights times
masks) without touching the caller's parameters: gradient-based criteria run the model through
``torch.func.functional_call`` with masked copies of the weights, so ``model`` keeps its weights and
gets no ``.grad``.

Choices the papers leave open, made once for all criteria here:

* Mode: the model runs in **eval mode** (BatchNorm uses running statistics, Dropout is off), as in the
  pruning loop of Tanaka et al. (2020) whose code is the common reference for SNIP/GraSP/SynFlow.
  ``ctx.options["train_mode"] = True`` uses batch statistics instead; BatchNorm buffers are then
  restored afterwards, so scoring never changes the model.
* Several batches: gradients are those of the *sum* of the per-batch losses (each a batch mean).
* Models: every criterion runs the model through ``ctx.adapter_for(model)``
  (:mod:`prunelab.models.adapters`), so ``transformers`` models (dict batches of token ids,
  ``ModelOutput`` outputs, next-token loss for causal LMs) are scored like the zoo's; for plain models
  the adapter computes exactly ``ctx.loss_fn(model(x), y)``.
* Train mode (``train_mode=True``) runs dropout: its masks are drawn from ``ctx.seed`` inside a forked
  RNG, so scores are reproducible and the global RNG state is left as it was.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call

from prunelab.errors import PrunelabError
from prunelab.models.adapters import UnsupportedAdapter, differentiable_twice
from prunelab.pruning.context import CRITERIA, CriterionOptions, GradientOptions, ScoreContext
from prunelab.utils import eval_mode

Scores = dict[str, torch.Tensor]


# --- helpers shared by the criteria ------------------------------------------------------------
def masked_weights(
    model: nn.Module, masks: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """name -> detached copy of ``weight * mask`` (optionally cast to ``dtype``)."""
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        if name not in params:
            raise PrunelabError(f"mask {name!r} names no parameter of the model")
        p = params[name].detach()
        w = p.to(dtype) if dtype is not None else p
        out[name] = w.masked_fill(~mask.to(w.device), 0.0)  # exact 0, even where w is inf/NaN
    return out


@contextmanager
def scoring_mode(model: nn.Module, ctx: ScoreContext) -> Iterator[None]:
    """Eval mode by default (``ctx.options["train_mode"]`` for train mode); restores mode and buffers.

    In train mode, dropout draws from a generator seeded with ``ctx.seed`` inside a forked RNG (the
    caller's global RNG state is restored afterwards)."""
    train = bool(ctx.options.get("train_mode", False))
    with eval_mode(model, training=train, restore_buffers=train), (_seeded(model, ctx.seed) if train else nullcontext()):
        yield


@contextmanager
def _seeded(model: nn.Module, seed: int) -> Iterator[None]:
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(int(seed))
        for i in cuda:
            torch.cuda.default_generators[i].manual_seed(int(seed))
        yield


def _grad_of_loss_sum(
    model: nn.Module,
    weights: dict[str, torch.Tensor],
    ctx: ScoreContext,
    who: str,
    scale: float = 1.0,
) -> list[torch.Tensor]:
    """Gradient w.r.t. ``weights`` (leaves requiring grad) of sum_b loss(logits_b / scale, targets_b)."""
    batches = ctx.require_data(who)
    adapter = ctx.adapter_for(model)
    leaves = list(weights.values())
    total = [torch.zeros_like(w) for w in leaves]
    for batch in batches:
        loss = adapter.loss(model, batch, weights, temperature=scale)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        total = [t + g if g is not None else t for t, g in zip(total, grads)]
    return total


# --- data-free criteria ------------------------------------------------------------------------
@CRITERIA.register("random", options=CriterionOptions)
def random_scores(model: nn.Module, masks: Mapping[str, torch.Tensor], ctx: ScoreContext) -> Scores:
    """Uniform random scores from a CPU generator seeded with ``ctx.seed`` (same masks on any device).

    Random pruning as the baseline of Liu et al. (2022, "The unreasonable effectiveness of random
    pruning"); with ``allocation="global"`` it prunes each layer at the same expected rate.
    """
    gen = ctx.generator()
    return {
        name: torch.rand(mask.shape, generator=gen, dtype=torch.float32).to(mask.device)
        for name, mask in masks.items()
    }


@CRITERIA.register("magnitude", options=CriterionOptions)
def magnitude(model: nn.Module, masks: Mapping[str, torch.Tensor], ctx: ScoreContext) -> Scores:
    """|w| (Han, Pool, Tran & Dally, NeurIPS 2015, "Learning both weights and connections")."""
    return {name: w.abs_() for name, w in masked_weights(model, masks).items()}


@CRITERIA.register("lamp", options=CriterionOptions)
def lamp(model: nn.Module, masks: Mapping[str, torch.Tensor], ctx: ScoreContext) -> Scores:
    """LAMP (Lee, Park, Mo, Ahn & Shin, ICLR 2021, Eq. 2): score(u) = w_u^2 / sum_{v >= u} w_v^2.

    Within a layer, weights are indexed by ascending |w|; the sum runs over u and every larger weight.
    The largest weight of each layer scores 1, so global allocation (the paper's use) never empties a
    layer. Choices: the suffix sums are accumulated from the largest weight down in float64 (no
    cancellation); ties in |w| are ordered by index (the earlier weight counts as larger); a layer whose
    weights are all zero scores 0.
    """
    scores: Scores = {}
    for name, w in masked_weights(model, masks, dtype=torch.float64).items():
        sq = w.reshape(-1).square()
        ordered, idx = torch.sort(sq, descending=True, stable=True)
        suffix = torch.cumsum(ordered, 0)  # at position i: sum of the i+1 largest = sum_{v >= u}
        ratio = torch.where(suffix > 0, ordered / suffix.clamp_min(torch.finfo(suffix.dtype).tiny), 0.0)
        out = torch.empty_like(ratio)
        out[idx] = ratio
        scores[name] = out.reshape(w.shape)
    return scores


@CRITERIA.register("synflow", options=CriterionOptions)
def synflow(model: nn.Module, masks: Mapping[str, torch.Tensor], ctx: ScoreContext) -> Scores:
    """SynFlow (Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020, Algorithm 1): |dR/dw ⊙ w|.

    Data-free: every floating parameter and buffer is replaced by its absolute value (masked weights
    by 0), the model runs in float64 (to avoid overflow in deep nets) on an all-ones input of shape
    ``(1, *ctx.input_shape)``, and R is the sum of the outputs (the logits, for models returning a
    ``ModelOutput``/dict/tuple).

    Token models (``transformers`` language models, ``ctx.input_shape = (T,)``): token ids have no
    all-ones input, so the all-ones input is an all-ones *embedding* input, ``inputs_embeds`` of
    shape (1, T, hidden) (and the same for the decoder of an encoder-decoder model); position and
    type embeddings are still added by the model. This is our extension: the paper defines SynFlow
    for networks of linear layers and homogeneous activations, where R is the l1 path norm
    (Tanaka et al. 2020, Sec. 6); through LayerNorm/RMSNorm, softmax attention and gated MLPs that
    identity does not hold, and the score is simply |w ⊙ dR/dw| for this R. ``T`` is the model's
    ``input_shape``, else the first data batch's sequence length, else the config's context length. As in the authors' code
    (``linearize`` then ``model.eval()``), BatchNorm runs in eval mode on the absolute values of its
    running statistics. The paper applies this iteratively (100 rounds, exponential density
    schedule); ``prunelab.prune`` runs that loop because this function is flagged ``iterative``
    (``ctx.options["iterations"]`` or ``prune(iterations=...)``, default 100).
    """
    adapter = ctx.adapter_for(model)
    if isinstance(adapter, UnsupportedAdapter):  # say that the model cannot be run, before its shape
        adapter.require()
    if ctx.input_shape is None:
        raise PrunelabError(
            "criterion 'synflow' needs the input shape: set model.input_shape, pass data, or "
            "ScoreContext(input_shape=...)"
        )
    weights = {k: w.abs_().requires_grad_() for k, w in masked_weights(model, masks, torch.float64).items()}
    state: dict[str, torch.Tensor] = {}
    for k, t in [*model.named_parameters(), *model.named_buffers()]:
        if k not in weights:
            state[k] = t.detach().abs().double() if t.is_floating_point() else t
    state.update(weights)
    device = next(iter(weights.values())).device
    args, kwargs = adapter.synflow_input(model, ctx.input_shape, dtype=torch.float64, device=device)
    with eval_mode(model):
        out = adapter.logits(functional_call(model, state, args, kwargs or None))
        grads = torch.autograd.grad(out.sum(), list(weights.values()), allow_unused=True)
    return {
        k: (g * w).detach().abs_() if g is not None else torch.zeros_like(w.detach())
        for (k, w), g in zip(weights.items(), grads)
    }


synflow.iterative = True  # type: ignore[attr-defined]
synflow.default_iterations = 100  # type: ignore[attr-defined]


# --- data-dependent criteria (flagged ``needs_data``: prune refuses to run them without data) ----
@CRITERIA.register("snip", options=GradientOptions)
def snip(model: nn.Module, masks: Mapping[str, torch.Tensor], ctx: ScoreContext) -> Scores:
    """SNIP (Lee, Ajanthan & Torr, ICLR 2019, Eq. 6): connection sensitivity |g ⊙ w|.

    g = dL/dw of the masked network on ``ctx.batches`` (equal to dL/dc at c = 1 in the paper's
    notation). The paper's normalisation by sum_k |g_k w_k| is a positive constant and is dropped,
    since it changes no ranking.
    """
    weights = {k: w.requires_grad_() for k, w in masked_weights(model, masks).items()}
    with scoring_mode(model, ctx):
        grads = _grad_of_loss_sum(model, weights, ctx, "snip")
    return {k: (g * w.detach()).abs_() for (k, w), g in zip(weights.items(), grads)}


snip.needs_data = True  # type: ignore[attr-defined]


class GraspOptions(GradientOptions):
    """GraSP (Wang, Zhang & Grosse 2020)."""

    temperature: float = Field(200.0, gt=0, description="logits are divided by this before the loss (authors: 200)")


@CRITERIA.register("grasp", options=GraspOptions)
def grasp(model: nn.Module, masks: Mapping[str, torch.Tensor], ctx: ScoreContext) -> Scores:
    """GraSP (Wang, Zhang & Grosse, ICLR 2020, Eq. 8): returns w ⊙ Hg (higher = keep).

    The paper's score is S(-w) = -w ⊙ Hg, and the authors' code (alecwangcq/GraSP,
    ``pruner/GraSP.py``) computes exactly ``-weight * Hg`` and removes the weights with the *largest*
    S (those whose removal reduces gradient flow least, or increases it). As a "higher = keep" score
    this is -S = w ⊙ Hg. g is the gradient of the loss over ``ctx.batches``, H the Hessian of that
    loss, both restricted to the prunable weights (as in the authors' code); Hg is obtained by
    differentiating g_detached · ∇L. The logits are divided by a temperature
    ``ctx.options["temperature"]`` (default 200, the authors' value) before the loss. The authors'
    re-initialisation of Linear layers and per-class batch sampling are left to the caller.
    Attention runs on torch's math SDPA kernel here (the fused kernels have no double backward).
    """
    temperature = float(ctx.options.get("temperature", 200.0))
    if not temperature > 0:
        raise PrunelabError(f"grasp option 'temperature' must be > 0, got {temperature!r}")
    weights = {k: w.requires_grad_() for k, w in masked_weights(model, masks).items()}
    leaves = list(weights.values())
    adapter = ctx.adapter_for(model)
    with scoring_mode(model, ctx), differentiable_twice():
        g = [t.detach() for t in _grad_of_loss_sum(model, weights, ctx, "grasp", temperature)]
        hg = [torch.zeros_like(w) for w in leaves]
        for batch in ctx.require_data("grasp"):
            loss = adapter.loss(model, batch, weights, temperature=temperature)
            grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            z = sum((gi * gr).sum() for gi, gr in zip(g, grads) if gr is not None)
            if isinstance(z, torch.Tensor) and z.requires_grad:
                try:
                    parts = torch.autograd.grad(z, leaves, allow_unused=True)
                except RuntimeError as exc:  # an op of the model has no second derivative in torch
                    if "derivative for" not in str(exc):
                        raise
                    raise PrunelabError(
                        f"criterion 'grasp' needs second derivatives (a Hessian-gradient product), which torch "
                        f"does not implement for an op of {type(model).__name__}: {str(exc).splitlines()[0]}; "
                        "use snip or synflow for this model"
                    ) from None
                hg = [h + p if p is not None else h for h, p in zip(hg, parts)]
    return {k: (w.detach() * h) for (k, w), h in zip(weights.items(), hg)}


grasp.needs_data = True  # type: ignore[attr-defined]
