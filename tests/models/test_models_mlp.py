"""The fully connected models: exact structure, hand-counted parameters, forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelab.analysis.affine import mlp_layers, widths
from prunelab.errors import PrunelabError
from prunelab.models import create

torch.set_num_threads(1)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet300_count_on_mnist():
    torch.manual_seed(0)
    model = create("lenet300")
    assert n_params(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610


def test_lenet300_without_bias():
    torch.manual_seed(0)
    assert n_params(create("lenet300", bias=False)) == 784 * 300 + 300 * 100 + 100 * 10 == 266_200


def test_mlpnet_is_784_40_20_10_without_bias():
    torch.manual_seed(0)
    model = create("mlpnet")
    assert n_params(model) == 784 * 40 + 40 * 20 + 20 * 10 == 32_360
    assert all(m.bias is None for m in model if isinstance(m, nn.Linear))
    assert widths(mlp_layers(model)) == [784, 40, 20, 10]


def test_mlp_structure_is_flatten_linear_relu_linear():
    torch.manual_seed(0)
    model = create("mlp", num_classes=5, input_shape=(3, 4, 4), widths=[30, 20, 10])
    assert type(model) is nn.Sequential
    kinds = [type(m) for m in model]
    assert kinds == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [n for n, _ in model.named_parameters()] == [
        "1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias", "7.weight", "7.bias"
    ]
    assert widths(mlp_layers(model)) == [48, 30, 20, 10, 5]
    assert n_params(model) == 48 * 30 + 30 + 30 * 20 + 20 + 20 * 10 + 10 + 10 * 5 + 5


def test_mlp_without_hidden_layers_is_logistic_regression():
    torch.manual_seed(0)
    model = create("mlp", num_classes=7, input_shape=(60,), widths=[])
    assert [type(m) for m in model] == [nn.Flatten, nn.Linear]
    assert n_params(model) == 60 * 7 + 7


def test_mlp_forward_matches_the_affine_layers():
    # independent forward pass: x -> relu(W x + b) ... in float64 from mlp_layers
    torch.manual_seed(1)
    model = create("mlp", num_classes=4, input_shape=(2, 3, 5), widths=[9, 6])
    x = torch.randn(8, 2, 3, 5)
    h = x.reshape(8, -1).double()
    for layer in mlp_layers(model):
        h = h @ layer.weight.T + layer.bias
        if layer.relu:
            h = h.clamp_min(0)
    out = model(x)
    assert out.shape == (8, 4)
    assert torch.allclose(out.double(), h, atol=1e-5)


def test_mlp_accepts_a_tuple_of_widths():
    torch.manual_seed(0)
    assert widths(mlp_layers(create("mlp", input_shape=(10,), widths=(4, 3)))) == [10, 4, 3, 10]


@pytest.mark.parametrize(
    "bad, match",
    [
        ([0], r"mlp width \(widths=\[0\]\) must be a positive integer, got 0"),
        ([300, -1], "got -1"),
        ([1.5], "got 1.5"),
        ([True], "got True"),
        ("300,100", "widths must be a list of positive integers"),
        (300, "widths must be a list of positive integers"),
        (None, "widths must be a list of positive integers"),
    ],
)
def test_bad_widths(bad, match):
    with pytest.raises(PrunelabError, match=match):
        create("mlp", widths=bad)


def test_bad_bias():
    with pytest.raises(PrunelabError, match="mlp bias must be True or False, got 'no'"):
        create("mlp", widths=[3], bias="no")
