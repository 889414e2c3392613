"""models.create: the registry, option and shape checks, recorded attributes, He initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunelab import models
from prunelab.errors import PrunelabError
from prunelab.models import MODELS, create, he_init_

torch.set_num_threads(1)

STANDARD_INPUT = {
    "mlp": (1, 28, 28),
    "lenet300": (1, 28, 28),
    "mlpnet": (1, 28, 28),
    "lenet5": (1, 28, 28),
    "vgg11": (3, 32, 32),
    "vgg13": (3, 32, 32),
    "vgg16": (3, 32, 32),
    "vgg19": (3, 32, 32),
    "resnet20": (3, 32, 32),
    "resnet32": (3, 32, 32),
    "resnet56": (3, 32, 32),
    "resnet18": (3, 32, 32),
    "vgg_scaled": (3, 32, 32),
}
OPTIONS = {"mlp": {"widths": [20, 10]}}


def test_registry_holds_the_whole_zoo():
    assert MODELS.names() == sorted(STANDARD_INPUT)


def test_every_docstring_names_its_parameter_count():
    for name in MODELS.names():
        doc = MODELS.get(name).__doc__ or ""
        assert "Parameters" in doc or "parameters" in doc, name
        assert any(year in doc for year in ("1998", "2015", "2016", "2022")), name


def test_unknown_model_lists_valid_names():
    with pytest.raises(PrunelabError, match=r"unknown model 'resnet99'; valid: .*resnet20.*vgg16"):
        create("resnet99")


def test_names_are_case_insensitive():
    torch.manual_seed(0)
    assert isinstance(create("LeNet300"), nn.Sequential)


@pytest.mark.parametrize("name", ["lenet300", "resnet20"])
def test_unknown_option_is_named_with_allowed_ones(name):
    with pytest.raises(PrunelabError, match=r"unknown option\(s\) 'depth', 'width'; allowed: "):
        create(name, input_shape=STANDARD_INPUT[name], width=3, depth=2)


def test_option_free_model_allows_only_init():
    with pytest.raises(PrunelabError, match=r"'bias'; allowed: init$"):
        create("mlpnet", bias=True)  # MLPNet has no bias option; every model takes init


def test_missing_required_option():
    with pytest.raises(PrunelabError, match=r"model 'mlp' needs option\(s\) widths"):
        create("mlp")


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "10", None])
def test_bad_num_classes(bad):
    with pytest.raises(PrunelabError, match="num_classes must be a positive integer"):
        create("lenet300", num_classes=bad)


@pytest.mark.parametrize("bad", [(), (1, 0, 28), (1, -28, 28), 784, "1,28,28", (1.0, 28, 28), None])
def test_bad_input_shape(bad):
    with pytest.raises(PrunelabError, match="input_shape"):
        create("lenet300", input_shape=bad)


@pytest.mark.parametrize(
    "name, shape, needed",
    [
        ("resnet20", (1, 4, 4), ">= 5"),
        ("resnet56", (3, 32, 4), ">= 5"),
        ("resnet18", (3, 8, 8), ">= 9"),
        ("resnet20", (784,), ">= 5"),
        ("vgg16", (1, 28, 28), ">= 32"),
        ("vgg11", (3, 32, 31), ">= 32"),
        ("vgg19", (3072,), ">= 32"),
        ("lenet5", (1, 15, 15), ">= 16"),
        ("lenet5", (784,), r"\(C, H, W\)"),
    ],
)
def test_shape_mismatch_says_what_the_model_needs(name, shape, needed):
    with pytest.raises(PrunelabError, match=rf"model '{name}' needs image inputs.*{needed}.*got input_shape"):
        create(name, input_shape=shape)


def test_smallest_accepted_images_run():
    # the bounds in the messages above are tight: one pixel more works and gives a finite output
    torch.manual_seed(0)
    for name, shape in [("resnet20", (1, 5, 5)), ("resnet18", (3, 9, 9)), ("vgg11", (1, 32, 32)), ("lenet5", (1, 16, 16))]:
        model = create(name, num_classes=3, input_shape=shape).eval()
        out = model(torch.randn(2, *shape))
        assert out.shape == (2, 3) and torch.isfinite(out).all(), name


@pytest.mark.parametrize("name", ["vgg11", "resnet20"])
def test_bad_option_values(name):
    key = "batch_norm" if name.startswith("vgg") else "shortcut"
    with pytest.raises(PrunelabError, match=rf"{name} {key} must be"):
        create(name, input_shape=(3, 32, 32), **{key: "yes"})


def test_attributes_recorded_and_list_shape_becomes_tuple():
    torch.manual_seed(0)
    model = create("lenet5", num_classes=7, input_shape=[3, 32, 32])
    assert model.input_shape == (3, 32, 32) and isinstance(model.input_shape, tuple)
    assert model.num_classes == 7
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


def test_models_are_cpu_float32_trainable_and_in_training_mode():
    torch.manual_seed(0)
    for name in ["mlp", "lenet5", "resnet20"]:
        model = create(name, input_shape=STANDARD_INPUT[name], **OPTIONS.get(name, {}))
        assert model.training
        for pname, p in model.named_parameters():
            assert p.device.type == "cpu" and p.dtype == torch.float32 and p.requires_grad, pname
            assert torch.isfinite(p).all(), pname


def _expected_he_weights(model: nn.Module, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Independent account of create's randomness: one N(0, 2/fan_in) draw per weight, layer by layer."""
    torch.manual_seed(seed)
    expected = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            fan_in = module.in_features
        elif isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        else:
            continue
        expected[f"{name}.weight"] = torch.empty(module.weight.shape).normal_(0.0, math.sqrt(2.0 / fan_in))
    return expected, torch.rand(3)


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "resnet20", "vgg11"])
def test_create_draws_exactly_one_he_normal_per_weight(name):
    torch.manual_seed(123)
    model = create(name, input_shape=STANDARD_INPUT[name])
    after = torch.rand(3)  # the generator moved by exactly the weight draws, nothing else
    expected, expected_after = _expected_he_weights(model, 123)
    params = dict(model.named_parameters())
    assert expected, name
    for key, value in expected.items():
        assert torch.equal(params[key].detach(), value), key
    assert torch.equal(after, expected_after)
    for key, p in params.items():  # everything else is deterministic: zero biases, identity BatchNorm
        if key in expected:
            continue
        module = model.get_submodule(key.rsplit(".", 1)[0])
        want = 1.0 if isinstance(module, nn.BatchNorm2d) and key.endswith("weight") else 0.0
        assert torch.all(p == want), key
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.running_mean == 0) and torch.all(module.running_var == 1)
            assert int(module.num_batches_tracked) == 0


def test_same_seed_same_model_other_seed_other_model():
    def state(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return create("resnet20", input_shape=(3, 32, 32)).state_dict()

    a, b, c = state(5), state(5), state(6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_he_std_on_a_large_layer():
    torch.manual_seed(0)
    model = create("vgg16", input_shape=(3, 32, 32))
    w = model.features[-4].weight  # last conv: 512 * 512 * 9 weights
    assert isinstance(model.features[-4], nn.Conv2d)
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / (512 * 9)), rel=0.01)
    assert abs(w.mean().item()) < 0.01 * w.std().item()


def test_he_init_refuses_unknown_parameterised_modules():
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    with pytest.raises(PrunelabError, match=r"module '1' is a LayerNorm"):
        he_init_(net)


def test_package_exports():
    for name in ["create", "MODELS", "BasicBlock", "PadShortcut", "ResNet", "VGG", "build_mlp", "he_init_"]:
        assert hasattr(models, name), name
