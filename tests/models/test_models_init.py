"""``init="torch"``: PyTorch's default initialisers instead of He (the CBS/WoodFisher MLPNet's start)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models import create


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def test_torch_init_draws_uniform_within_one_over_sqrt_fan_in():
    torch.manual_seed(0)
    model = create("mlpnet", init="torch")
    for w in _weights(model):
        bound = 1.0 / math.sqrt(w.shape[1])
        assert float(w.abs().max()) <= bound + 1e-7
        # U(-b, b) has std b / sqrt(3); He's N(0, 2 / fan_in) would be sqrt(6) ~ 2.45x that
        assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.1 if w.numel() > 1000 else 0.3)


def test_he_stays_the_default_and_is_larger():
    torch.manual_seed(0)
    he = _weights(create("mlpnet"))[0]
    assert float(he.std()) == pytest.approx(math.sqrt(2 / 784), rel=0.05)
    assert float(he.abs().max()) > 1.0 / 28  # outside torch's bound: the two really differ


def test_torch_init_on_a_conv_bn_net_resets_biases_and_norms():
    torch.manual_seed(1)
    model = create("vgg11", input_shape=(3, 32, 32), init="torch")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    c = convs[1]
    fan_in = c.in_channels * c.kernel_size[0] * c.kernel_size[1]
    assert float(c.weight.detach().abs().max()) <= 1 / math.sqrt(fan_in) + 1e-7
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_torch_init_is_deterministic_per_seed():
    torch.manual_seed(3)
    a = _weights(create("lenet300", init="torch"))
    torch.manual_seed(3)
    b = _weights(create("lenet300", init="torch"))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("bad", ["xavier", 1, None])
def test_unknown_init_is_one_line_naming_the_choices(bad):
    with pytest.raises(PrunelabError, match=r"init must be one of 'he', 'torch'"):
        create("mlpnet", init=bad)
