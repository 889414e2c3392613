"""Physical removal of pruned units (prunelab.pruning.compact): smaller models, the masked model's outputs.

Every test compares the compact model with the masked model on *fresh* inputs (not the example inputs
the removal was planned on) and checks the exact parameter count: by hand, and as the sparsity report
predicts it (total parameters minus the effectively pruned weights minus the pruned bias/BatchNorm
entries).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunelab.analysis.sparsity import sparsity_report
from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.models import create
from prunelab.models.vgg import VGG
from prunelab.pruning.compact import SelectPadShortcut, compact, head_masks, remove_pruned_units, unit_masks
from prunelab.pruning.structured import apply_unit_masks, channel_groups, expand_unit_masks, weight_masks


def randomise(model: nn.Module, seed: int = 5) -> None:
    """Non-trivial BatchNorm statistics / affine parameters and biases (inits are 0 / 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
            elif getattr(m, "bias", None) is not None and isinstance(m.bias, nn.Parameter):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)


def masked(model: nn.Module, masks) -> nn.Module:
    out = copy.deepcopy(model)
    Masks(masks).apply(out)
    return out.eval()


def predicted_params(model: nn.Module, masks) -> int:
    """What the sparsity report predicts: all parameters minus the weights that are not effective
    (Vysogorets & Kempe 2023; every prunable layer analysed, unmasked ones dense) minus the pruned
    entries of biases and BatchNorm parameters."""
    full = dict(Masks.ones(model))
    full.update(weight_masks(masks))
    report = sparsity_report(model, Masks(full))
    assert report.effective_kept is not None, report.effective_note
    others = sum(int((~v).sum()) for k, v in masks.items() if k not in full)
    return report.params - (report.prunable - report.effective_kept) - others


def drop_units(groups, layers, fraction: float, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in layers:
        n = groups[name].num_units
        keep = torch.ones(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=g)[: int(fraction * n)]] = False
        out[name] = keep
    return out


def assert_same(a: nn.Module, b: nn.Module, x) -> None:
    with torch.no_grad():
        ya = a(**x) if isinstance(x, dict) else a(x)
        yb = b(**x) if isinstance(x, dict) else b(x)
    if not isinstance(ya, torch.Tensor):
        ya, yb = ya[0], yb[0]
    assert ya.shape == yb.shape
    torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-5)


def test_mlp_hidden_units_removed_exact_count():
    torch.manual_seed(0)
    model = create("mlp", input_shape=(1, 6, 6), widths=[20, 16])
    randomise(model)
    groups = channel_groups(model)
    unit = drop_units(groups, ["1", "3"], 0.5)
    masks = expand_unit_masks(model, unit, groups)
    res = compact(model, masks)
    # 36 -> 10 -> 8 -> 10: weights and biases of the kept units only
    assert res.params_after == 36 * 10 + 10 + 10 * 8 + 8 + 8 * 10 + 10 == predicted_params(model, masks)
    assert res.removed == {"1": sorted(int(i) for i in torch.nonzero(~unit["1"])),
                           "3": sorted(int(i) for i in torch.nonzero(~unit["3"]))}
    assert res.kept == {}
    assert [m.out_features for m in res.model if isinstance(m, nn.Linear)] == [10, 8, 10]
    x = torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(9))
    assert_same(masked(model, masks), res.model, x)
    assert all(p.numel() for p in model.parameters()) and sum(p.numel() for p in model.parameters()) == 1246


def test_unpruned_bias_is_folded_into_the_next_linear():
    """A unit with a pruned weight row but a live bias outputs relu(b), a constant: removing it needs
    W[:, j] relu(b_j) added to the next layer's bias."""
    torch.manual_seed(0)
    model = create("mlp", input_shape=(8,), widths=[12, 10])
    randomise(model)
    keep = torch.ones(12, dtype=torch.bool)
    keep[[0, 3, 4, 9]] = False
    masks = unit_masks(model, {"1": keep}, bias=False)
    assert "1.bias" not in masks
    b = model[1].bias.detach()
    assert (b[[0, 3, 4, 9]] > 0).any() and (b[[0, 3, 4, 9]] < 0).any()  # both sides of the ReLU
    res = compact(model, masks)
    assert res.removed == {"1": [0, 3, 4, 9]}
    assert res.folded == {"3": int((b[[0, 3, 4, 9]] > 0).sum())}  # relu(b) = 0 needs no folding
    assert res.params_after == 8 * 8 + 8 + 8 * 10 + 10 + 10 * 10 + 10
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(3))
    assert_same(masked(model, masks), res.model, x)
    # without the folding the outputs would differ: the removed units' contribution is not zero
    ref = masked(model, masks)
    with torch.no_grad():
        h = torch.relu(ref[1](x))
        assert h[:, [0, 3, 4, 9]].abs().sum() > 0


def test_lenet5_folds_into_an_unpadded_conv_and_flatten():
    torch.manual_seed(0)
    model = create("lenet5", input_shape=(1, 28, 28))
    randomise(model)
    conv1, fc1 = model.get_submodule("conv1"), model.get_submodule("fc1")
    with torch.no_grad():  # constants relu(b) > 0 reach conv2 (no padding), fc1 (after a flatten) and fc2
        conv1.bias[[1, 4]] = torch.tensor([0.3, 0.8])
        model.get_submodule("conv2").bias[[0, 7]] = torch.tensor([0.5, 0.2])
        fc1.bias[0] = 0.4
    k1 = torch.ones(6, dtype=torch.bool)
    k1[[1, 4]] = False
    k2 = torch.ones(16, dtype=torch.bool)
    k2[[0, 7, 8, 15]] = False
    kf = torch.ones(120, dtype=torch.bool)
    kf[::2] = False
    masks = unit_masks(model, {"conv1": k1, "conv2": k2, "fc1": kf}, bias=False)  # biases stay
    res = compact(model, masks)
    assert res.kept == {}
    assert res.folded["conv2"] > 0 and res.folded["fc1"] > 0 and res.folded["fc2"] > 0
    c1, c2 = res.model.get_submodule("conv1"), res.model.get_submodule("conv2")
    assert (c1.out_channels, c2.in_channels, c2.out_channels) == (4, 4, 12)
    hw = fc1.in_features // 16
    assert res.model.get_submodule("fc1").in_features == 12 * hw
    expected = (4 * 1 * 25 + 4) + (12 * 4 * 25 + 12) + (60 * 12 * hw + 60) + (84 * 60 + 84) + (10 * 84 + 10)
    assert res.params_after == expected
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    assert_same(masked(model, masks), res.model, x)


def test_constant_into_a_zero_padded_conv_is_kept():
    torch.manual_seed(0)
    for padding, removed in ((1, False), (0, True)):
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=padding),
                              nn.Flatten(), nn.Linear(4 * (6 if padding else 4) ** 2, 3))
        with torch.no_grad():
            model[0].bias.fill_(0.7)  # relu(0.7) reaches the second conv
        keep = torch.ones(8, dtype=torch.bool)
        keep[[2, 5]] = False
        masks = unit_masks(model, {"0": keep}, bias=False)
        x = torch.randn(4, 3, 6, 6)
        res = compact(model, masks, x)
        assert_same(masked(model, masks), res.model, torch.randn(5, 3, 6, 6))
        if removed:
            assert res.removed == {"0": [2, 5]} and res.folded == {"2": 2}
        else:
            assert res.removed == {} and set(res.kept["0"]) == {2, 5}
            assert "zero-padded convolution 2" in res.kept["0"][2]
            assert res.params_after == res.params_before


def small_vgg11() -> VGG:
    torch.manual_seed(0)
    config = [8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64, "M"]  # VGG-11 (A) at 1/8 width
    model = VGG(config, 3, 10, batch_norm=True)
    model.input_shape = (3, 32, 32)
    return model


def test_vgg11_structured_masks():
    model = small_vgg11()
    randomise(model)
    groups = channel_groups(model)
    convs = [k for k in groups if k.startswith("features")]
    unit = drop_units(groups, convs, 0.5)
    masks = expand_unit_masks(model, unit, groups)
    res = compact(model, masks)
    assert res.kept == {}
    widths = [m.out_channels for m in res.model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [4, 8, 16, 16, 32, 32, 32, 32]
    ins = [3] + widths[:-1]
    expected = sum(o * i * 9 + o + 2 * o for o, i in zip(widths, ins)) + 32 * 10 + 10
    assert res.params_after == expected == predicted_params(model, masks)
    assert_same(masked(model, masks), res.model, torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet20_block_internal_and_stage_channels(shortcut):
    torch.manual_seed(0)
    model = create("resnet20", input_shape=(3, 8, 8), shortcut=shortcut)
    randomise(model)
    groups = channel_groups(model)
    inner = [k for k in groups if k.endswith("conv1") and k != "conv1"]
    unit = drop_units(groups, inner, 0.5)
    # stage 1's residual stream: channels 0 and 5 pruned in every layer that writes it
    stage1 = ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    for name in stage1:
        keep = torch.ones(16, dtype=torch.bool)
        keep[[0, 5]] = False
        unit[name] = keep
    masks = expand_unit_masks(model, unit, groups)
    res = compact(model, masks)
    assert res.kept == {}
    for name in stage1:
        assert res.removed[name] == [0, 5]
    assert res.model.get_submodule("layer2.0.conv1").in_channels == 14
    if shortcut == "A":
        sc = res.model.get_submodule("layer2.0.shortcut")
        assert isinstance(sc, SelectPadShortcut) and sc.in_channels == 14 and sc.out_channels == 32
        assert sc.source.tolist()[:16] == [-1, 0, 1, 2, 3, -1] + list(range(4, 14))
    else:
        assert res.model.get_submodule("layer2.0.shortcut.0").in_channels == 14
    assert res.params_after == predicted_params(model, masks)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    assert_same(masked(model, masks), res.model, x)


def test_resnet_residual_channel_pruned_in_one_block_only_is_kept():
    torch.manual_seed(0)
    model = create("resnet20", input_shape=(3, 8, 8))
    randomise(model)
    groups = channel_groups(model)
    keep = torch.ones(16, dtype=torch.bool)
    keep[[3, 9]] = False
    masks = expand_unit_masks(model, {"layer1.1.conv2": keep}, groups)
    res = compact(model, masks)
    assert res.removed == {} and res.params_after == res.params_before == 269_722
    assert set(res.kept["layer1.1.conv2"]) == {3, 9}
    assert "coupled with live unit 3 of" in res.kept["layer1.1.conv2"][3]
    assert_same(masked(model, masks), res.model, torch.randn(3, 3, 8, 8))


def test_classifier_rows_are_kept_and_model_unchanged():
    torch.manual_seed(0)
    model = create("mlp", input_shape=(5,), widths=[7])
    keep = torch.ones(10, dtype=torch.bool)
    keep[[1, 2]] = False
    masks = unit_masks(model, {"3": keep})
    res = compact(model, masks)
    assert res.removed == {} and "feeds a model output" in res.kept["3"][1]
    assert res.model[3].out_features == 10
    before = {k: v.clone() for k, v in model.state_dict().items()}
    remove_pruned_units(model, masks)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input is not changed


def test_refuses_hooks_and_bad_inputs():
    torch.manual_seed(0)
    model = create("resnet20", input_shape=(3, 8, 8))
    groups = channel_groups(model)
    keep = torch.ones(16, dtype=torch.bool)
    keep[0] = False
    masks, gates = apply_unit_masks(model, {"layer1.0.conv2": keep}, groups)
    with pytest.raises(PrunelabError, match="forward hooks .*gates.remove"):
        compact(model, masks)
    gates.remove()
    with pytest.raises(PrunelabError, match="names no parameter"):
        compact(model, {"nope.weight": torch.ones(3, dtype=torch.bool)})
    plain = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(PrunelabError, match="example_inputs"):
        compact(plain, Masks.ones(plain))
    with pytest.raises(PrunelabError, match="fails on example_inputs"):
        compact(plain, Masks.ones(plain), torch.randn(2, 5))
    with pytest.raises(PrunelabError, match="keep\\['0'\\] must be a bool tensor of shape \\(3,\\)"):
        unit_masks(plain, {"0": torch.ones(4, dtype=torch.bool)})


# --- transformers -----------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")


def tiny(kind: str):
    torch.manual_seed(0)
    if kind == "bert":
        cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                      vocab_size=50, max_position_embeddings=16)
        model = transformers.BertModel(cfg)
        names = ("encoder.layer.0.attention.self", "encoder.layer.1.intermediate.dense", 64)
    elif kind == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=16, vocab_size=50,
                                      bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(cfg)
        names = ("transformer.h.0.attn", "transformer.h.1.mlp.c_fc", 128)
    else:  # the bare transformer: its trace meets the split's outputs in another order
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=16, vocab_size=50,
                                      bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2Model(cfg)
        names = ("h.0.attn", "h.1.mlp.c_fc", 128)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):  # transformers initialises biases to 0
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval(), names


def token_inputs(model, seed: int, kind: str, n: int = 3):
    ids = torch.randint(0, 50, (n, 10), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "use_cache": False} if kind.startswith("gpt2") else {"input_ids": ids}


@pytest.mark.parametrize("kind,bias", [("bert", True), ("bert", False), ("gpt2", True), ("gpt2", False),
                                       ("gpt2-base", False)])
def test_transformer_heads_and_mlp_channels(kind, bias):
    model, (att, mlp, width) = tiny(kind)
    keep = torch.ones(width, dtype=torch.bool)
    keep[::4] = False
    masks = unit_masks(model, {mlp: keep}, head_masks(model, {att: [1, 3]}, bias=bias), bias=bias)
    res = compact(model, masks, token_inputs(model, 0, kind))
    assert res.heads_removed == {att: [1, 3]} and res.kept == {}
    head = 32 // 4
    per_head = 3 * head * (32 + 1) + head * 32  # q, k, v rows with biases; output-projection columns
    per_unit = (32 + 1) + 32  # MLP: row with bias, column of the down projection
    assert res.params_after == res.params_before - 2 * per_head - (width // 4) * per_unit
    if not bias:
        assert sum(res.folded.values()) == 2 * head + width // 4  # constant heads and channels folded
    a = res.model.get_submodule(att)
    if kind == "bert":
        assert (a.num_attention_heads, a.all_head_size, a.query.out_features) == (2, 16, 16)
    else:
        assert (a.num_heads, a.split_size, a.c_attn.nf, a.c_proj.weight.shape[0]) == (2, 16, 48, 16)
    assert_same(masked(model, masks), res.model, token_inputs(model, 1, kind))


def test_part_of_a_head_stays():
    model, (att, _, _) = tiny("bert")
    q = torch.ones(32, dtype=torch.bool)
    q[8:12] = False  # half of head 1's query rows, and nothing of its key and value
    masks = unit_masks(model, {f"{att}.query": q, f"{att}.key": q, f"{att}.value": q})
    res = compact(model, masks, token_inputs(model, 0, "bert"))
    assert res.removed == {} and res.heads_removed == {}
    assert "part of head 1" in res.kept[f"{att}.query"][8]
    q2 = q.clone()
    q2[8:16] = False
    masks = unit_masks(model, {f"{att}.query": q2})  # the whole head's queries, but keys/values live
    res = compact(model, masks, token_inputs(model, 0, "bert"))
    assert res.removed == {} and "coupled with live unit 8 of" in res.kept[f"{att}.query"][8]


def test_transformers_example_inputs_come_from_the_model_adapter():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=50, max_position_embeddings=16, num_labels=3)
    model = transformers.BertForSequenceClassification(cfg).eval()
    res = compact(model, head_masks(model, {"bert.encoder.layer.1.attention.self": [0]}))  # no example_inputs
    assert res.heads_removed == {"bert.encoder.layer.1.attention.self": [0]}
    assert res.params_after == res.params_before - (3 * 8 * 33 + 8 * 32)
    ids = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(5))
    assert_same(masked(model, head_masks(model, {"bert.encoder.layer.1.attention.self": [0]})), res.model,
                {"input_ids": ids})
