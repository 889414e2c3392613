"""Pruning to a target effective sparsity: bisection against a full linear sweep over the pruned count."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunelab
from prunelab.analysis.effective import effective_masks
from prunelab.errors import PrunelabError
from prunelab.pruning.effective_target import prune_to_effective_sparsity, search_effective_sparsity


def small_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))
    model.input_shape = (12,)
    return model  # 120 + 80 + 32 = 232 prunable weights


def small_convnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3),
    )
    model.input_shape = (1, 4, 4)
    return model  # 36 + 144 + 48 = 228 prunable weights


def sweep(model: nn.Module, criterion: str, allocation: str, seed: int, start: float = 0.45) -> dict[int, tuple]:
    """pruned count k -> (masks, effective kept) for every k >= start * N: the slow, obviously correct
    reference (the targets tested are >= 0.5, and no answer lies at the sweep's lower end)."""
    total = prunelab.pruning.Masks.ones(model).num_total()
    out = {}
    for k in range(round(start * total), total):
        pruned = copy.deepcopy(model)
        masks = prunelab.prune(pruned, k / total, criterion, allocation, seed=seed)
        out[k] = (masks, effective_masks(pruned, masks).num_kept())
    return out


@pytest.mark.parametrize(
    "make, criterion, allocation",
    [(small_mlp, "random", "global"), (small_mlp, "magnitude", "global"), (small_convnet, "random", "uniform")],
)
def test_search_finds_the_smallest_pruning_that_meets_the_target(make, criterion, allocation):
    model = make()
    ref = sweep(model, criterion, allocation, seed=3)
    total = prunelab.pruning.Masks.ones(model).num_total()
    ks = sorted(ref)
    # nested masks (same seed/scores, higher sparsity prunes a superset) -> monotone effective sparsity
    for a, b in zip(ks, ks[1:]):
        assert all(not bool((ref[b][0][n] & ~ref[a][0][n]).any()) for n in ref[a][0])
        assert ref[b][1] <= ref[a][1]
    for target in (0.5, 0.9, 0.95):
        goal = total - round(target * total)
        smallest = min(k for k in ks if ref[k][1] <= goal)
        assert smallest > ks[0]
        result = search_effective_sparsity(model, target, criterion, allocation, seed=3)
        assert result.masks.num_kept() == total - smallest
        assert result.masks == ref[smallest][0]
        assert result.effective.num_kept() == ref[smallest][1] <= goal
        # the goal is round(target * N) ineffective weights, as prune removes round(sparsity * N)
        assert result.effective_sparsity >= target - 0.5 / total
        assert result.direct_sparsity <= target + 0.5 / total
        # the overshoot is less than the jump made by the last pruned weight
        if smallest > 0:
            assert goal - result.effective.num_kept() < ref[smallest - 1][1] - ref[smallest][1]
        assert len(result.evaluations) <= total.bit_length() + 2  # bisection, not a sweep


def test_random_pruning_gap_grows_with_sparsity():
    model = small_mlp()
    gaps = []
    for target in (0.5, 0.9, 0.97):
        r = search_effective_sparsity(model, target, "random", "uniform", seed=0)
        gaps.append(r.effective_sparsity - r.direct_sparsity)
    assert 0 <= gaps[0] < gaps[1] < gaps[2]


def test_prune_to_effective_sparsity_prunes_the_callers_model():
    model = small_mlp()
    original = copy.deepcopy(model)
    result = search_effective_sparsity(model, 0.9, "random", "global", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values()))
    masks = prune_to_effective_sparsity(model, 0.9, "random", "global", seed=1)
    assert masks == result.masks
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.equal(params[name].detach(), dict(original.named_parameters())[name].detach() * mask)


def test_effective_mode_returns_closed_masks_at_the_target():
    model = small_mlp()
    total = 232
    ref = sweep(model, "random", "global", seed=2)
    for target in (0.6, 0.85, 0.93):
        m = copy.deepcopy(model)
        eff = prune_to_effective_sparsity(m, target, "random", "global", seed=2, effective=True)
        # direct sparsity == effective sparsity: the masks contain no disconnected weight
        assert effective_masks(m, eff) == eff
        goal = total - round(target * total)
        smallest = min(k for k in ref if ref[k][1] <= goal)
        assert smallest > min(ref)
        assert eff.num_kept() == ref[smallest][1]
        assert eff.sparsity() >= target - 0.5 / total
        assert goal - eff.num_kept() < ref[smallest - 1][1] - ref[smallest][1]  # within the last jump
        # the disconnected weights are zeroed in the model too; the budget was re-spent: the direct
        # pruning behind these masks removed fewer than round(target * N) weights
        for name, w in m.named_parameters():
            if name in eff:
                assert not bool(w[~eff[name]].any())
        assert smallest < round(target * total)
    # at 0.85 the sweep has a pruning with exactly the target count: met to the weight
    goal = total - round(0.85 * total)
    assert any(v[1] == goal for v in ref.values())
    assert prune_to_effective_sparsity(copy.deepcopy(model), 0.85, "random", "global", seed=2, effective=True).num_kept() == goal


def test_iterative_criterion_still_meets_the_target():
    model = small_mlp()
    r = search_effective_sparsity(model, 0.9, "synflow", "global", options={"iterations": 5})
    assert r.effective_sparsity >= 0.9 - 0.5 / 232
    assert r.direct_sparsity < 0.9


def test_starting_masks_stay_pruned():
    model = small_mlp()
    start = prunelab.prune(copy.deepcopy(model), 0.5, "random", "global", seed=5)
    r = search_effective_sparsity(model, 0.9, "magnitude", "global", masks=start)
    assert all(not bool((r.masks[n] & ~start[n]).any()) for n in start)
    assert r.effective_sparsity >= 0.9 - 0.5 / 232


@pytest.mark.parametrize(
    "target, kwargs, match",
    [
        (1.0, {}, r"\[0, 1\)"),
        (-0.1, {}, r"\[0, 1\)"),
        ("0.5", {}, r"\[0, 1\)"),
        (True, {}, r"\[0, 1\)"),
        (0.5, {"sparsity_kind": "effective"}, "unknown prune option"),
        (0.5, {"effective": "yes"}, "True or False"),
    ],
)
def test_bad_input_raises_prunelab_error(target, kwargs, match):
    with pytest.raises(PrunelabError, match=match):
        prune_to_effective_sparsity(small_mlp(), target, "random", **kwargs)
