"""N:M allocation (prunelab.pruning.nm, registered on import of prunelab.pruning): the exact pattern,
top-n kept, the sparsity it accepts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunelab
from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.models import create
from prunelab.pruning.context import ALLOCATIONS, ScoreContext
from prunelab.pruning.nm import nm_allocation, nm_mask


def groups_along_input(mask: torch.Tensor, m: int) -> torch.Tensor:
    """Kept count of every group of m consecutive weights along the input dim (conv: per out, kh, kw)."""
    rows = mask if mask.dim() == 2 else mask.movedim(1, -1)
    return rows.reshape(-1, m).sum(1)


def test_registered_with_options():
    assert "nm" in ALLOCATIONS
    assert ALLOCATIONS.describe("nm") == "nm(n=2, m=4, indivisible='error', transposed=[])"


def test_hand_example_top_two_of_four():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3, 4.0, 3.0, 2.0, 1.0],
                           [-5.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])  # ties: the lower indices are kept
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 4] = False  # already pruned: stays pruned, although it scores highest
    out = nm_allocation({"w": scores}, {"w": mask}, 0.5)
    assert out["w"].tolist() == [[False, True, True, False, False, True, True, False],
                                 [False, True, True, False, True, True, False, False]]


def test_exact_pattern_on_linear_and_conv_and_top_scores_kept():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 12))
    masks = prunelab.prune(model, 0.5, "magnitude", "nm", options={})
    conv, lin = masks["0.weight"], masks["3.weight"]
    assert torch.all(groups_along_input(conv, 4) == 2) and torch.all(groups_along_input(lin, 4) == 2)
    assert masks.num_kept() == masks.num_total() // 2
    # in every group the two kept magnitudes are the largest (prune zeroed the model: read a fresh copy)
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 12))
    for mod, mask in ((fresh[0], conv), (fresh[3], lin)):
        a = mod.weight.detach().abs()
        rows_a = (a if a.dim() == 2 else a.movedim(1, -1)).reshape(-1, 4)
        rows_m = (mask if mask.dim() == 2 else mask.movedim(1, -1)).reshape(-1, 4)
        kept_min = torch.where(rows_m, rows_a, torch.inf).min(1).values
        pruned_max = torch.where(~rows_m, rows_a, -torch.inf).max(1).values
        assert torch.all(kept_min > pruned_max)
    assert torch.count_nonzero(model[0].weight) == conv.sum()  # prune zeroed the rest


def test_one_of_four_and_transposed_weights():
    torch.manual_seed(1)
    scores = {"a.weight": torch.rand(4, 8), "c.weight": torch.rand(8, 3)}  # c: Conv1D-style (in=8, out=3)
    masks = Masks({k: torch.ones_like(v, dtype=torch.bool) for k, v in scores.items()})
    ctx = ScoreContext(options={"n": 1, "m": 4, "transposed": ["c.*"]})
    out = nm_allocation(scores, masks, 0.75, ctx)
    assert torch.all(out["a.weight"].reshape(-1, 4).sum(1) == 1)
    assert torch.all(out["c.weight"].t().reshape(-1, 4).sum(1) == 1)
    assert nm_mask(scores["c.weight"], masks["c.weight"], 1, 4, transposed=True).equal(out["c.weight"])


def test_bad_sparsity_and_indivisible_layers():
    torch.manual_seed(0)
    model = create("lenet5", input_shape=(1, 28, 28))
    with pytest.raises(PrunelabError, match=r"allocation 'nm' \(2:4\) prunes exactly 1 - n/m = 0.5 .* got sparsity 0.6"):
        prunelab.prune(model, 0.6, "magnitude", "nm", options={"indivisible": "dense"})
    with pytest.raises(PrunelabError, match=r"input dimension of 'conv1.weight' \(1\), 'conv2.weight' \(6\) is not a multiple of m=4"):
        prunelab.prune(model, 0.5, "magnitude", "nm")
    with pytest.raises(PrunelabError, match="n must be below m"):
        prunelab.prune(model, 0.5, "magnitude", "nm", options={"n": 4, "m": 4})
    with pytest.raises(PrunelabError, match="prunes exactly 1 - n/m"):  # the first of 3 rounds targets less
        prunelab.prune(model, 0.5, "magnitude", "nm", options={"indivisible": "dense"}, iterations=3)
    masks = prunelab.prune(model, 0.5, "magnitude", "nm", options={"indivisible": "dense"})
    assert masks["conv1.weight"].all() and masks["conv2.weight"].all()  # left dense
    assert torch.all(groups_along_input(masks["fc1.weight"], 4) == 2)
    with pytest.raises(PrunelabError, match="1-D masks: 'b'"):
        nm_allocation({"b": torch.rand(4)}, {"b": torch.ones(4, dtype=torch.bool)}, 0.5)
