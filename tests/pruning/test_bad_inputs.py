"""Bad input to ``prunelab.prune`` and ``validate_allocation``: one table, one row per bad call.

Each row is (id, call, expected): ``call(model)`` makes the bad call on a fresh ``mlp()`` (or ignores
it), ``expected`` is the exact message (a str) or a regex (``re.compile``) that must match all of it.
Every row must raise :class:`PrunelabError` -- nothing else, no traceback from inside torch -- with a
one-line message, and must leave the model's weights as they were (the checks run before any work).
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import prunelab
import prunelab.models
from prunelab.errors import PrunelabError
from prunelab.pruning import CRITERIA, Masks, ScoreContext, as_batches
from prunelab.pruning.allocation import ExplicitAllocation, validate_allocation

LAYERS = "1.weight, 3.weight, 5.weight"  # mlp(): 120 + 80 + 24 = 224 prunable weights
CRITERIA_LIST = "cbs, grasp, lamp, magnitude, random, snip, synflow, upa, woodfisher"
ALLOCATIONS_LIST = "erk, global, igq, lr_bound, lr_bound_hidden, nm, uniform, uniform_plus"
ZERO = "data for criterion {!r} has 0 samples: give at least one (inputs, targets) batch with at least one sample"
NEEDS = "criterion {!r} is data-dependent: pass data=(inputs, targets) or an iterable of such batches to prunelab.prune"
# small Fisher settings so woodfisher/cbs would run on the 16 samples if the data were fine
FISHER = {"fisher_samples": 4, "fisher_batch": 1}


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))


def conv() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    net.input_shape = (3, 8, 8)  # type: ignore[assignment]
    return net


def named_net() -> nn.Module:
    return nn.Sequential(OrderedDict((f"fc{i}", nn.Linear(2, 2)) for i in range(1, 6)))


def xy(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)


X, Y = xy()
P = prunelab.prune


def prune_with(criterion: str, data: Any, **kw: Any) -> Callable[[nn.Module], Any]:
    opts = FISHER if criterion in ("woodfisher", "cbs") else None
    return lambda m: P(m, 0.5, criterion, data=data, options=opts, **kw)


Row = tuple[str, Callable[[nn.Module], Any], "str | re.Pattern[str]"]

ROWS: list[Row] = [
    # --- sparsity -------------------------------------------------------------------------------
    ("sparsity str", lambda m: P(m, "0.5"), "sparsity must be a number in [0, 1) (fraction of weights removed), got '0.5'"),
    ("sparsity nan", lambda m: P(m, float("nan")), "sparsity must be a number in [0, 1) (fraction of weights removed), got nan"),
    ("sparsity inf", lambda m: P(m, float("inf")), "sparsity must be a number in [0, 1) (fraction of weights removed), got inf"),
    ("sparsity None", lambda m: P(m, None), "sparsity must be a number in [0, 1) (fraction of weights removed), got None"),
    ("sparsity bool", lambda m: P(m, True), "sparsity must be a number in [0, 1) (fraction of weights removed), got True"),
    ("sparsity 1.0", lambda m: P(m, 1.0), "sparsity must be in [0, 1) (fraction of weights removed), got 1.0"),
    ("sparsity negative", lambda m: P(m, -0.1), "sparsity must be in [0, 1) (fraction of weights removed), got -0.1"),
    ("effective sparsity 1.0", lambda m: P(m, 1.0, sparsity_kind="effective"),
     "target effective sparsity must be a number in [0, 1), got 1.0"),
    # --- names ----------------------------------------------------------------------------------
    ("unknown criterion", lambda m: P(m, 0.5, "magnitud"), f"unknown criterion 'magnitud'; valid: {CRITERIA_LIST}"),
    ("criterion not a name", lambda m: P(m, 0.5, 3),
     f"criterion must be a name ({CRITERIA_LIST}) or a function, got 3"),
    ("unknown allocation", lambda m: P(m, 0.5, allocation="globall"),
     f"unknown allocation 'globall'; valid: {ALLOCATIONS_LIST}"),
    ("allocation not a name", lambda m: P(m, 0.5, allocation=["global"]),
     f"allocation must be a name ({ALLOCATIONS_LIST}) or a function, got ['global']"),
    ("unknown update", lambda m: P(m, 0.5, update="nope"), "unknown update 'nope'; valid: cbs, obs"),
    ("sparsity_kind", lambda m: P(m, 0.5, sparsity_kind="eff"), "sparsity_kind 'eff' is not one of: direct, effective"),
    # --- model and masks --------------------------------------------------------------------------
    ("model not a module", lambda m: P("model", 0.5), "model must be a torch.nn.Module, got str"),
    ("no prunable layer", lambda m: P(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), 0.5),
     ("model Sequential has no prunable layer (include=None, exclude=()); by default the weights of "
     "Linear and Conv1d/2d/3d layers are prunable")),
    ("everything excluded", lambda m: P(m, 0.5, exclude=("*",)),
     ("model Sequential has no prunable layer (include=None, exclude=('*',)); by default the weights of "
     "Linear and Conv1d/2d/3d layers are prunable")),
    ("masks of another model (names)", lambda m: P(m, 0.5, masks=Masks.ones(named_net())),
     (f"mask 'fc1.weight' (and 4 more: 'fc2.weight', 'fc3.weight', 'fc4.weight', ...) names no parameter of the "
     f"model; prunable parameters: {LAYERS}")),
    ("one mask of another model", lambda m: P(m, 0.5, masks={**Masks.ones(m), "fc9.weight": torch.ones(2, 2, dtype=torch.bool)}),
     f"mask 'fc9.weight' names no parameter of the model; prunable parameters: {LAYERS}"),
    ("masks of another model (shapes)",
     lambda m: P(m, 0.5, masks=Masks.ones(nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4)))),
     "mask '3.weight' has shape (4, 10) but the parameter has shape (8, 10)"),
    ("mask of wrong shape", lambda m: P(m, 0.5, masks={"3.weight": torch.ones(8, 12, dtype=torch.bool)}),
     "mask '3.weight' has shape (8, 12) but the parameter has shape (8, 10)"),
    ("float mask", lambda m: P(m, 0.5, masks={"1.weight": torch.ones(10, 12)}),
     "mask '1.weight' must be a torch.bool tensor, got torch.float32"),
    ("masks not a mapping", lambda m: P(m, 0.5, masks=[torch.ones(3, dtype=torch.bool)]),
     "masks must be a mapping of name -> bool tensor, got list"),
    ("empty masks", lambda m: P(m, 0.5, masks={}), "masks= is empty: there is nothing to prune"),
    ("masks and exclude", lambda m: P(m, 0.5, masks=Masks.ones(m), exclude=("1",)),
     "give either masks= or include=/exclude=, not both (masks already say what is prunable)"),
    ("less sparsity than the masks", lambda m: P(m, 0.1, masks=P(copy.deepcopy(m), 0.5)),
     re.compile(r"sparsity 0\.1 is below the sparsity the given masks already have \(0\.50+\); pruned weights are never revived")),
    # --- counts, options, functions -----------------------------------------------------------------
    ("iterations 0", lambda m: P(m, 0.5, iterations=0), "iterations must be a positive integer, got 0"),
    ("iterations str", lambda m: P(m, 0.5, iterations="3"), "iterations must be a positive integer, got '3'"),
    ("iterations float", lambda m: P(m, 0.5, iterations=2.0), "iterations must be a positive integer, got 2.0"),
    ("options['iterations'] 0", lambda m: P(m, 0.5, "synflow", options={"iterations": 0}),
     "invalid options of criterion 'synflow': iterations=0: Input should be greater than 0"),
    ("options misspelt", lambda m: P(m, 0.5, "synflow", options={"iteratons": 3}),
     "unknown option 'iteratons' for criterion 'synflow' / allocation 'global'; valid: iterations"),
    ("options of another criterion", lambda m: P(m, 0.5, "magnitude", options={"temperature": 3.0}),
     "unknown option 'temperature' for criterion 'magnitude' / allocation 'global'; valid: iterations"),
    ("options not a dict", lambda m: P(m, 0.5, options=[("iterations", 2)]),
     "options must be a dict of criterion settings, got [('iterations', 2)]"),
    ("options a string", lambda m: P(m, 0.5, options="iterations=2"),
     "options must be a dict of criterion settings, got 'iterations=2'"),
    ("seed negative", lambda m: P(m, 0.5, seed=-1), "seed must be a non-negative integer, got -1"),
    ("loss_fn not callable", lambda m: P(m, 0.5, "snip", data=(X, Y), loss_fn="mse"),
     "loss_fn must be a function (outputs, targets) -> scalar loss, got 'mse'"),
    # --- explicit per-layer allocations ---------------------------------------------------------------
    ("allocation unknown layer", lambda m: P(m, 0.5, allocation={"fc1": 0.5}),
     f"explicit allocation names layer 'fc1', which is not prunable; layers: {LAYERS}"),
    ("allocation unknown layers", lambda m: P(m, 0.5, allocation={"fc1": 0.5, "1": 0.5, "fc2.weight": 0.1}),
     f"explicit allocation names layers 'fc1', 'fc2.weight', which are not prunable; layers: {LAYERS}"),
    ("allocation names a bias", lambda m: P(m, 0.5, allocation={"1.bias": 0.5}),
     f"explicit allocation names layer '1.bias', which is not prunable; layers: {LAYERS}"),
    ("allocation value 1.0", lambda m: P(m, 0.5, allocation={"1": 1.0}),
     "sparsity of layer '1' must be a number in [0, 1) (fraction of its weights removed), got 1.0"),
    ("allocation value negative", lambda m: P(m, 0.5, allocation={"1": -0.1}),
     "sparsity of layer '1' must be a number in [0, 1) (fraction of its weights removed), got -0.1"),
    ("allocation value nan", lambda m: P(m, 0.5, allocation={"1": float("nan")}),
     "sparsity of layer '1' must be a number in [0, 1) (fraction of its weights removed), got nan"),
    ("allocation value str", lambda m: P(m, 0.5, allocation={"1": "0.5"}),
     "sparsity of layer '1' must be a number in [0, 1) (fraction of its weights removed), got '0.5'"),
    ("allocation key not str", lambda m: P(m, 0.5, allocation={1: 0.5}),
     "explicit allocation keys must be layer names, got 1"),
    ("allocation empty", lambda m: P(m, 0.5, allocation={}),
     "an explicit allocation must be a non-empty mapping layer -> sparsity, got {}"),
    ("allocation layer twice", lambda m: P(m, 0.5, allocation={"1": 0.5, "1.weight": 0.6}),
     "explicit allocation gives layer '1.weight' twice (as '1' and '1.weight')"),
    ("allocation lists all, wrong total", lambda m: P(m, 0.9, allocation={"1": 0.5, "3": 0.5, "5": 0.5}),
     "the explicit allocation lists every layer and implies overall sparsity 0.500000, not 0.9; pass sparsity=0.500000"),
    ("allocation listed keep too many", lambda m: P(m, 0.9, allocation={"1": 0.0}),
     ("the explicit allocation keeps 120 weights in the listed layers (1.weight), more than the 22 that sparsity "
     "0.9 keeps overall even with the unlisted layers (3.weight, 5.weight) emptied: raise the listed sparsities "
     "or lower the overall sparsity")),
    ("allocation unlisted cannot fill", lambda m: P(m, 0.1, allocation={"1": 0.9}),
     ("the explicit allocation keeps 12 weights in the listed layers (1.weight); reaching sparsity 0.1 (202 kept) would need "
     "the unlisted layers (3.weight, 5.weight) to keep 190 weights, but they hold only 104: lower the listed "
     "sparsities or raise the overall sparsity")),
    ("allocation iterative", lambda m: P(m, 0.5, allocation={"1": 0.5}, iterations=2),
     ("an explicit per-layer allocation is one-shot, but 2 rounds were asked for (iterations / options['iterations'] "
     "/ an iterative criterion): pass iterations=1")),
    # --- data: none, 0 samples ------------------------------------------------------------------------
    *[(f"{c} without data", prune_with(c, None), NEEDS.format(c)) for c in ("snip", "grasp", "upa", "woodfisher", "cbs")],
    ("obs update without data", lambda m: P(m, 0.5, update="obs"), NEEDS.format("obs")),
    *[(f"{c} with 0 samples", prune_with(c, (X[:0], Y[:0])), ZERO.format(c))
      for c in ("snip", "grasp", "upa", "woodfisher", "cbs")],
    ("snip with an empty list", prune_with("snip", []), ZERO.format("snip")),
    ("snip with 0-sample batches", prune_with("snip", [(X[:0], Y[:0]), (X[:0], Y[:0])]), ZERO.format("snip")),
    ("snip effective with 0 samples", prune_with("snip", (X[:0], Y[:0]), sparsity_kind="effective"), ZERO.format("snip")),
    ("snip with one empty batch", prune_with("snip", [(X, Y), (X[:0], Y[:0])]),
     "data: batch 1 of 2 has 0 samples; every batch needs at least one (a mean loss over 0 samples is NaN)"),
    # --- data: malformed ---------------------------------------------------------------------------------
    ("data not pairs", prune_with("snip", "not data"),
     "data must be an (inputs, targets) pair of tensors or an iterable of such pairs, got str"),
    ("data a tensor", prune_with("snip", X),
     "data must be an (inputs, targets) pair of tensors or an iterable of such pairs, got Tensor"),
    ("data triples", prune_with("snip", [(X, Y, Y)]),
     "data must be an (inputs, targets) pair of tensors or an iterable of such pairs, got list"),
    *[(f"{c} wrong feature shape", prune_with(c, (torch.randn(16, 10), Y)),
       "data: inputs have shape (16, 10) but the model takes (12,) per sample: give inputs of shape (N, 12)")
      for c in ("snip", "grasp", "upa", "woodfisher", "cbs")],
    ("conv: wrong image shape", lambda m: P(conv(), 0.5, "snip", data=(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))),
     "data: inputs have shape (4, 1, 8, 8) but the model takes (3, 8, 8) per sample: give inputs of shape (N, 3, 8, 8)"),
    ("zoo lenet5: CIFAR images", lambda m: P(prunelab.models.create("lenet5"), 0.5, "snip",
                                            data=(torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))),
     "data: inputs have shape (2, 3, 32, 32) but the model takes (1, 28, 28) per sample: give inputs of shape (N, 1, 28, 28)"),
    ("batches of different shapes", prune_with("snip", [(X, Y), (torch.randn(4, 10), Y[:4])]),
     ("data: batch 1 has inputs of shape (4, 10) but batch 0 has per-sample shape (12,); every batch must have the "
     "same per-sample shape")),
    ("inputs 0-d", prune_with("snip", (torch.tensor(1.0), torch.tensor(1))),
     ("data: the inputs of the batch are a 0-d tensor; inputs must be (N, *input_shape) and targets (N, ...), "
     "the batch dimension first")),
    ("int inputs", prune_with("snip", (X.long(), Y)),
     re.compile(re.escape("data: inputs have dtype torch.int64 but the model's weights are torch.float32: convert "
                          "the inputs (torch: ") + r"[^\n]*dtype[^\n]*\)")),
    ("float64 inputs", prune_with("snip", (X.double(), Y)),
     re.compile(re.escape("data: inputs have dtype torch.float64 but the model's weights are torch.float32: convert "
                          "the inputs (torch: ") + r"[^\n]*dtype[^\n]*\)")),
    ("NaN inputs", prune_with("snip", [(X, Y), (torch.full((2, 12), float("nan")), Y[:2])]),
     "data: the inputs of batch 1 contain NaN or inf"),
    *[(f"{c} x/y length mismatch", prune_with(c, (X, Y[:10])),
       "data: the batch has 16 inputs but 10 targets (shapes (16, 12) and (10,)); they must have the same length")
      for c in ("snip", "grasp", "upa", "woodfisher", "cbs")],
    ("x/y mismatch in batch 1", prune_with("snip", [(X, Y), (X[:4], Y[:3])]),
     "data: batch 1 has 4 inputs but 3 targets (shapes (4, 12) and (3,)); they must have the same length"),
    *[(f"{c} labels too large", prune_with(c, (X, Y + 3)),
       "data: labels must be class indices in 0..2 (the model has 3 outputs), got labels from 3 to 5")
      for c in ("snip", "grasp", "upa", "woodfisher", "cbs")],
    ("negative labels", prune_with("snip", (X, Y - 1)),
     "data: labels must be class indices in 0..2 (the model has 3 outputs), got labels from -1 to 1"),
    ("ignore_index labels", prune_with("snip", (X, torch.full_like(Y, -100))),
     "data: labels must be class indices in 0..2 (the model has 3 outputs), got labels from -100 to -100"),
    ("labels out of range in a later batch", prune_with("snip", [(X[:8], Y[:8]), (X[8:], Y[8:] * 0 + 7)]),
     "data: labels must be class indices in 0..2 (the model has 3 outputs), got labels from 0 to 7"),
    *[(f"{c} float labels", prune_with(c, (X, Y.float())),
       ("data: the targets of the batch have dtype torch.float32; the default cross-entropy loss needs integer class "
       "labels (int64) in 0..2: convert them (y.long()) or pass loss_fn="))
      for c in ("snip", "grasp", "upa", "woodfisher", "cbs")],
    ("bool labels", prune_with("snip", (X, Y > 0)),
     ("data: the targets of the batch have dtype torch.bool; the default cross-entropy loss needs integer class "
     "labels (int64) in 0..2: convert them (y.long()) or pass loss_fn=")),
    ("one-hot labels", prune_with("snip", (X, nn.functional.one_hot(Y, 3))),
     ("data: the targets of the batch have shape (16, 3), but for model outputs of shape (N, 3) cross-entropy "
     "needs class indices of shape (16,)")),
    ("column labels", prune_with("snip", (X, Y[:, None])),
     ("data: the targets of the batch have shape (16, 1), but for model outputs of shape (N, 3) cross-entropy "
     "needs class indices of shape (16,)")),
    ("1-d model output", lambda m: P(nn.Sequential(nn.Linear(12, 1), nn.Flatten(0)), 0.5, "snip", data=(X, Y)),
     ("data: the model's output for 2 inputs has shape (2,); the default cross-entropy loss needs logits of shape "
     "(N, C): pass loss_fn= for other outputs")),
    ("magnitude is given bad data too", prune_with("magnitude", (X, Y[:10])),
     "data: the batch has 16 inputs but 10 targets (shapes (16, 12) and (10,)); they must have the same length"),
]


def _assert_one_line_error(call: Callable[[], Any], expected: str | re.Pattern[str]) -> None:
    try:
        call()
    except PrunelabError as exc:
        msg = str(exc)
    else:
        pytest.fail("no error was raised")
    assert "\n" not in msg, msg
    if isinstance(expected, str):
        assert msg == expected
    else:
        assert expected.fullmatch(msg), msg


@pytest.mark.parametrize("name, call, expected", ROWS, ids=[r[0] for r in ROWS])
def test_bad_prune_input_is_a_one_line_prunelab_error(name, call, expected):
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _assert_one_line_error(lambda: call(model), expected)
    for k, v in model.state_dict().items():  # every check runs before the model is touched
        assert torch.equal(v, before[k]), k


# --- validate_allocation: the runner calls it before dense training ------------------------------------
VALIDATE_ROWS: list[tuple[str, Callable[[], Any], str]] = [
    ("unknown name", lambda: validate_allocation(mlp(), "erkk"), f"unknown allocation 'erkk'; valid: {ALLOCATIONS_LIST}"),
    ("not an allocation", lambda: validate_allocation(mlp(), 0.5),
     f"allocation must be a name ({ALLOCATIONS_LIST}), a {{layer: sparsity}} mapping or a function, got 0.5"),
    ("unknown layer", lambda: validate_allocation(mlp(), {"fc1": 0.5, "5": 0.1}),
     f"explicit allocation names layer 'fc1', which is not prunable; layers: {LAYERS}"),
    ("excluded layer", lambda: validate_allocation(mlp(), {"5": 0.5}, exclude=("5",)),
     "explicit allocation names layer '5', which is not prunable; layers: 1.weight, 3.weight"),
    ("value 1.0", lambda: validate_allocation(mlp(), {"1": 1.0}),
     "sparsity of layer '1' must be a number in [0, 1) (fraction of its weights removed), got 1.0"),
    ("bad target sparsity", lambda: validate_allocation(mlp(), {"1": 0.5}, 1.0),
     "sparsity must be in [0, 1) (fraction of weights removed), got 1.0"),
    ("all listed, wrong total", lambda: validate_allocation(mlp(), {"1": 0.5, "3": 0.5, "5": 0.5}, 0.9),
     "the explicit allocation lists every layer and implies overall sparsity 0.500000, not 0.9; pass sparsity=0.500000"),
    ("unlisted cannot fill", lambda: validate_allocation(mlp(), {"1": 0.9}, 0.1),
     ("the explicit allocation keeps 12 weights in the listed layers (1.weight); reaching sparsity 0.1 (202 kept) would need "
     "the unlisted layers (3.weight, 5.weight) to keep 190 weights, but they hold only 104: lower the listed "
     "sparsities or raise the overall sparsity")),
    ("uniform_plus beyond its reach", lambda: validate_allocation(mlp(), "uniform_plus", 0.9),
     ("allocation 'uniform_plus' cannot reach sparsity 0.9 on these masks: it keeps at least 125 of 224 weights "
     "(max sparsity 0.442857)")),
    ("no prunable layer", lambda: validate_allocation(nn.Sequential(nn.ReLU()), "global"),
     ("model Sequential has no prunable layer (include=None, exclude=()); by default the weights of Linear and "
     "Conv1d/2d/3d layers are prunable")),
    ("masks instead of a model", lambda: validate_allocation(Masks.ones(mlp()), {"7": 0.5}),
     f"explicit allocation names layer '7', which is not prunable; layers: {LAYERS}"),
]


@pytest.mark.parametrize("name, call, expected", VALIDATE_ROWS, ids=[r[0] for r in VALIDATE_ROWS])
def test_validate_allocation_errors(name, call, expected):
    _assert_one_line_error(call, expected)


def test_validate_allocation_accepts_what_prune_accepts():
    model = mlp()
    for allocation in ("global", "ERK", "uniform_plus", "lr_bound", {"1": 0.5}, {"1.weight": 0.5, "5": 0.25}):
        assert validate_allocation(model, allocation) is None
    assert validate_allocation(model, {"1": 0.5, "3": 0.5, "5": 0.5}, 0.5) is None
    assert validate_allocation(model, "uniform_plus", 0.4) is None
    assert validate_allocation(model, {"1": 0.5}, 0.6, exclude=("5",)) is None
    assert validate_allocation(model, lambda scores, masks, sparsity, ctx=None: masks) is None
    # and the same allocation then prunes as asked
    masks = prunelab.prune(model, 0.6, allocation={"1": 0.5})
    assert masks.per_layer()["1.weight"]["kept"] == 60 and masks.num_kept() == 224 - round(0.6 * 224)


# --- the data checks are generic, up front, and reject nothing that is fine --------------------------------
def _data_dependent() -> list[str]:
    """Every registered criterion that refuses to run without data (whatever flags it carries)."""
    out = []
    for name in CRITERIA.names():
        try:
            # the Fisher options belong to the second-order criteria: any other criterion refuses them
            P(mlp(), 0.5, name, iterations=1, options=FISHER if name in ("cbs", "woodfisher") else None)
        except PrunelabError as exc:
            assert str(exc) == NEEDS.format(name)
            out.append(name)
    return out


def test_the_data_dependent_criteria_are_the_expected_ones():
    assert _data_dependent() == ["cbs", "grasp", "snip", "upa", "woodfisher"]


@pytest.mark.parametrize("name", ["cbs", "grasp", "snip", "upa", "woodfisher"])
def test_every_data_dependent_criterion_rejects_0_samples_in_the_context_too(name):
    # called directly (no prune), the criterion's own ctx.require_data refuses empty batches
    model = mlp()
    ctx = ScoreContext(batches=[(X[:0], Y[:0])], options=dict(FISHER, sparsity=0.5, allocation="global"))
    with pytest.raises(PrunelabError) as info:
        CRITERIA.get(name)(model, Masks.ones(model), ctx)
    assert str(info.value) == ZERO.format(name)


def test_a_flagged_criterion_is_refused_before_it_runs():
    calls = []

    def mine(model, masks, ctx):
        calls.append(1)
        return {n: torch.ones_like(m, dtype=torch.float32) for n, m in masks.items()}

    mine.needs_data = True  # type: ignore[attr-defined]
    _assert_one_line_error(lambda: P(mlp(), 0.5, mine), NEEDS.format("mine"))
    _assert_one_line_error(lambda: P(mlp(), 0.5, mine, data=(X[:0], Y[:0])), ZERO.format("mine"))
    assert calls == []
    P(mlp(), 0.5, mine, data=(X, Y))
    assert calls == [1]

    def my_update(model, old, new, ctx):
        calls.append(2)

    my_update.needs_data = True  # type: ignore[attr-defined]
    _assert_one_line_error(lambda: P(mlp(), 0.5, update=my_update),
                           "update 'my_update' is data-dependent: pass data=(inputs, targets) or an iterable of "
                           "such batches to prunelab.prune")
    assert calls == [1]


def test_scoring_never_starts_on_bad_data():
    calls = []

    def mine(model, masks, ctx):
        calls.append(1)
        return {n: torch.ones_like(m, dtype=torch.float32) for n, m in masks.items()}

    for data in [(torch.randn(16, 10), Y), (X, Y[:3]), (X, Y + 5), (X, Y.float())]:
        with pytest.raises(PrunelabError, match="^data: "):
            P(mlp(), 0.5, mine, data=data)
    with pytest.raises(PrunelabError, match="explicit allocation names layer 'fc1'"):
        P(mlp(), 0.5, mine, allocation={"fc1": 0.5}, data=(X, Y))
    assert calls == []


def test_integer_labels_of_any_width_give_the_same_masks():
    ref = P(mlp(), 0.7, "snip", data=(X, Y))
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert P(mlp(), 0.7, "snip", data=(X, Y.to(dtype))) == ref


def test_a_custom_loss_may_take_other_targets():
    # float regression targets of another shape are the loss's business, not cross-entropy's
    target = torch.randn(16, 3)
    masks = P(mlp(), 0.5, "snip", data=(X, target), loss_fn=nn.functional.mse_loss)
    assert masks.num_kept() == 224 - 112
    # but x/y lengths, 0 samples and input shapes are still checked
    _assert_one_line_error(lambda: P(mlp(), 0.5, "snip", data=(X, target[:4]), loss_fn=nn.functional.mse_loss),
                           "data: the batch has 16 inputs but 4 targets (shapes (16, 12) and (4, 3)); they must have "
                           "the same length")


def test_the_probe_forward_leaves_train_mode_and_buffers_alone():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(12, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from prunelab.pruning.context import check_data

    batches = check_data(model, as_batches((X, Y.int())))
    assert batches[0][1].dtype == torch.int64 and torch.equal(batches[0][1], Y)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_explicit_allocation_rejects_a_fully_pruned_layer():
    # a layer at sparsity 1.0 would cut the network: [0, 1) as for the overall sparsity
    with pytest.raises(PrunelabError, match=r"^sparsity of layer 'fc' must be a number in \[0, 1\)"):
        ExplicitAllocation({"fc": 1.0})


def test_numpy_numbers_are_numbers():
    import numpy as np

    masks = P(mlp(), np.float32(0.5), allocation={"1": np.float64(0.25)})
    assert masks.num_kept() == 112 and masks.per_layer()["1.weight"]["kept"] == 90
