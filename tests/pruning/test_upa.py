"""The undecayed pruning criterion ``upa``: the formula on a hand-computed case, its options and errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import prunelab.pruning.upa  # noqa: F401  (registers "upa")
from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.pruning.context import CRITERIA, ScoreContext

torch.set_num_threads(1)


def linear_model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    return model


def test_upa_equals_formula_on_hand_computed_case():
    # One sample x = (1, 2), label 0. Logits z = W x = (1 - 4, 0.5 + 6) = (-3, 6.5).
    # p = softmax(z); dCE/dW = (p - e_0) x^T.
    model = linear_model()
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([0])
    e = math.exp(-3.0) + math.exp(6.5)
    p0, p1 = math.exp(-3.0) / e, math.exp(6.5) / e
    grad = [[(p0 - 1) * 1, (p0 - 1) * 2], [p1 * 1, p1 * 2]]
    w = [[1.0, -2.0], [0.5, 3.0]]
    lam = 0.01
    expected = [[abs(-w[i][j] * grad[i][j] + lam * w[i][j] ** 2) for j in range(2)] for i in range(2)]
    masks = Masks.ones(model)
    scores = CRITERIA.get("upa")(model, masks, ScoreContext(batches=[(x, y)], options={"weight_decay": lam}))
    assert torch.allclose(scores["0.weight"].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5)
    # default lambda: the authors' hard-coded 5e-4
    default = CRITERIA.get("upa")(model, masks, ScoreContext(batches=[(x, y)]))
    expected0 = abs(-w[0][1] * grad[0][1] + 5e-4 * w[0][1] ** 2)
    assert default["0.weight"][0, 1].item() == pytest.approx(expected0, rel=1e-5)
    # lambda = 0 is first-order (gradient) pruning |w g|
    g0 = CRITERIA.get("upa")(model, masks, ScoreContext(batches=[(x, y)], options={"weight_decay": 0.0}))
    assert g0["0.weight"][1, 1].item() == pytest.approx(abs(3.0 * grad[1][1]), rel=1e-5)


def test_upa_scores_masked_network_and_leaves_model_unchanged():
    model = linear_model()
    before = model[0].weight.detach().clone()
    mask = Masks({"0.weight": torch.tensor([[True, False], [True, True]])})
    x, y = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([0, 1])
    scores = CRITERIA.get("upa")(model, mask, ScoreContext(batches=[(x, y)]))
    assert scores["0.weight"][0, 1] == 0
    assert torch.equal(model[0].weight, before) and model[0].weight.grad is None


def test_upa_uses_train_mode_and_mean_over_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    model.eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 3, generator=g), torch.randint(0, 2, (6,), generator=g)) for _ in range(2)]
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    lam = 1e-3
    masks = Masks.ones(model)
    scores = CRITERIA.get("upa")(model, masks, ScoreContext(batches=batches, options={"weight_decay": lam}))
    # independent computation: train mode, gradient of the mean of the two batch losses
    ref = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    ref.load_state_dict(model.state_dict())
    ref.train()
    loss = sum(nn.functional.cross_entropy(ref(xb), yb) for xb, yb in batches) / 2
    loss.backward()
    for name in ("0.weight", "3.weight"):
        w = dict(ref.named_parameters())[name]
        expected = (-w.detach() * w.grad + lam * w.detach() ** 2).abs()
        assert torch.allclose(scores[name], expected, atol=1e-7)
    assert not model.training  # mode restored
    for k, b in model.named_buffers():
        assert torch.equal(b, buffers[k])  # BatchNorm statistics restored
    eval_scores = CRITERIA.get("upa")(model, masks, ScoreContext(batches=batches, options={"train_mode": False}))
    assert not torch.allclose(eval_scores["0.weight"], scores["0.weight"])


def test_upa_through_prune_reaches_the_sparsity():
    from prunelab.pruning.api import prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g))
    masks = prune(model, 0.5, criterion="upa", data=data, options={"weight_decay": 1e-4})
    assert masks.num_kept() == (8 * 16 + 16 * 3) // 2


def test_upa_bad_inputs():
    model = linear_model()
    masks = Masks.ones(model)
    with pytest.raises(PrunelabError, match="data-dependent"):
        CRITERIA.get("upa")(model, masks, ScoreContext())
    data = [(torch.ones(1, 2), torch.tensor([0]))]
    for bad in (-1e-4, "5e-4", True, float("nan")):
        with pytest.raises(PrunelabError, match="weight_decay"):
            CRITERIA.get("upa")(model, masks, ScoreContext(batches=data, options={"weight_decay": bad}))
