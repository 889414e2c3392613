"""Combinatorial Brain Surgeon: CBS-S selection and CBS-U update (prunelab.pruning.second_order.cbs).

Checks against brute force (all subsets), objectives recomputed from scratch, and the constrained
quadratic solved directly.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.pruning.context import CRITERIA, UPDATES, ScoreContext
from prunelab.pruning.second_order import (
    CBSOptions,
    SelectionProblem,
    block_inverse,
    cbs_delta,
    cbs_delta_full,
    cbs_select,
    chunked_magnitude_selection,
    full_selection_bytes,
    magnitude_selection,
    make_layout,
    obs_delta,
    quadratic_loss,
    selection_blocks,
)
from prunelab.pruning.second_order.cbs import network_loss
from prunelab.pruning.second_order.fisher import fisher_for

torch.set_num_threads(1)


def random_problem(d: int, n: int, blocks, seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=gen, dtype=torch.float64)
    g = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return w, g, SelectionProblem(w, g, blocks)


def brute_objective(w, g, blocks, pruned) -> float:
    """sum_{k,m in P, same block} w_k F_km w_m with F = G^T G / N, by explicit double sum."""
    f = g.double().T @ g.double() / g.shape[0]
    same = torch.zeros_like(f, dtype=torch.bool)
    for s, e in blocks:
        same[s:e, s:e] = True
    y = pruned.double() * w
    return float(y @ (f * same) @ y)


def small_net_problem(block_size=None, full=False, n=40, seed=0):
    """A layout over a 2-layer net and a random gradient matrix (for CBS-U on blocks)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    masks = {"0.weight": torch.ones(4, 5, dtype=torch.bool), "2.weight": torch.ones(3, 4, dtype=torch.bool)}
    layout = make_layout(model, masks, block_size=block_size, full=full)
    gen = torch.Generator().manual_seed(seed + 1)
    grads = torch.randn(n, layout.dim, generator=gen)
    w = torch.randn(layout.dim, generator=gen, dtype=torch.float64)
    return layout, grads, w


# ---------------------------------------------------------------- CBS-S


@pytest.mark.parametrize("blocks", [((0, 12),), ((0, 5), (5, 9), (9, 12))])
def test_swap_change_equals_objective_recomputed_from_scratch(blocks):
    w, g, prob = random_problem(12, 7, blocks, seed=len(blocks))
    gen = torch.Generator().manual_seed(5)
    for _ in range(6):
        pruned = torch.zeros(12, dtype=torch.bool)
        pruned[torch.randperm(12, generator=gen)[:5]] = True
        z = prob.residuals(pruned)
        base = prob.objective(pruned)
        assert base == pytest.approx(brute_objective(w, g, blocks, pruned), rel=1e-9)
        kept = torch.nonzero(~pruned).reshape(-1)
        for i in torch.nonzero(pruned).reshape(-1).tolist():
            changes = prob.swap_change(z, i, kept)
            for j, change in zip(kept.tolist(), changes.tolist()):
                after = pruned.clone()
                after[i], after[j] = False, True
                assert change == pytest.approx(brute_objective(w, g, blocks, after) - base, rel=1e-9, abs=1e-12)
            # alpha and beta alone: restoring i / pruning j
            restored = pruned.clone()
            restored[i] = False
            alpha = float(prob.alpha(z, torch.tensor([i])))
            assert alpha == pytest.approx(base - brute_objective(w, g, blocks, restored), rel=1e-9, abs=1e-12)
        j = int(kept[0])
        more = pruned.clone()
        more[j] = True
        beta = float(prob.beta(z, torch.tensor([j])))
        assert beta == pytest.approx(brute_objective(w, g, blocks, more) - base, rel=1e-9, abs=1e-12)


def test_apply_swap_keeps_the_residuals_exact():
    w, g, prob = random_problem(10, 6, ((0, 4), (4, 10)), seed=3)
    pruned = torch.tensor([1, 1, 0, 0, 1, 0, 1, 0, 0, 0], dtype=torch.bool)
    z = prob.residuals(pruned)
    prob.apply_swap(z, 0, 7)  # across blocks
    prob.apply_swap(z, 4, 5)
    pruned[[0, 4]] = False
    pruned[[7, 5]] = True
    torch.testing.assert_close(z, prob.residuals(pruned))


def cancelling_problem():
    """Weights 0 and 1 are the largest but their gradient columns are equal and their signs opposite:
    pruning both changes nothing (objective 0), while any pair of small weights costs something."""
    gen = torch.Generator().manual_seed(0)
    n = 6
    v = torch.randn(n, generator=gen, dtype=torch.float64) * 0.3
    g = torch.randn(n, 6, generator=gen, dtype=torch.float64) * 3.0
    g[:, 0] = v
    g[:, 1] = v
    w = torch.tensor([1.0, -1.0, 0.25, 0.3, 0.35, 0.4], dtype=torch.float64)
    return w, g


def test_cbs_selection_finds_the_cancelling_pair_that_magnitude_misses():
    w, g = cancelling_problem()
    blocks = ((0, 6),)
    prob = SelectionProblem(w, g, blocks)
    objectives = {}
    for pair in itertools.combinations(range(6), 2):
        pruned = torch.zeros(6, dtype=torch.bool)
        pruned[list(pair)] = True
        objectives[pair] = brute_objective(w, g, blocks, pruned)
    best = min(objectives, key=objectives.get)
    assert best == (0, 1) and objectives[best] < 1e-12
    magnitude = tuple(torch.nonzero(magnitude_selection(w, 2)).reshape(-1).tolist())
    assert magnitude == (2, 3) and objectives[magnitude] > 0.1
    result = cbs_select(prob, 2, CBSOptions(inits=0))  # start from magnitude: only swaps can get there
    assert tuple(torch.nonzero(result.pruned).reshape(-1).tolist()) == best
    assert result.objective == pytest.approx(0.0, abs=1e-12)
    assert result.pass_swaps[0] >= 1


def test_cbs_selection_never_loses_to_its_initialisation_and_prunes_exactly_n():
    for seed in range(4):
        w, g, prob = random_problem(60, 15, ((0, 25), (25, 60)), seed=seed)
        for n_prune in (10, 30, 55):
            result = cbs_select(prob, n_prune, CBSOptions(epsilon=1e-6), torch.Generator().manual_seed(seed))
            assert int(result.pruned.sum()) == n_prune
            assert result.loss <= min(result.init_losses) + 1e-12
            assert result.objective == pytest.approx(prob.objective(result.pruned))
            # measured "loss" here is the objective itself, so the search must improve or keep it
            assert result.objective <= prob.objective(magnitude_selection(w, n_prune)) + 1e-12


def test_local_search_passes_only_accept_improving_swaps():
    w, g, prob = random_problem(80, 12, ((0, 80),), seed=9)
    result = cbs_select(prob, 40, CBSOptions(inits=0, epsilon=1e-3, passes=10))
    objectives = [result.init_losses[0]] + result.pass_objectives
    for before, after, swaps in zip(objectives, objectives[1:], result.pass_swaps):
        assert after <= before - swaps * 1e-3 + 1e-9  # each accepted swap lowered it by >= epsilon


def test_chunked_magnitude_selection_is_exact_and_seeded():
    w = torch.randn(103, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for n_prune in (0, 1, 50, 102, 103):
        pruned = chunked_magnitude_selection(w, n_prune, torch.Generator().manual_seed(1))
        assert int(pruned.sum()) == n_prune
    a = chunked_magnitude_selection(w, 60, torch.Generator().manual_seed(2))
    b = chunked_magnitude_selection(w, 60, torch.Generator().manual_seed(2))
    c = chunked_magnitude_selection(w, 60, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # a perturbation of magnitude pruning, not a random set: pruned weights are mostly small
    assert float(w[a].abs().mean()) < float(w[~a].abs().mean())


def test_cbs_options_validation():
    with pytest.raises(PrunelabError, match="cbs_window"):
        CBSOptions.from_options({"cbs_window": 0})
    with pytest.raises(PrunelabError, match="unknown CBS option cbs_windows"):
        CBSOptions.from_options({"cbs_windows": 3})
    assert CBSOptions.from_options({"cbs_misses": 5, "damping": 1.0}).misses == 5


# ---------------------------------------------------------------- CBS-U


@pytest.mark.parametrize(("block_size", "full"), [(None, True), (7, False), (None, False)])
def test_cbs_update_zeroes_pruned_weights_and_beats_the_summed_obs_update(block_size, full):
    for seed in range(5):
        layout, grads, w = small_net_problem(block_size, full, n=15 + 10 * seed, seed=seed)
        inverse = block_inverse(grads, layout, 1e-2)
        gen = torch.Generator().manual_seed(seed)
        pruned = torch.zeros(layout.dim, dtype=torch.bool)
        pruned[torch.randperm(layout.dim, generator=gen)[: 8 + seed * 4]] = True
        cbs = cbs_delta(inverse, w, pruned)
        assert float((w + cbs)[pruned].abs().max()) < 1e-10  # exact zeroing, before any masking
        obs = obs_delta(inverse, w, pruned)
        obs[pruned] = -w[pruned]  # OBS then sets the pruned weights to exactly 0
        magnitude = torch.where(pruned, -w, torch.zeros_like(w))
        loss_cbs = quadratic_loss(cbs, grads, layout, 1e-2)
        assert loss_cbs <= quadratic_loss(obs, grads, layout, 1e-2) * (1 + 1e-9)
        assert loss_cbs <= quadratic_loss(magnitude, grads, layout, 1e-2) * (1 + 1e-9)


def test_cbs_update_solves_the_constrained_quadratic():
    """min 1/2 dw^T F dw s.t. dw_P = -w_P: dw_R = F_RR^-1 F_RP w_P (independent of F^-1)."""
    layout, grads, w = small_net_problem(full=True, n=25, seed=4)
    f = 1e-2 * torch.eye(layout.dim, dtype=torch.float64) + grads.double().T @ grads.double() / 25
    pruned = torch.zeros(layout.dim, dtype=torch.bool)
    pruned[[0, 3, 4, 11, 19, 30]] = True
    expected = torch.where(pruned, -w, torch.zeros_like(w))
    expected[~pruned] = torch.linalg.solve(f[~pruned][:, ~pruned], f[~pruned][:, pruned] @ w[pruned])
    torch.testing.assert_close(cbs_delta(block_inverse(grads, layout, 1e-2), w, pruned), expected)


def test_cbs_update_of_one_weight_is_the_obs_update():
    layout, grads, w = small_net_problem(block_size=6, n=20, seed=2)
    inverse = block_inverse(grads, layout, 1e-3)
    pruned = torch.zeros(layout.dim, dtype=torch.bool)
    pruned[8] = True
    torch.testing.assert_close(cbs_delta(inverse, w, pruned), obs_delta(inverse, w, pruned))


# ---------------------------------------------------------------- registered criterion and update


def dense_cbs_delta(grads, w, pruned, damping):
    """The paper's CBS-U with explicit matrices: F = damping I + G^T G / N, F^-1 by torch.linalg.inv,
    [F^-1]_PP lambda = w_P, dw = -F^-1[:, P] lambda (the authors' cal_delta_w_base)."""
    g = grads.double()
    f = damping * torch.eye(g.shape[1], dtype=torch.float64) + g.T @ g / g.shape[0]
    finv = torch.linalg.inv(f)
    lam = torch.linalg.solve(finv[pruned][:, pruned], w[pruned])
    return -(finv[:, pruned] @ lam)


def tiny_setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    masks = {"1.weight": torch.ones(6, 8, dtype=torch.bool), "3.weight": torch.ones(3, 6, dtype=torch.bool)}
    masks["1.weight"][0, :4] = False  # already pruned: stays pruned, scores 0
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(48, 8, generator=gen), torch.randint(0, 3, (48,), generator=gen)
    return model, masks, x, y


def test_cbs_criterion_encodes_a_set_of_the_requested_size():
    model, masks, x, y = tiny_setup()
    ctx = ScoreContext(batches=[(x, y)], options={"sparsity": 0.5, "fisher_samples": 40, "block_size": 20})
    scores = CRITERIA.get("cbs")(model, masks, ctx)
    assert CRITERIA.get("cbs").default_update == "cbs"
    total = sum(m.numel() for m in masks.values())
    flat = torch.cat([scores[n].reshape(-1) for n in masks])
    kept_before = torch.cat([masks[n].reshape(-1) for n in masks])
    assert torch.all(flat[~kept_before] == 0)
    n_pruned_total = round(0.5 * total)
    chosen_pruned = (flat < 1) & kept_before
    assert int(chosen_pruned.sum()) == n_pruned_total - int((~kept_before).sum())
    # a global top-k on the scores keeps exactly CBS's kept set
    keep = torch.topk(flat, total - n_pruned_total).indices
    kept_by_topk = torch.zeros_like(kept_before)
    kept_by_topk[keep] = True
    assert torch.equal(kept_by_topk, flat >= 1)
    # tie-breaker: among CBS-pruned weights, scores grow with magnitude
    w = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in masks])
    order = torch.argsort(w[chosen_pruned].abs())
    assert torch.all(torch.diff(flat[chosen_pruned][order]) >= 0)


def test_cbs_criterion_requires_the_target_sparsity_and_global_allocation():
    model, masks, x, y = tiny_setup()
    with pytest.raises(PrunelabError, match="sparsity"):
        CRITERIA.get("cbs")(model, masks, ScoreContext(batches=[(x, y)], options={"fisher_samples": 40}))
    with pytest.raises(PrunelabError, match="\\[0, 1\\)"):
        CRITERIA.get("cbs")(model, masks, ScoreContext(batches=[(x, y)], options={"sparsity": 1.5}))
    with pytest.raises(PrunelabError, match="allocation 'global'"):
        opts = {"sparsity": 0.5, "allocation": "layerwise", "fisher_samples": 40}
        CRITERIA.get("cbs")(model, masks, ScoreContext(batches=[(x, y)], options=opts))
    with pytest.raises(PrunelabError, match="below the masks' current sparsity"):
        opts = {"sparsity": 0.01, "fisher_samples": 40}
        CRITERIA.get("cbs")(model, masks, ScoreContext(batches=[(x, y)], options=opts))


def test_cbs_update_after_magnitude_through_the_registry():
    model, masks, x, y = tiny_setup(1)
    ctx = ScoreContext(batches=[(x, y)], options={"fisher_samples": 40, "full": True})
    state = fisher_for(model, masks, ctx, "test")
    w = state.weights.clone()
    pruned = magnitude_selection(w, 20)
    new = state.layout.unpack((~pruned).double())
    new = {n: (new[n] > 0) for n in masks}
    expected = w + dense_cbs_delta(state.grads, w, pruned, 1e-3)
    UPDATES.get("cbs")(model, masks, new, ctx)
    after = state.layout.pack(dict(model.named_parameters())).double()
    assert torch.all(after[pruned] == 0)
    torch.testing.assert_close(after, torch.where(pruned, torch.zeros_like(expected), expected), rtol=1e-5, atol=1e-6)
    assert torch.all(model[1].weight[~masks["1.weight"]] == 0)


def test_prunelab_prune_runs_cbs_selection_and_update_end_to_end():
    """The registered criterion/update through ``prunelab.prune`` (which sets ctx.options['sparsity'])."""
    import prunelab

    model, masks, x, y = tiny_setup(2)
    opts = {"fisher_samples": 40, "full": True, "cbs_passes": 20}
    ctx = ScoreContext(batches=[(x, y)], seed=0, options={**opts, "sparsity": 0.6})
    scores = CRITERIA.get("cbs")(model, masks, ctx)
    state = fisher_for(model, masks, ctx, "test")
    expected_kept = state.layout.pack({n: (scores[n] >= 1) for n in masks}).bool()
    w = state.weights.clone()
    expected_w = torch.where(expected_kept, w + dense_cbs_delta(state.grads, w, ~expected_kept, 1e-3), torch.zeros_like(w))

    result = prunelab.prune(model, 0.6, "cbs", data=(x, y), seed=0, masks=masks, options=opts)
    total = sum(m.numel() for m in masks.values())
    assert result.num_total() == total and total - result.num_kept() == round(0.6 * total)
    assert torch.equal(state.layout.pack(dict(result)).bool(), expected_kept)
    after = state.layout.pack(dict(model.named_parameters())).double()
    torch.testing.assert_close(after, expected_w, rtol=1e-5, atol=1e-6)


def test_prunelab_prune_woodfisher_with_obs_and_with_cbs_update():
    import prunelab

    for update in ("auto", "cbs"):
        model, masks, x, y = tiny_setup(3)
        opts = {"fisher_samples": 40, "block_size": 10}
        result = prunelab.prune(model, 0.7, "woodfisher", data=(x, y), masks=masks, options=opts, update=update)
        assert abs(result.sparsity() - 0.7) <= 1 / result.num_total()
        for name, param in model.named_parameters():
            if name in masks:
                assert torch.all(param[~result[name]] == 0)


# ---------------------------------------------------------------- the full Fisher (no d x d matrix)


def test_full_fisher_selection_terms_equal_explicit_matrices_with_chunked_columns():
    w, g, prob = random_problem(30, 9, ((0, 30),), seed=11)
    prob.chunk_elements = 9 * 4  # 4 columns per chunk: exercise the chunked gamma
    f = g.T @ g / 9  # the full undamped Fisher, explicitly
    pruned = torch.zeros(30, dtype=torch.bool)
    pruned[[1, 4, 5, 9, 17, 22, 28]] = True
    z = prob.residuals(pruned)
    y = torch.where(pruned, w, torch.zeros_like(w))
    assert prob.objective(pruned) == pytest.approx(float(y @ f @ y), rel=1e-12)
    kept = torch.nonzero(~pruned).reshape(-1)
    i = 4
    torch.testing.assert_close(prob.gamma(i, kept), 2 * w[i] * f[i, kept] * w[kept], rtol=1e-12, atol=1e-14)
    fwp = f @ y
    torch.testing.assert_close(prob.beta(z, kept), 2 * w[kept] * fwp[kept] + w[kept] ** 2 * f.diagonal()[kept],
                               rtol=1e-12, atol=1e-14)
    p_idx = torch.nonzero(pruned).reshape(-1)
    torch.testing.assert_close(prob.alpha(z, p_idx), 2 * w[p_idx] * fwp[p_idx] - w[p_idx] ** 2 * f.diagonal()[p_idx],
                               rtol=1e-12, atol=1e-14)


def test_selection_blocks_memory_rule_by_hand():
    model, masks, _, _ = tiny_setup()
    layout = make_layout(model, masks, block_size=20)
    # 8 (N + 6 d + 2 window N) + 32 MiB for N = 1000, d = 10,000, window 10
    assert full_selection_bytes(1000, 10_000, 10) == 8 * 81_000 + 2**25
    full, blocks = ((0, layout.dim),), layout.blocks
    assert len(blocks) > 1
    assert selection_blocks(layout, 40, CBSOptions(), 2.0) == full  # the default: auto -> full
    assert selection_blocks(layout, 40, CBSOptions(), 0.03) == blocks  # 32 MiB + a little > 0.03 GiB
    assert selection_blocks(layout, 40, CBSOptions(selection="blocks"), 2.0) == blocks
    with pytest.raises(PrunelabError, match="cbs_selection='blocks'"):
        selection_blocks(layout, 40, CBSOptions(selection="full"), 0.03)
    with pytest.raises(PrunelabError, match="cbs_selection"):
        CBSOptions.from_options({"cbs_selection": "diagonal"})


def test_cbs_criterion_selects_with_the_full_fisher_by_default():
    model, masks, x, y = tiny_setup(10)
    base = {"sparsity": 0.7, "fisher_samples": 40, "block_size": 10, "cbs_inits": 2}
    chosen = {}
    for selection in ("auto", "blocks"):
        ctx = ScoreContext(batches=[(x, y)], seed=3, options={**base, "cbs_selection": selection})
        scores = CRITERIA.get("cbs")(model, masks, ctx)
        state = fisher_for(model, masks, ctx, "test")
        chosen[selection] = state.layout.pack({n: scores[n] < 1 for n in masks}).bool() & state.layout.pack(
            {n: masks[n] for n in masks}).bool()
    # the same search run by hand on the explicit problems: one block over all weights vs the blocks of 10
    loss_of = network_loss(model, state.layout, state.weights, [(x, y)], nn.functional.cross_entropy)
    n_prune = int(chosen["auto"].sum())
    for selection, blocks in (("auto", ((0, state.layout.dim),)), ("blocks", state.layout.blocks)):
        ctx = ScoreContext(batches=[(x, y)], seed=3, options=base)
        expected = cbs_select(SelectionProblem(state.weights, state.grads, blocks), n_prune,
                              CBSOptions(inits=2), ctx.generator(offset=104729), loss_of).pruned
        assert torch.equal(chosen[selection], expected)
    assert not torch.equal(chosen["auto"], chosen["blocks"])  # the blocks drop cross-block terms


@pytest.mark.parametrize("n_prune", [50, 10])  # |K| = 12 <= N (|K| x |K| system), |K| = 52 > N (N x N)
def test_full_cbs_update_equals_the_dense_reference(n_prune):
    model, masks, _, _ = tiny_setup(5)
    layout = make_layout(model, masks, full=True)
    gen = torch.Generator().manual_seed(n_prune)
    grads = torch.randn(40, layout.dim, generator=gen, dtype=torch.float64)
    w = torch.randn(layout.dim, generator=gen, dtype=torch.float64)
    pruned = torch.zeros(layout.dim, dtype=torch.bool)
    pruned[torch.randperm(layout.dim, generator=gen)[:n_prune]] = True
    got = cbs_delta_full(grads, w, pruned, 1e-2)
    torch.testing.assert_close(got, dense_cbs_delta(grads, w, pruned, 1e-2), rtol=1e-7, atol=1e-9)
    assert torch.equal(got[pruned], -w[pruned])
    # float32 G (as gradient_matrix stores it): the float64 products keep it to float32 precision
    got32 = cbs_delta_full(grads.float(), w, pruned, 1e-2)
    torch.testing.assert_close(got32, dense_cbs_delta(grads.float(), w, pruned, 1e-2), rtol=1e-6, atol=1e-8)


def test_full_cbs_update_runs_where_the_d_by_d_inverse_is_refused():
    model, masks, x, y = tiny_setup(6)
    limit = 28_000 / 2**30  # G (4 N d = 9,920 B) and the N x N system (25,600 B) fit; d x d (30,752 B) not
    ctx = ScoreContext(batches=[(x, y)], options={"fisher_samples": 40, "full": True, "fisher_memory_gb": limit})
    state = fisher_for(model, masks, ctx, "test")
    assert state.layout.dim == 62
    with pytest.raises(PrunelabError, match="memory_limit_gb"):
        block_inverse(state.grads, state.layout, 1e-3, memory_limit_gb=limit)
    w = state.weights.clone()
    pruned = magnitude_selection(w, 20)
    new = state.layout.unpack((~pruned).double())
    UPDATES.get("cbs")(model, masks, {n: new[n] > 0 for n in masks}, ctx)
    after = state.layout.pack(dict(model.named_parameters())).double()
    expected = torch.where(pruned, torch.zeros_like(w), w + dense_cbs_delta(state.grads, w, pruned, 1e-3))
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)
