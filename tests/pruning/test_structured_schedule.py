"""The ``structured`` schedule: options, layer plans, and a real training run with its pruning events."""

from types import SimpleNamespace

import pytest
import torch

from prunelab import models
from prunelab.errors import PrunelabError
from prunelab.experiments.config import PruneConfig
from prunelab.masks import Masks
from prunelab.pruning import SCHEDULES
from prunelab.pruning.schedules import ScheduleContext
from prunelab.pruning.structured import kept_units
from prunelab.pruning.structured_schedule import LayerPlan, StructuredOptions, options_of, structured
from prunelab.train import TrainConfig, fit


def test_registered_with_typed_options():
    assert "structured" in SCHEDULES
    opts = SCHEDULES.parse_options("structured", {"target": "largest", "layers": [
        {"layer": "a", "fraction": 0.3, "start": 1, "end": 17}]})
    assert isinstance(opts, StructuredOptions) and opts.layers[0].layer == ["a"]
    with pytest.raises(PrunelabError, match="unknown option 'rate'"):
        SCHEDULES.parse_options("structured", {"rate": 0.1})
    with pytest.raises(PrunelabError, match="target"):
        SCHEDULES.parse_options("structured", {"target": "middle"})
    with pytest.raises(PrunelabError, match="unknown structured criterion 'L3'"):
        SCHEDULES.parse_options("structured", {"score": "L3"})
    assert SCHEDULES.parse_options("structured", {"score": "L1"}).score == "l1"
    # a run config stores only what differs from the defaults
    p = PruneConfig(schedule="Structured", schedule_options={"target": "smallest", "period": 7})
    assert p.schedule == "structured" and p.schedule_options == {"period": 7}


def test_layer_plans_are_checked():
    with pytest.raises(PrunelabError, match="before start"):
        SCHEDULES.parse_options("structured", {"layers": [{"layer": "a", "fraction": 0.3, "start": 5, "end": 2}]})
    with pytest.raises(PrunelabError, match="fraction"):
        SCHEDULES.parse_options("structured", {"layers": [{"layer": "a", "fraction": 1.0, "start": 0, "end": 2}]})
    with pytest.raises(PrunelabError, match="two plans"):
        SCHEDULES.parse_options("structured", {"layers": [{"layer": ["a", "b"], "fraction": 0.3, "start": 0, "end": 2},
                                                           {"layer": "b", "fraction": 0.3, "start": 0, "end": 2}]})
    with pytest.raises(PrunelabError, match="at least one module"):
        SCHEDULES.parse_options("structured", {"layers": [{"layer": [], "fraction": 0.3, "start": 0, "end": 2}]})


def test_layer_schedules_and_nominal_rate():
    opts = StructuredOptions(period=7, layers=[
        LayerPlan(layer=["features.15", "features.18"], fraction=0.3, start=1, end=17),
        LayerPlan(layer="features.25", fraction=0.6, start=2, end=33),
        LayerPlan(layer="features.22", fraction=0.3, start=2, end=17, period=1),
    ])
    scheds = {s.layer: s for s in opts.layer_schedules()}
    assert scheds["features.15"].epochs() == [1, 8, 15] and scheds["features.18"].period == 7
    assert scheds["features.25"].epochs() == [2, 9, 16, 23, 30]
    assert scheds["features.22"].period == 1 and len(scheds["features.22"].epochs()) == 16
    assert opts.events_per_layer() == {"features.15": 3, "features.18": 3, "features.25": 5, "features.22": 16}
    # 0.3 / 3 = 0.1, 0.6 / 5 = 0.12, 0.3 / 16
    assert opts.nominal_rate() == pytest.approx(0.12)
    assert StructuredOptions().nominal_rate() == 0.0


def test_options_of_reads_ctx_options():
    ctx = SimpleNamespace()
    assert options_of(ctx, "structured") == StructuredOptions()
    ctx.options = {"target": "random"}
    assert options_of(ctx, "structured").target == "random"
    ctx.options = StructuredOptions(period=3)
    assert options_of(ctx, "structured").period == 3


def _data(n_train=64, n_test=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, 6, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return SimpleNamespace(x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])


def _ctx(options, epochs=4, eval_every=0):
    torch.manual_seed(0)
    model = models.create("mlp", num_classes=4, input_shape=(6,), widths=[10, 8])
    train = TrainConfig(epochs=epochs, lr=0.05, batch_size=16, device="cpu", eval_every=eval_every, seed=3)

    def no_dense():
        raise AssertionError("the structured schedule trains from initialisation")

    ctx = ScheduleContext(model=model, data=_data(), train=train, finetune=train, sparsity=0.9,
                          prune_fn=lambda *a: (_ for _ in ()).throw(AssertionError("no unstructured pruning")),
                          dense=no_dense, fit=fit, progress=False)
    ctx.options = options
    return ctx


def test_trains_with_pruning_events_and_returns_weight_masks():
    # layer "1" (10 units): 50% over the events at the end of 0-based epochs 0 and 2 (5 kept after the last)
    # layer "3" (8 units): 25% at the end of epoch 1 only -> 6 kept
    ctx = _ctx({"target": "largest", "period": 2, "layers": [
        {"layer": "1", "fraction": 0.5, "start": 0, "end": 3},
        {"layer": "3", "fraction": 0.25, "start": 1, "end": 1}]})
    res = SCHEDULES.get("structured")(ctx)
    assert [r["stage"] for r in res.history] == ["train"] * 4
    # every epoch evaluated (eval_every option 1 overrides the config's 0)
    assert all(r["test_acc"] is not None for r in res.history)
    events = [r["epoch"] for r in res.history if r.get("instability") is not None]
    assert events == [1, 2, 3]  # 1-based epochs of the events at 0-based 0, 1 (layer 3), 2
    assert [e["epoch"] for e in res.events] == [1, 2, 3] and all(e["stage"] == "structured" for e in res.events)
    assert set(res.masks) == set(Masks.ones(ctx.model))
    kept1 = int(res.masks["1.weight"].all(dim=1).sum())
    kept3 = int(res.masks["3.weight"].all(dim=1).sum())
    assert kept1 == kept_units(10, 0.5, 2, 2) == 5 and kept3 == kept_units(8, 0.25, 1, 1) == 6
    assert res.masks["5.weight"].all()  # the classifier is never pruned
    # removed rows are zero in the trained model (and their biases)
    w, b = ctx.model.get_submodule("1").weight, ctx.model.get_submodule("1").bias
    off = ~res.masks["1.weight"].all(dim=1)
    assert torch.all(w[off] == 0) and torch.all(b[off] == 0)
    # the first event removed 10 - kept_units(10, 0.5, 1, 2) of layer 1's units
    assert res.events[0]["max_unit_fraction"] == pytest.approx((10 - kept_units(10, 0.5, 1, 2)) / 10)


def test_no_layers_is_the_unpruned_baseline():
    ctx = _ctx({"layers": []}, epochs=2)
    res = structured(ctx)
    assert res.events == [] and res.masks.sparsity() == 0.0
    assert all(r.get("instability") is None for r in res.history)


def test_eval_every_none_keeps_the_training_config():
    ctx = _ctx({"eval_every": None, "layers": [{"layer": "1", "fraction": 0.5, "start": 0, "end": 0}]}, epochs=3)
    res = structured(ctx)
    assert [r["test_acc"] is not None for r in res.history] == [False, False, True]
    assert res.history[0]["instability"] is not None


def test_a_plan_ending_after_training_is_an_error():
    ctx = _ctx({"layers": [{"layer": "1", "fraction": 0.5, "start": 0, "end": 9}]}, epochs=3)
    with pytest.raises(PrunelabError, match="after training ends"):
        structured(ctx)
