"""TrainConfig validation, optimizers built from it, and learning-rate schedules."""

from __future__ import annotations

import math

import pydantic
import pytest
import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.train import TrainConfig, lr_factor, make_optimizer


def test_defaults_and_epochs_or_iterations() -> None:
    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.epochs, cfg.iterations, cfg.lr_schedule) == ("sgd", 10, None, "constant")
    it = TrainConfig(iterations=500)
    assert it.epochs is None and it.iterations == 500
    with pytest.raises(PrunelabError, match="exactly one of epochs or iterations"):
        TrainConfig.build(epochs=3, iterations=100)
    with pytest.raises(PrunelabError, match="exactly one of epochs or iterations"):
        TrainConfig.build(epochs=None)


def test_negative_lr_is_a_one_line_error_naming_the_value() -> None:
    with pytest.raises(PrunelabError) as info:
        TrainConfig.build(lr=-0.1)
    msg = str(info.value)
    assert "\n" not in msg
    assert "lr=-0.1" in msg and "positive" in msg
    with pytest.raises(PrunelabError) as direct:  # the plain constructor too, with the same line
        TrainConfig(lr=-0.1)
    assert str(direct.value) == msg
    assert not isinstance(direct.value, pydantic.ValidationError)


def test_direct_construction_raises_prunelab_errors_for_every_kind_of_bad_value() -> None:
    with pytest.raises(PrunelabError, match="unknown field 'lrr'; valid: optimizer, lr"):
        TrainConfig(lrr=0.1)
    with pytest.raises(PrunelabError, match="exactly one of epochs or iterations"):
        TrainConfig(epochs=3, iterations=100)
    with pytest.raises(PrunelabError, match="optimizer='rmsprop'"):
        TrainConfig(optimizer="rmsprop")
    # model_validate keeps pydantic's error, so configs that nest a TrainConfig collect every error
    # with its full path (not one opaque "Value error" for the whole TrainConfig)
    with pytest.raises(pydantic.ValidationError):
        TrainConfig.model_validate({"lr": -1})

    class Outer(pydantic.BaseModel):
        train: TrainConfig

    with pytest.raises(pydantic.ValidationError) as nested:
        Outer.model_validate({"train": {"lr": -1, "momentum": 2}})
    assert [e["loc"] for e in nested.value.errors()] == [("train", "lr"), ("train", "momentum")]
    assert Outer(train={"lr": 0.5}).train.lr == 0.5


@pytest.mark.parametrize(
    "field, value",
    [("lr", math.inf), ("lr", "inf"), ("lr", math.nan), ("momentum", math.nan), ("momentum", -math.inf),
     ("weight_decay", math.inf), ("weight_decay", math.nan), ("l1", math.inf), ("gamma", math.inf),
     ("warmup_epochs", math.nan), ("label_smoothing", math.nan), ("jumpstart", math.inf)],
)
def test_non_finite_floats_are_config_errors(field: str, value: object) -> None:
    with pytest.raises(PrunelabError) as info:
        TrainConfig(**{field: value})
    msg = str(info.value)
    assert "\n" not in msg and f"{field}={value!r}" in msg and "finite" in msg
    with pytest.raises(PrunelabError, match=f"{field}="):
        TrainConfig.build(**{field: value})
    cfg = TrainConfig()
    with pytest.raises(PrunelabError, match=f"{field}=.*finite"):
        setattr(cfg, field, value)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"lr": 0}, "lr=0"),
        ({"momentum": 1.0}, "momentum=1.0"),
        ({"weight_decay": -1e-4}, "weight_decay=-0.0001"),
        ({"l1": -1}, "l1=-1"),
        ({"epochs": 0}, "epochs=0"),
        ({"batch_size": -8}, "batch_size=-8"),
        ({"optimizer": "rmsprop"}, "optimizer='rmsprop'"),
        ({"lr_schedule": "linear"}, "lr_schedule='linear'"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"label_smoothing": 1.0}, "label_smoothing=1.0"),
        ({"eval_every": -1}, "eval_every=-1"),
        ({"lrr": 0.1}, "unknown field 'lrr'; valid: optimizer, lr"),
        ({"optimizer": "adam", "nesterov": True}, "nesterov=True needs optimizer='sgd'"),
        ({"momentum": 0.0, "nesterov": True}, "momentum > 0"),
        ({"lr_schedule": "step"}, "needs milestones"),
        ({"lr_schedule": "cosine", "milestones": [3]}, "only used by lr_schedule='step'"),
        ({"lr_schedule": "step", "milestones": [5, 3]}, "strictly increasing"),
        ({"lr_schedule": "step", "milestones": [3, 12], "epochs": 10}, r"milestones \[12\] are not inside"),
        ({"warmup_epochs": 10, "epochs": 10}, "warmup_epochs=10.0 must be shorter"),
    ],
)
def test_bad_values_name_field_and_value(kwargs: dict, needle: str) -> None:
    with pytest.raises(PrunelabError, match=needle):
        TrainConfig.build(**kwargs)


def test_assignment_is_validated_and_config_round_trips_json() -> None:
    cfg = TrainConfig(lr_schedule="step", milestones=[2, 4], epochs=6, augment=True, l1=1e-5)
    assert TrainConfig.model_validate_json(cfg.model_dump_json()) == cfg
    with pytest.raises(PrunelabError, match=r"lr=-1.0: lr must be a positive number"):
        cfg.lr = -1.0
    assert cfg.lr == 0.1  # a rejected assignment changes nothing
    with pytest.raises(PrunelabError, match="needs milestones"):  # rejected by the model validator
        cfg.milestones = []
    assert cfg.milestones == [2, 4] and cfg == TrainConfig.model_validate_json(cfg.model_dump_json())


def _one_weight_model() -> nn.Linear:
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    return model


def _grad_step(model: nn.Linear, opt: torch.optim.Optimizer, g: torch.Tensor) -> None:
    opt.zero_grad()
    model.weight.grad = g.clone()
    opt.step()


def test_sgd_momentum_and_nesterov_first_step_by_hand() -> None:
    g = torch.tensor([[0.5, 1.0, -1.0]])
    for nesterov, factor in ((False, 1.0), (True, 1.9)):  # nesterov: g + m * buf = (1 + m) g on step 1
        model = _one_weight_model()
        opt = make_optimizer(model, TrainConfig(lr=0.1, momentum=0.9, nesterov=nesterov))
        assert opt.param_groups[0]["nesterov"] is nesterov and opt.param_groups[0]["momentum"] == 0.9
        w0 = model.weight.detach().clone()
        _grad_step(model, opt, g)
        assert torch.allclose(model.weight, w0 - 0.1 * factor * g, atol=1e-7)
        # second step: buf = m*g + g; plain uses buf, nesterov g + m*buf
        w1 = model.weight.detach().clone()
        _grad_step(model, opt, g)
        buf = 0.9 * g + g
        step = g + 0.9 * buf if nesterov else buf
        assert torch.allclose(model.weight, w1 - 0.1 * step, atol=1e-6)


def test_adam_uses_momentum_as_beta1_and_first_step_is_lr_sign() -> None:
    model = _one_weight_model()
    opt = make_optimizer(model, TrainConfig(optimizer="adam", lr=0.01, momentum=0.8, weight_decay=1e-4))
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["betas"] == (0.8, 0.999) and opt.param_groups[0]["weight_decay"] == 1e-4
    g = torch.tensor([[0.5, 1.0, -1.0]])
    w0 = model.weight.detach().clone()
    _grad_step(model, opt, g)
    g_total = g + 1e-4 * w0  # coupled L2
    assert torch.allclose(model.weight, w0 - 0.01 * torch.sign(g_total), atol=1e-6)


def test_step_schedule_hand_values() -> None:
    cfg = TrainConfig(lr_schedule="step", milestones=[3, 6], gamma=0.1, epochs=10)
    spe, total = 5, 50
    assert lr_factor(cfg, 0, spe, total) == 1.0
    assert lr_factor(cfg, 14, spe, total) == 1.0  # last step of epoch 2
    assert lr_factor(cfg, 15, spe, total) == pytest.approx(0.1)  # first step of epoch 3
    assert lr_factor(cfg, 29, spe, total) == pytest.approx(0.1)
    assert lr_factor(cfg, 30, spe, total) == pytest.approx(0.01)
    assert lr_factor(cfg, 49, spe, total) == pytest.approx(0.01)


def test_cosine_schedule_hand_values() -> None:
    cfg = TrainConfig(lr_schedule="cosine", epochs=10)
    spe, total = 4, 40
    assert lr_factor(cfg, 0, spe, total) == 1.0
    assert lr_factor(cfg, 20, spe, total) == pytest.approx(0.5)  # epoch 5 of 10
    assert lr_factor(cfg, 10, spe, total) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)  # epoch 2.5
    assert lr_factor(cfg, 30, spe, total) == pytest.approx((1 + math.cos(3 * math.pi / 4)) / 2)
    assert lr_factor(cfg, 39, spe, total) == pytest.approx((1 + math.cos(math.pi * 39 / 40)) / 2)


def test_warmup_multiplies_schedule() -> None:
    cfg = TrainConfig(warmup_epochs=2, epochs=10)  # constant after warm-up
    spe, total = 5, 50  # W = 10 steps
    assert [lr_factor(cfg, t, spe, total) for t in (0, 4, 9, 10, 30)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    cos = TrainConfig(lr_schedule="cosine", warmup_epochs=2, epochs=10)
    assert lr_factor(cos, 4, spe, total) == pytest.approx(0.5)  # warm-up, cosine not started
    assert lr_factor(cos, 10, spe, total) == pytest.approx(1.0)  # cosine starts after warm-up
    assert lr_factor(cos, 30, spe, total) == pytest.approx(0.5)  # halfway through 40 post-warm-up steps
    step = TrainConfig(lr_schedule="step", milestones=[1], gamma=0.5, warmup_epochs=2, epochs=10)
    assert lr_factor(step, 6, spe, total) == pytest.approx(0.7 * 0.5)
