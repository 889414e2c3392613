"""prunelab.prune: end to end, schedules, updates, determinism and errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import prunelab
from prunelab.errors import PrunelabError
from prunelab.pruning import UPDATES, Masks, ScoreContext
from prunelab.pruning.direct import schedule


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))


def data(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_prune_returns_masks_and_zeroes_the_model():
    model = mlp()
    masks = prunelab.prune(model, 0.75)
    assert isinstance(masks, Masks) and list(masks) == ["1.weight", "3.weight", "5.weight"]
    assert masks.num_total() - masks.num_kept() == round(0.75 * 224)
    params = dict(model.named_parameters())
    for n, m in masks.items():
        assert bool((params[n][~m] == 0).all()) and bool((params[n][m] != 0).all())
    assert bool((params["1.bias"] != 0).all())  # biases are never pruned


@pytest.mark.parametrize("criterion", ["random", "magnitude", "lamp", "snip", "grasp", "synflow"])
def test_every_criterion_runs_and_is_deterministic(criterion):
    x, y = data()
    a = prunelab.prune(mlp(), 0.8, criterion, data=(x, y), seed=3, iterations=3 if criterion == "synflow" else None)
    b = prunelab.prune(mlp(), 0.8, criterion, data=[(x[:8], y[:8]), (x[8:], y[8:])], seed=3,
                       iterations=3 if criterion == "synflow" else None)
    assert a.num_kept() == 224 - round(0.8 * 224)
    if criterion in ("random", "magnitude", "lamp", "synflow"):
        assert a == b
    c = prunelab.prune(mlp(), 0.8, criterion, data=(x, y), seed=4, iterations=2)
    if criterion == "random":
        assert a != c


def test_iterations_follow_the_exponential_schedule_and_pass_the_round_sparsity():
    seen: list[float] = []
    seen_allocations: list[str] = []

    def recording_magnitude(model, masks, ctx: ScoreContext):
        seen.append(ctx.options["sparsity"])
        seen_allocations.append(ctx.options["allocation"])
        assert masks.sparsity() == pytest.approx(0.0 if not seen[:-1] else round(seen[-2] * 224) / 224)
        return {n: p.detach().abs() for n, p in model.named_parameters() if n in masks}

    prunelab.prune(mlp(), 0.9, recording_magnitude, iterations=4)
    assert seen_allocations == ["global"] * 4
    assert seen == pytest.approx([1 - 0.1 ** (k / 4) for k in range(1, 5)])
    assert schedule(0.5, 0.9, 2) == pytest.approx([1 - 0.5 * 0.2**0.5, 0.9])


def test_iterative_criteria_default_to_their_own_count():
    calls = []

    def flow(model, masks, ctx):
        calls.append(1)
        return {n: torch.ones_like(m, dtype=torch.float32) for n, m in masks.items()}

    flow.iterative, flow.default_iterations = True, 7
    prunelab.prune(mlp(), 0.5, flow)
    assert len(calls) == 7
    prunelab.prune(mlp(), 0.5, flow, options={"iterations": 2})
    prunelab.prune(mlp(), 0.5, flow, iterations=1)
    assert len(calls) == 7 + 2 + 1


def test_continuing_from_masks_nests():
    model = mlp()
    first = prunelab.prune(model, 0.5)
    second = prunelab.prune(model, 0.8, masks=first)
    assert (second & first) == second and second.num_kept() == 224 - round(0.8 * 224)
    with pytest.raises(PrunelabError, match="never revived"):
        prunelab.prune(model, 0.3, masks=second)


def test_repeating_a_sparsity_that_rounded_up_is_not_an_error():
    model = nn.Sequential(nn.Linear(7, 1, bias=False))  # round(0.5 * 7) = 4 pruned: density 3/7 < 0.5
    first = prunelab.prune(model, 0.5)
    assert first.num_kept() == 3
    assert prunelab.prune(model, 0.5, masks=first, iterations=3) == first


def test_exclude_keeps_layers_dense():
    model = mlp()
    masks = prunelab.prune(model, 0.5, exclude=("5",))
    assert list(masks) == ["1.weight", "3.weight"]
    assert bool((model[5].weight != 0).all())


def test_update_hooks_auto_none_and_callable():
    calls = []

    def record(model, old, new, ctx):
        calls.append((old.num_kept(), new.num_kept()))

    name = "test_api_record_update"
    if name not in UPDATES:
        UPDATES.register(name)(record)

    def crit(model, masks, ctx):
        return {n: p.detach().abs() for n, p in model.named_parameters() if n in masks}

    crit.default_update = name
    prunelab.prune(mlp(), 0.5, crit)  # update="auto" uses the criterion's default
    prunelab.prune(mlp(), 0.5, crit, update=None)
    prunelab.prune(mlp(), 0.5, "magnitude", update=record)
    assert calls == [(224, 112), (224, 112)]
    with pytest.raises(PrunelabError, match="unknown update 'nope'"):
        prunelab.prune(mlp(), 0.5, update="nope")


def test_custom_loss_fn_reaches_the_criterion():
    x, y = data()
    used = []

    def loss(out, target):
        used.append(out.shape)
        return nn.functional.cross_entropy(out, target)

    prunelab.prune(mlp(), 0.5, "snip", data=(x, y), loss_fn=loss)
    assert used == [torch.Size([16, 3])]


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, "0.5", True, float("inf")])
def test_bad_sparsity(bad):
    with pytest.raises(PrunelabError, match=re.escape(repr(bad))):
        prunelab.prune(mlp(), bad)


def test_clear_errors():
    with pytest.raises(PrunelabError, match="unknown criterion 'magnitud'; valid: .*grasp, lamp, magnitude, random, snip, synflow"):
        prunelab.prune(mlp(), 0.5, "magnitud")
    with pytest.raises(PrunelabError, match="unknown allocation 'globall'; valid: erk, global, igq, .*uniform, uniform_plus"):
        prunelab.prune(mlp(), 0.5, allocation="globall")
    with pytest.raises(PrunelabError, match="'snip' is data-dependent"):
        prunelab.prune(mlp(), 0.5, "snip")
    with pytest.raises(PrunelabError, match="no prunable layer"):
        prunelab.prune(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), 0.5)
    with pytest.raises(PrunelabError, match="either masks= or include="):
        prunelab.prune(mlp(), 0.5, masks=Masks.ones(mlp()), exclude=("1",))
    with pytest.raises(PrunelabError, match="seed"):
        prunelab.prune(mlp(), 0.5, seed=-1)
    with pytest.raises(PrunelabError, match="iterations must be a positive integer, got 0"):
        prunelab.prune(mlp(), 0.5, iterations=0)
    with pytest.raises(PrunelabError, match="data must be"):
        prunelab.prune(mlp(), 0.5, "snip", data="not data")
    with pytest.raises(PrunelabError, match="'fc1.weight' names no parameter"):
        prunelab.prune(mlp(), 0.5, masks={"fc1.weight": torch.ones(10, 12, dtype=torch.bool)})
    with pytest.raises(PrunelabError, match="one-shot, but 100 rounds"):
        prunelab.prune(mlp(), 0.5, "synflow", allocation={"1": 0.5})
    if not torch.cuda.is_available():
        with pytest.raises(PrunelabError, match="no CUDA GPU"):
            prunelab.prune(mlp(), 0.5, device="cuda")


def test_lazy_top_level_prune_is_the_api_function():
    from prunelab.pruning.api import prune

    assert prunelab.prune is prune
