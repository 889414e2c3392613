"""Empirical Fisher, its inverse, WoodFisher scores and the OBS update (prunelab.pruning.second_order).

Reference values come from independent slow routes: per-sample gradients by a Python loop of
``backward()`` calls, inverses by ``torch.linalg.inv`` of the dense matrix and by the sequential
Sherman-Morrison recursion, the OBS update by solving the constrained quadratic directly.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.pruning.context import CRITERIA, UPDATES, ScoreContext
from prunelab.pruning.second_order import (
    FisherOptions,
    LowRankInverse,
    block_inverse,
    full_inverse,
    gradient_matrix,
    make_layout,
    obs_delta,
    quadratic_loss,
    recursive_inverse,
    woodfisher_saliency,
)
from prunelab.pruning.second_order.fisher import fisher_for, gram64, matvec64, rmatvec64

torch.set_num_threads(1)
DAMP = 1e-3


def tiny_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def tiny_masks(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    m1 = torch.rand(5, 6, generator=gen) > 0.25
    m2 = torch.ones(3, 5, dtype=torch.bool)
    m2[0, 1] = False
    return {"1.weight": m1, "3.weight": m2}


def tiny_data(n: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def loop_gradients(model, masks, x, y, batch):
    """Independent G: one backward per mini-batch on a copy whose pruned weights are zeroed."""
    net = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    rows = []
    for s in range(0, x.shape[0], batch):
        net.zero_grad()
        nn.functional.cross_entropy(net(x[s : s + batch]), y[s : s + batch]).backward()
        params = dict(net.named_parameters())
        rows.append(torch.cat([params[n].grad.reshape(-1)[masks[n].reshape(-1)] for n in masks]))
    return torch.stack(rows)


def dense_fisher(grads: torch.Tensor, layout, damping: float) -> torch.Tensor:
    """damping*I + G^T G / N restricted to the layout's diagonal blocks, as a dense matrix."""
    g = grads.double()
    full = g.T @ g / g.shape[0]
    out = torch.zeros_like(full)
    for s, e in layout.blocks:
        out[s:e, s:e] = full[s:e, s:e]
    return out + damping * torch.eye(full.shape[0], dtype=torch.float64)


def fisher_from_hessian(h: torch.Tensor, damping: float) -> torch.Tensor:
    """A gradient matrix G (N = d rows) whose damped Fisher is exactly ``h``."""
    chol = torch.linalg.cholesky(h - damping * torch.eye(h.shape[0], dtype=h.dtype))
    return (h.shape[0] ** 0.5) * chol.T


def random_spd(d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64)


# ---------------------------------------------------------------- layout


def test_layout_drops_pruned_coordinates_and_blocks_stay_inside_layers():
    model, masks = tiny_model(), tiny_masks()
    layout = make_layout(model, masks, block_size=4)
    kept = [int(m.sum()) for m in masks.values()]
    assert layout.dim == sum(kept)
    assert layout.offsets == (0, kept[0])
    for s, e in layout.blocks:  # no block crosses the layer boundary, none is larger than 4
        assert 0 < e - s <= 4 and not (s < kept[0] < e)
    assert [b for b in layout.blocks if b[0] >= kept[0]][0][0] == kept[0]
    vec = torch.arange(layout.dim, dtype=torch.float64) + 1
    back = layout.unpack(vec)
    for name, m in masks.items():
        assert torch.equal(back[name] != 0, m)  # zeros exactly at the pruned weights
    assert torch.equal(layout.pack(back), vec)
    assert make_layout(model, masks, full=True).blocks == ((0, layout.dim),)
    assert make_layout(model, masks, block_size=None).blocks == ((0, kept[0]), (kept[0], layout.dim))


def test_layout_rejects_bad_masks():
    model = tiny_model()
    with pytest.raises(PrunelabError, match="names no parameter"):
        make_layout(model, {"9.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(PrunelabError, match="shape"):
        make_layout(model, {"1.weight": torch.ones(6, 5, dtype=torch.bool)})
    with pytest.raises(PrunelabError, match="keep no weight"):
        make_layout(model, {"1.weight": torch.zeros(5, 6, dtype=torch.bool)})
    with pytest.raises(PrunelabError, match="block_size"):
        make_layout(model, tiny_masks(), block_size=0)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("batch", [1, 4])
def test_vmap_gradients_equal_a_backward_loop(batch):
    model, masks = tiny_model(), tiny_masks()
    x, y = tiny_data(24)
    layout = make_layout(model, masks)
    fast = gradient_matrix(model, layout, masks, x, y, nn.functional.cross_entropy, batch=batch)
    slow = loop_gradients(model, masks, x, y, batch)
    assert fast.shape == (24 // batch, layout.dim)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


def test_gradients_see_the_masked_network():
    """A pruned weight that is still nonzero in the model must not influence the gradients."""
    model, masks = tiny_model(), tiny_masks()
    x, y = tiny_data(12)
    layout = make_layout(model, masks)
    g1 = gradient_matrix(model, layout, masks, x, y, nn.functional.cross_entropy)
    with torch.no_grad():
        model[1].weight[~masks["1.weight"]] = 5.0
    g2 = gradient_matrix(model, layout, masks, x, y, nn.functional.cross_entropy)
    torch.testing.assert_close(g1, g2)


class DataDependentNet(nn.Module):
    """Python control flow on tensor values: vmap cannot trace it, so the loop fallback runs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        return out * 2 if float(x.sum()) > 0 else out


def test_gradients_fall_back_to_a_loop_when_vmap_cannot_trace_the_model():
    torch.manual_seed(0)
    model = DataDependentNet()
    masks = {"lin.weight": torch.rand(3, 6) > 0.3}
    x, y = tiny_data(8)
    layout = make_layout(model, masks)
    fast = gradient_matrix(model, layout, masks, x, y, nn.functional.cross_entropy, batch=2)
    torch.testing.assert_close(fast, loop_gradients(model, masks, x, y, 2), rtol=1e-5, atol=1e-6)


def test_gradient_matrix_rejects_a_ragged_split():
    model, masks = tiny_model(), tiny_masks()
    x, y = tiny_data(10)
    with pytest.raises(PrunelabError, match="fisher_batch=4"):
        gradient_matrix(model, make_layout(model, masks), masks, x, y, nn.functional.cross_entropy, batch=4)


# ---------------------------------------------------------------- inverse


@pytest.mark.parametrize(
    ("n", "block_size", "full"),
    [(50, None, True), (9, None, True), (50, 7, False), (9, 7, False), (30, None, False)],
)
def test_batched_inverse_equals_recursion_and_dense_inverse(n, block_size, full):
    """Cholesky route (block <= N) and Woodbury route (N < block), full and block-diagonal."""
    model, masks = tiny_model(), tiny_masks()
    layout = make_layout(model, masks, block_size=block_size, full=full)
    grads = torch.randn(n, layout.dim, generator=torch.Generator().manual_seed(n)) * 0.7
    inv = block_inverse(grads, layout, DAMP)
    dense = inv.dense()
    reference = torch.linalg.inv(dense_fisher(grads, layout, DAMP))
    torch.testing.assert_close(dense, reference, rtol=1e-7, atol=1e-7 * float(reference.abs().max()))
    recursion = torch.block_diag(*[recursive_inverse(grads[:, s:e], DAMP) for s, e in layout.blocks])
    torch.testing.assert_close(dense, recursion, rtol=1e-7, atol=1e-7 * float(reference.abs().max()))
    torch.testing.assert_close(inv.diag(), reference.diagonal())
    v = torch.randn(layout.dim, dtype=torch.float64)
    torch.testing.assert_close(inv.matvec(v), reference @ v)


def test_recursion_batched_over_blocks_equals_one_at_a_time():
    g = torch.randn(3, 12, 5, generator=torch.Generator().manual_seed(1))
    batched = recursive_inverse(g, 0.1)
    for k in range(3):
        torch.testing.assert_close(batched[k], recursive_inverse(g[k], 0.1))


def test_memory_limit_is_a_clear_error():
    model, masks = tiny_model(), tiny_masks()
    layout = make_layout(model, masks, full=True)
    with pytest.raises(PrunelabError, match="memory_limit_gb"):
        block_inverse(torch.randn(4, layout.dim), layout, DAMP, memory_limit_gb=1e-9)


def test_quadratic_loss_is_half_delta_f_delta():
    model, masks = tiny_model(), tiny_masks()
    layout = make_layout(model, masks, block_size=5)
    grads = torch.randn(11, layout.dim, generator=torch.Generator().manual_seed(3))
    delta = torch.randn(layout.dim, dtype=torch.float64)
    expected = 0.5 * float(delta @ dense_fisher(grads, layout, 0.01) @ delta)
    assert quadratic_loss(delta, grads, layout, 0.01) == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------- WoodFisher and OBS


def test_woodfisher_scores_equal_the_formula_on_a_hand_made_fisher():
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    masks = {"0.weight": torch.ones(2, 4, dtype=torch.bool)}
    layout = make_layout(model, masks, full=True)
    h = torch.tensor(
        [[4.0, 1.0, 0.0, 0.5, 0, 0, 0, 0],
         [1.0, 3.0, 0.2, 0.0, 0, 0, 0, 0],
         [0.0, 0.2, 2.0, 0.3, 0, 0, 0, 0],
         [0.5, 0.0, 0.3, 1.0, 0, 0, 0, 0],
         [0, 0, 0, 0, 2.0, 0.1, 0, 0],
         [0, 0, 0, 0, 0.1, 1.0, 0, 0],
         [0, 0, 0, 0, 0, 0, 5.0, 2.0],
         [0, 0, 0, 0, 0, 0, 2.0, 3.0]], dtype=torch.float64)  # fmt: skip
    w = torch.tensor([0.3, -1.2, 0.05, 2.0, -0.4, 0.9, 1.1, -0.7], dtype=torch.float64)
    inv = block_inverse(fisher_from_hessian(h, DAMP), layout, DAMP)
    expected = w**2 / (2 * torch.linalg.inv(h).diagonal())
    torch.testing.assert_close(woodfisher_saliency(inv, w), expected)
    # by hand for weight 6 (the 2x2 block [[5, 2], [2, 3]], inverse diagonal 3/11): 1.21 / (6/11)
    assert float(woodfisher_saliency(inv, w)[6]) == pytest.approx(1.21 * 11 / 6, rel=1e-9)


@pytest.mark.parametrize("q", [0, 3, 6])
def test_obs_update_for_one_weight_matches_the_constrained_quadratic_optimum(q):
    """Loss 1/2 (w - w*)^T H (w - w*) at w = w*; removing q: the best other weights solve
    H_RR dw_R = -H_Rq dw_q with dw_q = -w*_q, and the loss rises by w_q^2 / (2 [H^-1]_qq)."""
    d = 8
    h = random_spd(d, seed=q)
    w = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(10 + q))
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    layout = make_layout(model, {"0.weight": torch.ones(2, 4, dtype=torch.bool)}, full=True)
    inv = block_inverse(fisher_from_hessian(h, DAMP), layout, DAMP)
    pruned = torch.zeros(d, dtype=torch.bool)
    pruned[q] = True
    delta = obs_delta(inv, w, pruned)
    rest = [k for k in range(d) if k != q]
    analytic = torch.zeros(d, dtype=torch.float64)
    analytic[q] = -w[q]
    analytic[rest] = torch.linalg.solve(h[rest][:, rest], -h[rest, q] * analytic[q])
    torch.testing.assert_close(delta, analytic)
    rise = 0.5 * float(delta @ h @ delta)
    assert rise == pytest.approx(float(woodfisher_saliency(inv, w)[q]), rel=1e-9)


def ctx_for(x, y, **options) -> ScoreContext:
    return ScoreContext(batches=[(x, y)], options={"fisher_samples": 30, "damping": DAMP, **options})


def test_woodfisher_criterion_matches_an_independent_computation():
    model, masks = tiny_model(), tiny_masks()
    x, y = tiny_data(30)
    ctx = ctx_for(x, y, block_size=6)
    scores = CRITERIA.get("woodfisher")(model, masks, ctx)
    assert CRITERIA.get("woodfisher").default_update == "obs"
    # independent: all 30 samples (a permutation does not change F), loop gradients, dense inverse
    layout = make_layout(model, masks, block_size=6)
    grads = loop_gradients(model, masks, x, y, 1)
    finv = torch.linalg.inv(dense_fisher(grads, layout, DAMP))
    w = layout.pack(dict(model.named_parameters())).double()
    expected = layout.unpack(w**2 / (2 * finv.diagonal()))
    for name in masks:
        assert scores[name].shape == masks[name].shape and scores[name].dtype == torch.float32
        torch.testing.assert_close(scores[name].double(), expected[name], rtol=1e-4, atol=1e-9)
        assert torch.all(scores[name][~masks[name]] == 0)


def test_obs_update_zeroes_pruned_weights_and_leaves_others_out_of_the_layout_alone():
    model, masks = tiny_model(), tiny_masks()
    x, y = tiny_data(30)
    ctx = ctx_for(x, y, full=True)
    state = fisher_for(model, masks, ctx, "test")
    new = {n: m.clone() for n, m in masks.items()}
    new["1.weight"][0, :3] = False
    new["3.weight"][2, 4] = False
    bias_before = model[1].bias.detach().clone()
    before = state.weights.clone()
    pruned = ~state.layout.pack(new).bool()
    expected = before + obs_delta(state.inverse, before, pruned)
    UPDATES.get("obs")(model, masks, new, ctx)
    after = state.layout.pack(dict(model.named_parameters())).double()
    assert torch.all(after[pruned] == 0)
    torch.testing.assert_close(after[~pruned], expected[~pruned], rtol=1e-5, atol=1e-6)
    assert torch.all(model[1].weight[~masks["1.weight"]] == 0)
    assert torch.equal(model[1].bias, bias_before)


def test_fisher_is_cached_on_the_context_until_weights_change():
    model, masks = tiny_model(), tiny_masks()
    x, y = tiny_data(30)
    ctx = ctx_for(x, y)
    first = fisher_for(model, masks, ctx, "test")
    assert fisher_for(model, {n: m.clone() for n, m in masks.items()}, ctx, "test") is first
    with torch.no_grad():
        model[1].weight.mul_(0.5)
    assert fisher_for(model, masks, ctx, "test") is not first


def test_clear_errors_for_missing_data_too_few_samples_and_bad_options():
    model, masks = tiny_model(), tiny_masks()
    x, y = tiny_data(10)
    with pytest.raises(PrunelabError, match="data-dependent"):
        CRITERIA.get("woodfisher")(model, masks, ScoreContext())
    with pytest.raises(PrunelabError, match="needs fisher_samples"):
        CRITERIA.get("woodfisher")(model, masks, ctx_for(x, y, fisher_samples=11))
    with pytest.raises(PrunelabError, match="damping"):
        CRITERIA.get("woodfisher")(model, masks, ctx_for(x, y, fisher_samples=5, damping=-1.0))
    with pytest.raises(PrunelabError, match="block_size"):
        FisherOptions.from_options({"block_size": 2.5})
    with pytest.raises(PrunelabError, match="FisherOptions"):
        FisherOptions.from_options({"fisher": {"samples": 3}})
    typed = FisherOptions(samples=7, block_size=None)
    assert FisherOptions.from_options({"fisher": typed, "fisher_samples": 99}) is typed
    with pytest.raises(PrunelabError, match="keeps weights the old mask pruned"):
        revived = {n: torch.ones_like(m) for n, m in masks.items()}
        UPDATES.get("obs")(model, masks, revived, ctx_for(x, y, fisher_samples=5))


# ---------------------------------------------------------------- the full Fisher without a d x d matrix


def test_low_rank_full_inverse_equals_the_dense_inverse():
    model, masks = tiny_model(), tiny_masks()
    layout = make_layout(model, masks, full=True)
    n = 9  # N < d: the Woodbury route
    grads = torch.randn(n, layout.dim, generator=torch.Generator().manual_seed(2)) * 0.7
    inv = full_inverse(grads, layout, DAMP)
    assert isinstance(inv, LowRankInverse)
    g = grads.double()
    reference = torch.linalg.inv(DAMP * torch.eye(layout.dim, dtype=torch.float64) + g.T @ g / n)
    scale = float(reference.abs().max())
    torch.testing.assert_close(inv.dense(), reference, rtol=1e-7, atol=1e-9 * scale)
    torch.testing.assert_close(inv.diag(), reference.diagonal(), rtol=1e-7, atol=1e-9 * scale)
    v = torch.randn(layout.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(inv.matvec(v), reference @ v, rtol=1e-7, atol=1e-9 * scale)
    # the chunked float64 products, with 2-column chunks
    cols = torch.rand(layout.dim, generator=torch.Generator().manual_seed(4)) > 0.5
    torch.testing.assert_close(matvec64(grads, v, step=2), g @ v)
    torch.testing.assert_close(rmatvec64(grads, v[:n], step=2), g.T @ v[:n])
    torch.testing.assert_close(gram64(grads, cols, step=2), g[:, cols] @ g[:, cols].T)


def test_full_option_uses_the_low_rank_inverse_in_woodfisher_and_obs():
    model, masks = tiny_model(), tiny_masks()
    x, y = tiny_data(10)
    ctx = ctx_for(x, y, fisher_samples=10, full=True)  # N = 10 < d = 37
    state = fisher_for(model, masks, ctx, "test")
    assert state.layout.dim > 10 and isinstance(state.inverse, LowRankInverse)
    g = state.grads.double()
    finv = torch.linalg.inv(DAMP * torch.eye(state.layout.dim, dtype=torch.float64) + g.T @ g / 10)
    scores = CRITERIA.get("woodfisher")(model, masks, ctx)
    w = state.weights
    expected = state.layout.unpack(w**2 / (2 * finv.diagonal()))
    for name in masks:
        torch.testing.assert_close(scores[name].double(), expected[name], rtol=1e-5, atol=1e-9)
    pruned = torch.zeros(state.layout.dim, dtype=torch.bool)
    pruned[[0, 5, 20]] = True
    coeff = torch.where(pruned, w / finv.diagonal(), torch.zeros_like(w))
    torch.testing.assert_close(obs_delta(state.inverse, w, pruned), -(finv @ coeff), rtol=1e-7, atol=1e-9)
