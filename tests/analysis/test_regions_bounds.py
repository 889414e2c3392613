"""Upper bounds on linear regions (Serra et al. 2018; Cai et al. 2023) and the rank distributions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from prunelab.analysis.regions import (
    affine_dim,
    expected_bound,
    format_bound,
    mlp_bound,
    model_bound,
    rank_distribution,
    serra_bound,
)
from prunelab.analysis.regions.rank import SAMPLES_PER_RANK, sample_mask_rank
from prunelab.errors import PrunelabError


# --- independent brute force: enumerate J with itertools.product -----------------------------------
def j_sum(n0: int, widths: list[int], ranks: list[int] | None = None, cap_dim_by_rank: bool = False) -> int:
    """sum over J of prod C(n_l, j_l), J = {0 <= j_l <= min(n0, n_i - j_i (i < l), last_l)}.

    ``last_l`` is n_l, or rank_l if ranks are given (Serra's rank variant). With ``cap_dim_by_rank``
    the earlier ranks also enter the min (Cai et al.'s recurrence: rank_i caps the dimension passed on).
    """
    ks = widths if ranks is None else ranks
    total = 0
    for js in itertools.product(*[range(n + 1) for n in widths]):
        ok = True
        for l, j in enumerate(js):
            limit = min([n0] + [widths[i] - js[i] for i in range(l)] + [ks[l]])
            if cap_dim_by_rank:
                limit = min([limit] + [ks[i] for i in range(l)])
            if j > limit:
                ok = False
                break
        if ok:
            total += math.prod(math.comb(n, j) for n, j in zip(widths, js))
    return total


ARCHS = [(2, [3, 3]), (3, [2, 4, 3]), (1, [5, 5]), (4, [3, 5, 2]), (5, [4, 4]), (2, [1, 6, 2]), (3, [6, 2, 5])]


@pytest.mark.parametrize("n0,widths", ARCHS)
def test_serra_bound_equals_brute_force_j_sum(n0, widths):
    assert serra_bound(n0, widths).exact == j_sum(n0, widths)


@pytest.mark.parametrize("n0,widths,ranks", [(3, [4, 4], [2, 3]), (4, [3, 5, 2], [3, 2, 1]), (2, [5, 5, 5], [1, 4, 2])])
def test_rank_variant_equals_brute_force(n0, widths, ranks):
    b = serra_bound(n0, widths, ranks)
    assert b.exact == j_sum(n0, widths, ranks)
    assert b.exact <= serra_bound(n0, widths).exact


def test_hand_computed_values():
    # one hidden layer: the arrangement of n_1 hyperplanes in general position in R^{n_0}
    assert serra_bound(2, [3]).exact == 1 + 3 + 3
    assert serra_bound(5, [4]).exact == 2**4
    # 1-D input: the bound is tight and equals prod(n_l + 1) (Serra et al. 2018)
    assert serra_bound(1, [2, 2]).exact == 9
    assert serra_bound(1, [3, 4, 2]).exact == 4 * 5 * 3
    b = serra_bound(784, [100, 100])
    assert b.exact < 2**200 and abs(b.log2 - math.log2(b.exact)) < 1e-9


@pytest.mark.parametrize("rank", ["analytic", "montecarlo"])
@pytest.mark.parametrize("n0,widths", [(784, [100, 100]), (3, [6, 2, 5]), (2, [8, 8])])
def test_sparse_bound_at_density_one_equals_dense(rank, n0, widths):
    dense = serra_bound(n0, widths)
    sparse = expected_bound(n0, widths, [1.0] * len(widths), rank=rank)
    assert sparse.exact == dense.exact  # rank = min(n_l, n_{l-1}) never binds since d <= n_{l-1}
    assert sparse.log2 == pytest.approx(dense.log2, abs=1e-12)


def test_expected_bound_equals_brute_force_expectation():
    """E over independent ranks of the J-sum with ranks capping the dimension, vs the log2 recurrence."""
    n0, widths, ps = 3, [4, 3, 4], [0.35, 0.6, 0.25]
    fan_in = [n0] + widths[:-1]
    dists = [rank_distribution(n, m, p) for n, m, p in zip(widths, fan_in, ps)]
    expect = 0.0
    for ks in itertools.product(*[range(len(d.log2_probs)) for d in dists]):
        pr = math.prod(float(d.probs[k]) for d, k in zip(dists, ks))
        if pr > 0:
            expect += pr * j_sum(n0, widths, list(ks), cap_dim_by_rank=True)
    got = expected_bound(n0, widths, ps)
    assert got.exact is None
    assert got.log2 == pytest.approx(math.log2(expect), abs=1e-9)
    assert got.log2 < serra_bound(n0, widths).log2


def test_expected_bound_decreases_with_density_and_subspace():
    hi = expected_bound(784, [100, 100], [0.01, 0.01]).log2
    lo = expected_bound(784, [100, 100], [0.001, 0.001]).log2
    assert lo < hi < serra_bound(784, [100, 100]).log2
    # restricted to a d-dimensional subspace: d replaces n_0
    assert expected_bound(784, [6, 6], [1.0, 1.0], subspace_dim=2).exact == serra_bound(2, [6, 6]).exact
    assert expected_bound(784, [100, 100], [0.01, 0.01], subspace_dim=2).log2 < hi


def test_rank_distribution_point_masses():
    for method in ("analytic", "montecarlo"):
        full = rank_distribution(30, 7, 1.0, method)
        assert full.support() == [7] and full.probs[7] == 1.0
        empty = rank_distribution(30, 7, 0.0, method)
        assert empty.support() == [0]


def test_monte_carlo_and_analytic_agree_on_tall_sparse_matrices():
    # 200 x 8 at p = 0.02: each of the 8 columns is non-zero w.p. 1 - 0.98^200 = 0.98, and with so many
    # rows the non-zero columns are almost always independent, so rank ~ Binomial(8, 0.98).
    mc = rank_distribution(200, 8, 0.02, "montecarlo", seed=3)
    an = rank_distribution(200, 8, 0.02, "analytic")
    tv = 0.5 * np.abs(mc.probs - an.probs).sum()
    assert tv < 0.1
    assert mc.mean() == pytest.approx(an.mean(), abs=0.15)
    # the stopping rule: 50 samples per distinct rank seen
    assert mc.samples == SAMPLES_PER_RANK * len(mc.support())
    # cached: same object, and a different seed gives an independent draw
    assert rank_distribution(200, 8, 0.02, "montecarlo", seed=3) is mc


def test_analytic_overestimates_square_sparse_rank():
    # on square matrices, non-zero rows can still be dependent (two rows sharing one column), so the
    # paper's analytic approximation is an over-estimate of the Monte Carlo mean
    mc = rank_distribution(60, 60, 0.02, "montecarlo")
    an = rank_distribution(60, 60, 0.02, "analytic")
    assert an.mean() > mc.mean()
    assert abs(sum(mc.probs) - 1) < 1e-12 and abs(sum(an.probs) - 1) < 1e-12


def test_structural_rank_equals_rank_of_gaussian_matrices():
    rng = np.random.default_rng(0)
    for p in (0.02, 0.05, 0.1, 0.3):
        for _ in range(10):
            mask = rng.random((25, 40)) < p
            gauss = np.where(mask, rng.standard_normal(mask.shape), 0.0)
            assert sample_mask_rank(mask) == np.linalg.matrix_rank(gauss)


def test_mlp_bound_drops_output_layer_and_format():
    dense = mlp_bound([784, 100, 100, 10])
    assert dense.exact == serra_bound(784, [100, 100]).exact
    assert mlp_bound([784, 100, 100, 10], [1, 1, 0.3]).exact == dense.exact  # output density ignored
    text = format_bound(dense)
    assert f"bound = {dense.exact}" in text and "log2(bound) = 199.079" in text
    big = mlp_bound([784, 400, 400, 10])
    assert big.digits > 100
    assert "bound = " not in format_bound(big) and "e+" not in format_bound(big)
    assert f"e{math.floor(big.log2 * math.log10(2))}" in format_bound(big)
    sparse = mlp_bound([784, 100, 100, 10], [0.01, 0.01, 1.0])
    assert sparse.exact is None and "expected value" in format_bound(sparse)
    assert sparse.to_row()["bound_log2"] == sparse.log2


def test_model_bound_uses_ranks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    assert model_bound(model).exact == serra_bound(3, [5, 4]).exact
    masks = {"3.weight": torch.zeros(4, 5, dtype=torch.bool)}
    masks["3.weight"][0, 0] = True  # second hidden layer keeps one weight: rank 1
    assert model_bound(model, masks).exact == serra_bound(3, [5, 4], [3, 1]).exact


def test_affine_dim():
    pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    assert affine_dim(pts) == 2
    assert affine_dim(np.array([[0.0, 0], [1, 1], [2, 2]])) == 1
    assert affine_dim(np.zeros((1, 5))) == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda: serra_bound(-1, [3]),
        lambda: serra_bound(3, []),
        lambda: serra_bound(3, [3, 0]),
        lambda: serra_bound(3, [3, 3], [4, 1]),
        lambda: expected_bound(3, [3, 3], [0.5]),
        lambda: expected_bound(3, [3, 3], [0.5, 1.5]),
        lambda: expected_bound(3, [3, 3], [0.5, 0.5], rank="svd"),
        lambda: expected_bound(3, [3, 3], [0.5, 0.5], subspace_dim=4),
        lambda: mlp_bound([784, 10]),
        lambda: mlp_bound([784, 100, 10], [0.1]),
        lambda: rank_distribution(0, 3, 0.5),
        lambda: rank_distribution(3, 3, 0.5, seed=-1),
    ],
)
def test_bad_input_raises(call):
    with pytest.raises(PrunelabError):
        call()
