"""Exact compression (Serra, Kumar & Ramalingam 2020; Serra, Yu, Kumar & Ramalingam 2021): delete
stably inactive units, fold stably active ones, and check the smaller MLP computes the same function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunelab.analysis.exact import (
    compress,
    find_stable_neurons,
    load_compressed,
    save_compressed,
)
from prunelab.analysis.exact.compress import _basis
from prunelab.errors import PrunelabError

torch.set_num_threads(1)


def mlp_from(weights: list[tuple[list, list]]) -> nn.Sequential:
    """An MLP with the given (W, b) per layer, ReLU between layers."""
    mods: list[nn.Module] = [nn.Flatten()]
    for j, (w, b) in enumerate(weights):
        w_t, b_t = torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
        lin = nn.Linear(w_t.shape[1], w_t.shape[0])
        with torch.no_grad():
            lin.weight.copy_(w_t)
            lin.bias.copy_(b_t)
        mods.append(lin)
        if j < len(weights) - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def trained_sparse_mlp(seed: int = 3, l1: float = 3e-5, steps: int = 300) -> tuple[nn.Sequential, torch.Tensor]:
    """Tiny MLP trained with Adam + L1 on data filling [0, 0.5]^4 of the domain [0, 1]^4."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(512, 4, generator=gen) * 0.5
    y = (x[:, 0] + x[:, 1] > 0.5).long() + (x[:, 2] > 0.3).long()
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(net(x), y)
        loss = loss + l1 * sum(m.weight.abs().sum() for m in net if isinstance(m, nn.Linear))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, x


def max_diff(a: nn.Module, b: nn.Module, n_inputs: int, seed: int = 123, n: int = 10_000) -> float:
    x = torch.rand(n, n_inputs, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model if isinstance(m, nn.Linear)]


def test_dead_unit_removed_and_linear_layer_folded_away():
    # layer 1: positive weights and biases on [0,1]^3 -> every unit stably active (a linear layer)
    w1 = [[1.0, 0.5, 0.2], [0.3, 1.0, 0.1], [0.2, 0.2, 1.0], [0.5, 0.5, 0.5]]
    b1 = [0.1, 0.2, 0.3, 0.1]
    # layer 2: unit 0 has negative weights and bias on non-negative inputs -> provably dead
    w2 = [
        [-1.0, -0.5, -0.3, -0.2],
        [1.0, -1.0, 0.0, 0.0],
        [0.0, 1.0, -1.0, 0.0],
        [0.5, 0.0, 0.5, -1.0],
        [-1.0, 0.0, 1.0, 0.0],
    ]
    b2 = [-0.1, 0.0, 0.05, 0.0, 0.1]
    w3 = [[1.0, 2.0, -1.0, 0.5, 1.0], [-1.0, 0.5, 1.0, 2.0, -0.5]]
    net = mlp_from([(w1, b1), (w2, b2), (w3, [0.0, 0.1])])
    stable = find_stable_neurons(net)
    assert stable.layers[0].status == ["active"] * 4
    assert stable.layers[0].how == ["interval"] * 4
    assert stable.layers[1].status == ["inactive", "unstable", "unstable", "unstable", "unstable"]
    result = compress(net, stable)
    assert result.widths_before == [3, 4, 5, 2]
    assert result.widths_after == [3, 4, 2]  # layer 1 merged into layer 2, dead unit gone
    assert result.layers_before == 3 and result.layers_after == 2
    assert result.neurons_before == 9 and result.neurons_after == 4
    assert result.per_layer[0]["merged"] and not result.per_layer[1]["merged"]
    assert result.verified and result.n_points == 10_000
    assert result.max_abs_diff <= result.tolerance
    # the merged weights are the composition W2[1:] @ W1 (hand check)
    w = linears(result.model)[0].weight.detach().double()
    expected = torch.tensor(w2, dtype=torch.float64)[1:] @ torch.tensor(w1, dtype=torch.float64)
    torch.testing.assert_close(w, expected, atol=1e-6, rtol=0)
    assert max_diff(net, result.model, 3) < 1e-5


def test_dependent_active_units_fold_into_next_layer():
    # over [0,1]^2: units 0,1 unstable; 2 active; 3 = unit 2 / 2 with another bias; 4 constant 0.7
    w1 = [[1.0, -1.0], [-1.0, 1.0], [1.0, 2.0], [0.5, 1.0], [0.0, 0.0]]
    b1 = [0.0, 0.1, 1.0, 0.9, 0.7]
    w2 = [[1.0, -2.0, 0.5, 1.5, 2.0], [0.3, 1.0, -1.0, 0.25, -1.0]]
    net = mlp_from([(w1, b1), (w2, [0.2, -0.1])])
    stable = find_stable_neurons(net)
    assert stable.layers[0].status == ["unstable", "unstable", "active", "active", "active"]
    result = compress(net, stable)
    assert result.widths_after == [2, 3, 2]
    assert result.per_layer[0]["active_folded"] == 2
    # by hand: relu(g3) = 0.5 relu(g2) + (0.9 - 0.5 * 1.0), relu(g4) = 0.7, so unit 2's outgoing
    # weights gain 0.5 W[:, 3] and the bias gains 0.4 W[:, 3] + 0.7 W[:, 4]
    out = linears(result.model)[1]
    w2t = torch.tensor(w2, dtype=torch.float64)
    torch.testing.assert_close(out.weight.detach().double()[:, 2], w2t[:, 2] + 0.5 * w2t[:, 3], atol=1e-6, rtol=0)
    expected_b = torch.tensor([0.2, -0.1], dtype=torch.float64) + w2t[:, 3] * 0.4 + w2t[:, 4] * 0.7
    torch.testing.assert_close(out.bias.detach().double(), expected_b, atol=1e-6, rtol=0)
    assert max_diff(net, result.model, 2) < 1e-5


def test_units_removed_and_connections_removed_are_reported_apart():
    # over [0,1]^2: units 0,1 unstable; 2 active; 3 = unit 2 / 2 (dependent); 4 constant 0.7
    # (a zero row: dependent too); 5 dead (negative weights and bias on non-negative inputs)
    w1 = [[1.0, -1.0], [-1.0, 1.0], [1.0, 2.0], [0.5, 1.0], [0.0, 0.0], [-1.0, -1.0]]
    b1 = [0.0, 0.1, 1.0, 0.9, 0.7, -0.5]
    w2 = [[1.0, -2.0, 0.5, 1.5, 2.0, 0.7], [0.3, 1.0, -1.0, 0.25, -1.0, -0.4]]
    net = mlp_from([(w1, b1), (w2, [0.2, -0.1])])
    stable = find_stable_neurons(net)
    assert stable.layers[0].status == ["unstable", "unstable", "active", "active", "active", "inactive"]
    row = compress(net, stable).to_row()
    # by hand: 1 dead unit deleted, units 3 and 4 folded into unit 2 -> 3 of 6 hidden units left
    assert (row["inactive_removed"], row["active_folded"], row["neurons_removed"]) == (1, 2, 3)
    assert row["neurons_removed_fraction"] == 0.5 and row["neurons_removed_per_layer"] == "3"
    # connections: before 10 non-zero weights in W1 (the zero row has none) + 12 in W2 = 22;
    # after W1 rows 0-2 (6) + a dense 2 x 3 W2 (6) = 12, so 10/22 removed
    assert (row["connections_before"], row["connections_after"]) == (22, 12)
    assert row["connections_removed_fraction"] == round(10 / 22, 6)


def test_merged_layer_counts_as_active_units_removed():
    # the 3-4-5-2 net of the first test: layer 1 (4 active units) merged away, 1 dead unit in layer 2
    w1 = [[1.0, 0.5, 0.2], [0.3, 1.0, 0.1], [0.2, 0.2, 1.0], [0.5, 0.5, 0.5]]
    w2 = [[-1.0, -0.5, -0.3, -0.2], [1.0, -1.0, 0.0, 0.0], [0.0, 1.0, -1.0, 0.0], [0.5, 0.0, 0.5, -1.0], [-1.0, 0.0, 1.0, 0.0]]
    net = mlp_from([(w1, [0.1, 0.2, 0.3, 0.1]), (w2, [-0.1, 0.0, 0.05, 0.0, 0.1]), ([[1.0, 2.0, -1.0, 0.5, 1.0], [-1.0, 0.5, 1.0, 2.0, -0.5]], [0.0, 0.1])])
    result = compress(net, find_stable_neurons(net))
    row = result.to_row()
    assert (row["inactive_removed"], row["active_folded"], row["neurons_removed_per_layer"]) == (1, 4, "4,1")
    assert row["neurons_removed_fraction"] == round(5 / 9, 6)
    # 12 + 13 + 10 = 35 weights before; after, the merged 4 x 3 product (W2[1:] W1, no zero entry:
    # rows [.7,-.5,.1], [.1,.8,-.9], [.1,-.15,.1], [-.8,-.3,.8]) and the 2 x 4 output layer = 20
    assert (row["connections_before"], row["connections_after"]) == (35, 20)
    assert row["connections_removed_fraction"] == round(15 / 35, 6)


def test_merge_rules():
    w1 = [[1.0, 0.5, 0.2], [0.3, 1.0, 0.1], [0.2, 0.2, 1.0], [0.5, 0.5, 0.5]]
    net = mlp_from([(w1, [0.1, 0.2, 0.3, 0.1]), ([[1.0, -1.0, 0.5, 0.2], [0.5, 1.0, -1.0, 0.3]], [0.0, 0.0])])
    stable = find_stable_neurons(net)
    merged = compress(net, stable)
    assert merged.widths_after == [3, 2]
    kept = compress(net, stable, merge_linear="never")
    assert kept.widths_after == [3, 3, 2]  # 4 active rows in R^3: rank 3, one folded
    smaller = compress(net, stable, merge_linear="if_smaller")
    assert smaller.widths_after == [3, 2]  # 6 weights instead of 9 + 6
    for r in (merged, kept, smaller):
        assert max_diff(net, r.model, 3) < 1e-5
    with pytest.raises(PrunelabError, match="merge_linear"):
        compress(net, stable, merge_linear="sometimes")


def test_all_dead_layer_gives_constant_network():
    net = mlp_from([([[-1.0, -2.0], [-0.5, -0.1]], [-0.1, -0.2]), ([[1.0, 2.0], [3.0, 4.0]], [0.5, -0.5])])
    stable = find_stable_neurons(net)
    result = compress(net, stable)
    assert result.widths_after == [2, 2] and result.connections_after == 0
    x = torch.rand(5, 2)
    torch.testing.assert_close(result.model(x), torch.tensor([[0.5, -0.5]]).expand(5, 2))


def test_trained_mlp_compresses_exactly():
    net, x = trained_sparse_mlp()
    stable = find_stable_neurons(net, data=x)
    result = compress(net, stable, data=x)
    assert result.verified and result.n_points == 10_000 + len(x)
    assert result.neurons_after < result.neurons_before
    assert result.connections_after < result.connections_before
    assert result.model[1].weight.dtype == torch.float32
    # independent check on fresh points of the domain (and the data): same outputs, same classes
    pts = torch.cat([torch.rand(10_000, 4, generator=torch.Generator().manual_seed(7)), x])
    with torch.no_grad():
        a, b = net(pts), result.model(pts)
    assert float((a - b).abs().max()) < 1e-4
    assert torch.equal(a.argmax(1), b.argmax(1))
    row = result.to_row()
    assert row["connections_removed"] == result.connections_before - result.connections_after
    assert 0 < row["connections_removed_fraction"] < 1


def test_masks_are_part_of_the_analysed_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    masks = {"1.weight": torch.rand(8, 3) > 0.5, "3.weight": torch.ones(2, 8, dtype=torch.bool)}
    stable = find_stable_neurons(net, masks=masks)
    result = compress(net, stable)
    masked = nn.Sequential(nn.Flatten(), nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    masked.load_state_dict(net.state_dict())
    with torch.no_grad():
        masked[1].weight.mul_(masks["1.weight"])
    assert max_diff(masked, result.model, 3) < 1e-5


def test_a_wrong_stability_claim_is_caught():
    net, x = trained_sparse_mlp()
    stable = find_stable_neurons(net, data=x)
    layer = stable.layers[0]
    i = layer.unstable[0]
    layer.status[i] = "inactive"  # lie: delete a unit that is active on part of the domain
    with pytest.raises(PrunelabError, match="does not match"):
        compress(net, stable, data=x)


def test_model_must_be_the_analysed_one():
    net, x = trained_sparse_mlp()
    stable = find_stable_neurons(net, data=x)
    other, _ = trained_sparse_mlp(seed=4)
    with pytest.raises(PrunelabError, match="differs"):
        compress(other, stable)
    with pytest.raises(PrunelabError, match="outside"):
        compress(net, stable, data=x + 2.0)
    with pytest.raises(PrunelabError, match="inside the domain"):
        compress(net, stable, domain=(-1.0, 1.0))


def test_basis_reconstructs_dependent_rows():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 6))
    rows = np.vstack([base, 2 * base[0] - base[2], np.zeros(6), base[1] * 0.5])
    basis, dep, k = _basis(rows)
    assert len(basis) == 3 and len(dep) == 3
    np.testing.assert_allclose(k @ rows[basis], rows[dep], atol=1e-10)


def test_save_and_load_roundtrip(tmp_path):
    net, x = trained_sparse_mlp()
    result = compress(net, find_stable_neurons(net, data=x))
    path = tmp_path / "compressed.safetensors"
    save_compressed(path, result)
    loaded = load_compressed(path)
    assert [lay.weight.shape for lay in linears(loaded)] == [lay.weight.shape for lay in linears(result.model)]
    assert max_diff(loaded, result.model, 4) == 0.0
    with pytest.raises(PrunelabError, match="not a compressed MLP"):
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(1)}, tmp_path / "other.safetensors")
        load_compressed(tmp_path / "other.safetensors")
