"""Effective sparsity (Vysogorets & Kempe, 2023) against an independent brute-force path search.

The brute force builds an explicit graph whose nodes are neurons / (channel, row, col) activations and
whose edges are kept weights (labelled by the weight they use), then marks a weight effective iff one
of its edges starts at a node reachable from an input and ends at a node that reaches an output.
"""

from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.analysis.effective import effective_masks, effective_report, effective_sparsity
from prunelab.errors import PrunelabError

# --------------------------------------------------------------------------------------------------
# Brute force: explicit graph + two BFS


class PathGraph:
    """Nodes are ints; ``edges`` are (src, dst, label) with label (mask key, index) or None."""

    def __init__(self) -> None:
        self.count = 0
        self.edges: list[tuple[int, int, tuple | None]] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []

    def new(self, shape: tuple[int, ...]) -> np.ndarray:
        ids = np.arange(self.count, self.count + int(np.prod(shape))).reshape(shape)
        self.count += ids.size
        return ids

    def input(self, shape: tuple[int, ...]) -> np.ndarray:
        ids = self.new(shape)
        self.inputs += ids.ravel().tolist()
        return ids

    def linear(self, x: np.ndarray, mask: torch.Tensor, key: str) -> np.ndarray:
        mask = mask.numpy()
        out = self.new((mask.shape[0],))
        for o, i in itertools.product(range(mask.shape[0]), range(mask.shape[1])):
            if mask[o, i]:
                self.edges.append((int(x[i]), int(out[o]), (key, (o, i))))
        return out

    def conv(self, x: np.ndarray, mask: torch.Tensor, key: str, stride: int, padding: int) -> np.ndarray:
        mask = mask.numpy()
        cout, cin, kh, kw = mask.shape
        _, h, w = x.shape
        oh, ow = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
        out = self.new((cout, oh, ow))
        for o, c, a, b, i, j in itertools.product(range(cout), range(cin), range(kh), range(kw), range(oh), range(ow)):
            r, s = i * stride - padding + a, j * stride - padding + b
            if 0 <= r < h and 0 <= s < w and mask[o, c, a, b]:
                self.edges.append((int(x[c, r, s]), int(out[o, i, j]), (key, (o, c, a, b))))
        return out

    def channel_scale(self, x: np.ndarray, keep: torch.Tensor, key: str | None) -> np.ndarray:
        out = self.new(x.shape)
        for c in range(x.shape[0]):
            if bool(keep[c]):
                for src, dst in zip(x[c].ravel(), out[c].ravel()):
                    self.edges.append((int(src), int(dst), (key, (c,)) if key else None))
        return out

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = self.new(a.shape)
        for src_arr in (a, b):
            for src, dst in zip(src_arr.ravel(), out.ravel()):
                self.edges.append((int(src), int(dst), None))
        return out

    def max_pool(self, x: np.ndarray, k: int) -> np.ndarray:
        c, h, w = x.shape
        out = self.new((c, h // k, w // k))
        for ch, i, j, a, b in itertools.product(range(c), range(h // k), range(w // k), range(k), range(k)):
            self.edges.append((int(x[ch, i * k + a, j * k + b]), int(out[ch, i, j]), None))
        return out

    def global_pool(self, x: np.ndarray) -> np.ndarray:
        out = self.new((x.shape[0],))
        for ch in range(x.shape[0]):
            for src in x[ch].ravel():
                self.edges.append((int(src), int(out[ch]), None))
        return out

    def effective(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fwd = self._reach(self.inputs, forward=True)
        bwd = self._reach(self.outputs, forward=False)
        result = {k: torch.zeros_like(m) for k, m in masks.items()}
        for src, dst, label in self.edges:
            if label is not None and fwd[src] and bwd[dst]:
                result[label[0]][label[1]] = True
        return result

    def _reach(self, start: list[int], forward: bool) -> list[bool]:
        adj: list[list[int]] = [[] for _ in range(self.count)]
        for src, dst, _ in self.edges:
            (adj[src] if forward else adj[dst]).append(dst if forward else src)
        seen = [False] * self.count
        queue = deque(start)
        for s in start:
            seen[s] = True
        while queue:
            node = queue.popleft()
            for nxt in adj[node]:
                if not seen[nxt]:
                    seen[nxt] = True
                    queue.append(nxt)
        return seen


def bn_keep(bn: nn.BatchNorm2d, masks: dict[str, torch.Tensor], key: str) -> tuple[torch.Tensor, str | None]:
    keep = bn.weight.detach() != 0
    if key in masks:
        return keep & masks[key], key
    return keep, None


# --------------------------------------------------------------------------------------------------
# Models with their brute-force graphs


def make_mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def brute_mlp(model: nn.Sequential, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = PathGraph()
    linears = [(n, m) for n, m in model.named_children() if isinstance(m, nn.Linear)]
    x = g.input((linears[0][1].in_features,))
    for name, _ in linears:
        x = g.linear(x, masks[f"{name}.weight"], f"{name}.weight")
    g.outputs = x.tolist()
    return g.effective(masks)


class PlainConvNet(nn.Module):
    """conv-BN-relu, conv-BN (+ identity residual), relu, max-pool 2 (5x5 -> 2x2 drops a row and a
    column), conv (padding 1), flatten, two Linear layers; F.relu / torch.relu calls in forward."""

    def __init__(self, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(3, 2, 3, padding=1)
        self.fc1 = nn.Linear(2 * 2 * 2, 4)
        self.fc2 = nn.Linear(4, 3)
        self.input_shape = (2, 5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(x))
        if self.residual:
            y = y + x
        y = self.pool(torch.relu(y))
        y = torch.flatten(F.relu(self.conv3(y)), 1)
        return self.fc2(F.relu(self.fc1(y)))

    def brute(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        g = PathGraph()
        x = g.input(self.input_shape)
        x = g.conv(x, masks["conv1.weight"], "conv1.weight", 1, 1)
        x = g.channel_scale(x, *bn_keep(self.bn1, masks, "bn1.weight"))
        y = g.conv(x, masks["conv2.weight"], "conv2.weight", 1, 1)
        y = g.channel_scale(y, *bn_keep(self.bn2, masks, "bn2.weight"))
        if self.residual:
            y = g.add(y, x)
        y = g.max_pool(y, 2)
        y = g.conv(y, masks["conv3.weight"], "conv3.weight", 1, 1).reshape(-1)
        y = g.linear(y, masks["fc1.weight"], "fc1.weight")
        g.outputs = g.linear(y, masks["fc2.weight"], "fc2.weight").tolist()
        return g.effective(masks)


class ProjectionResNet(nn.Module):
    """Stem conv, a stride-2 block with a 1x1-conv + BN projection shortcut, an identity block,
    global average pooling and a classifier (a miniature ResNet-18 stage)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(2)
        self.a1 = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False)
        self.abn1 = nn.BatchNorm2d(3)
        self.a2 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.abn2 = nn.BatchNorm2d(3)
        self.proj = nn.Conv2d(2, 3, 1, stride=2, bias=False)
        self.pbn = nn.BatchNorm2d(3)
        self.b1 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bbn1 = nn.BatchNorm2d(3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 4)
        self.input_shape = (1, 6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.abn1(self.a1(x)))
        x = torch.relu(self.abn2(self.a2(y)) + self.pbn(self.proj(x)))
        x = torch.relu(self.bbn1(self.b1(x)) + x)
        return self.fc(torch.flatten(self.pool(x), 1))

    def brute(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        g = PathGraph()
        x = g.input(self.input_shape)
        x = g.channel_scale(g.conv(x, masks["stem.weight"], "stem.weight", 1, 1), *bn_keep(self.bn0, masks, "bn0.weight"))
        y = g.channel_scale(g.conv(x, masks["a1.weight"], "a1.weight", 2, 1), *bn_keep(self.abn1, masks, "abn1.weight"))
        y = g.channel_scale(g.conv(y, masks["a2.weight"], "a2.weight", 1, 1), *bn_keep(self.abn2, masks, "abn2.weight"))
        s = g.channel_scale(g.conv(x, masks["proj.weight"], "proj.weight", 2, 0), *bn_keep(self.pbn, masks, "pbn.weight"))
        x = g.add(y, s)
        y = g.channel_scale(g.conv(x, masks["b1.weight"], "b1.weight", 1, 1), *bn_keep(self.bbn1, masks, "bbn1.weight"))
        x = g.global_pool(g.add(y, x))
        g.outputs = g.linear(x, masks["fc.weight"], "fc.weight").tolist()
        return g.effective(masks)


def random_masks(model: nn.Module, density: float, gen: torch.Generator, bn_masks: bool = False) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if name.endswith("weight") and (p.dim() > 1 or bn_masks):
            d = 0.7 if p.dim() == 1 else density
            out[name] = torch.rand(p.shape, generator=gen) < d
    return out


def assert_same(got, want) -> None:
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), f"{k}: got {got[k].int().tolist()} want {want[k].int().tolist()}"


# --------------------------------------------------------------------------------------------------
# Agreement with the brute force


def test_mlp_matches_brute_force_on_50_random_masks():
    gen = torch.Generator().manual_seed(0)
    disconnected = 0
    for trial in range(50):
        widths = [int(w) for w in torch.randint(2, 7, (int(torch.randint(3, 6, (1,), generator=gen)),), generator=gen)]
        model = make_mlp(widths)
        density = 0.15 + 0.7 * float(torch.rand(1, generator=gen))
        masks = random_masks(model, density, gen)
        want = brute_mlp(model, masks)
        got = effective_masks(model, masks)
        assert_same(got, want)
        disconnected += sum(int(masks[k].sum() - want[k].sum()) for k in masks)
    assert disconnected > 20  # the masks really did disconnect weights, so the test has teeth


@pytest.mark.parametrize("residual", [False, True])
def test_conv_net_matches_brute_force_on_random_masks(residual):
    gen = torch.Generator().manual_seed(1 + residual)
    torch.manual_seed(0)
    model = PlainConvNet(residual)
    disconnected = 0
    for trial in range(25):
        with torch.no_grad():  # some trials zero a BatchNorm weight: that channel is cut
            for bn in (model.bn1, model.bn2):
                bn.weight.copy_((torch.rand(3, generator=gen) > 0.2).float())
        masks = random_masks(model, 0.1 + 0.5 * float(torch.rand(1, generator=gen)), gen, bn_masks=trial % 3 == 0)
        want = model.brute(masks)
        got = effective_masks(model, masks)
        assert_same(got, want)
        disconnected += sum(int(masks[k].sum() - want[k].sum()) for k in masks)
    assert disconnected > 20


def test_projection_resnet_matches_brute_force_on_random_masks():
    gen = torch.Generator().manual_seed(3)
    model = ProjectionResNet()
    disconnected = 0
    for trial in range(25):
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.copy_((torch.rand(m.num_features, generator=gen) > 0.15).float())
        masks = random_masks(model, 0.1 + 0.5 * float(torch.rand(1, generator=gen)), gen, bn_masks=trial % 4 == 0)
        want = model.brute(masks)
        assert_same(effective_masks(model, masks), want)
        disconnected += sum(int(masks[k].sum() - want[k].sum()) for k in masks)
    assert disconnected > 20


# --------------------------------------------------------------------------------------------------
# Hand-made cases


def tiny_mlp() -> tuple[nn.Sequential, dict[str, torch.Tensor]]:
    model = make_mlp([3, 3, 2])  # keys 1.weight (3x3), 3.weight (2x3)
    masks = {"1.weight": torch.ones(3, 3, dtype=torch.bool), "3.weight": torch.ones(2, 3, dtype=torch.bool)}
    return model, masks


def test_neuron_without_inputs_makes_its_outgoing_weights_ineffective():
    model, masks = tiny_mlp()
    masks["1.weight"][1, :] = False  # hidden neuron 1 has no input (only its bias, which is not an input)
    eff = effective_masks(model, masks)
    assert torch.equal(eff["1.weight"], masks["1.weight"])
    want = torch.tensor([[True, False, True], [True, False, True]])
    assert torch.equal(eff["3.weight"], want)
    assert effective_sparsity(model, masks) == pytest.approx(5 / 15)


def test_neuron_without_outputs_makes_its_incoming_weights_ineffective():
    model, masks = tiny_mlp()
    masks["3.weight"][:, 2] = False  # hidden neuron 2 feeds nothing
    eff = effective_masks(model, masks)
    want = torch.tensor([[True] * 3, [True] * 3, [False] * 3])
    assert torch.equal(eff["1.weight"], want)
    assert torch.equal(eff["3.weight"], masks["3.weight"])


def test_conv_weight_that_only_sees_padding_is_ineffective():
    # On a 1x1 input with padding 1, only the centre tap of a 3x3 kernel ever multiplies the input.
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2, 1))
    masks = {"0.weight": torch.ones(2, 1, 3, 3, dtype=torch.bool), "3.weight": torch.ones(1, 2, dtype=torch.bool)}
    eff = effective_masks(model, masks, input_shape=(1, 1, 1))
    centre = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    centre[:, :, 1, 1] = True
    assert torch.equal(eff["0.weight"], centre)
    # On a 2x2 input every tap sees a real pixel for some output position: all effective.
    eff2 = effective_masks(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(8, 1)),
                           {"0.weight": torch.ones(2, 1, 3, 3, dtype=torch.bool)}, input_shape=(1, 2, 2))
    assert bool(eff2["0.weight"].all())


def test_conv_tap_that_only_feeds_positions_no_pooling_window_reads_is_ineffective():
    # 1x2 input, 1x2 kernel with padding (0, 1): output column j reads input columns j-1 (tap 0) and j
    # (tap 1). A (1,1) max-pool with stride 3 reads output column 0 only, where tap 0 sees padding.
    model = nn.Sequential(nn.Conv2d(1, 1, (1, 2), padding=(0, 1)), nn.MaxPool2d((1, 1), stride=(1, 3)),
                          nn.Flatten(), nn.Linear(1, 1))
    masks = {"0.weight": torch.ones(1, 1, 1, 2, dtype=torch.bool)}
    assert effective_masks(model, masks, input_shape=(1, 1, 2))["0.weight"].view(-1).tolist() == [False, True]


def test_max_pool_passes_every_live_input_not_just_the_argmax():
    # 1x1 input, 1x2 kernel with padding (0, 1): output column 0 uses only tap 1, column 1 only tap 0.
    # Both columns are live (value 1); a real max-pool would send the gradient to one of them only.
    model = nn.Sequential(nn.Conv2d(1, 1, (1, 2), padding=(0, 1)), nn.MaxPool2d((1, 2)), nn.Flatten(), nn.Linear(1, 1))
    masks = {"0.weight": torch.ones(1, 1, 1, 2, dtype=torch.bool)}
    assert bool(effective_masks(model, masks, input_shape=(1, 1, 1))["0.weight"].all())


class FunctionalPoolNet(nn.Module):
    """The same net as ``module_pool_net`` but with functional pooling and a ``view`` flatten."""

    def __init__(self, adaptive: bool) -> None:
        super().__init__()
        self.adaptive = adaptive
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 2 * 2, 2)
        self.input_shape = (2, 5, 5)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = F.adaptive_max_pool2d(x, 2) if self.adaptive else F.max_pool2d(x, 2)
        return self.fc(x.view(x.size(0), -1))


@pytest.mark.parametrize("adaptive", [False, True])
def test_functional_pooling_matches_pooling_modules(adaptive):
    functional = FunctionalPoolNet(adaptive)
    pool = nn.AdaptiveMaxPool2d(2) if adaptive else nn.MaxPool2d(2)
    modules = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), pool, nn.Flatten(), nn.Linear(12, 2))
    gen = torch.Generator().manual_seed(4)
    for _ in range(10):
        m = {"conv.weight": torch.rand(3, 2, 3, 3, generator=gen) < 0.3, "fc.weight": torch.rand(2, 12, generator=gen) < 0.3}
        got = effective_masks(functional, m)
        want = effective_masks(modules, {"0.weight": m["conv.weight"], "4.weight": m["fc.weight"]}, input_shape=(2, 5, 5))
        assert torch.equal(got["conv.weight"], want["0.weight"]) and torch.equal(got["fc.weight"], want["4.weight"])
    if not adaptive:  # the 5x5 map's last row/column is never pooled: brute-force check of one case
        g = PathGraph()
        x = g.conv(g.input((2, 5, 5)), m["conv.weight"], "conv.weight", 1, 1)
        g.outputs = g.linear(g.max_pool(x, 2).reshape(-1), m["fc.weight"], "fc.weight").tolist()
        assert_same(got, g.effective(m))


def test_dead_unit_counts_in_report():
    model = make_mlp([4, 3, 3, 2])  # keys 1.weight (3x4), 3.weight (3x3), 5.weight (2x3)
    masks = {k: torch.ones_like(p, dtype=torch.bool) for k, p in model.named_parameters() if k.endswith("weight")}
    masks["1.weight"][0, :] = False  # layer-1 unit 0: no input
    masks["3.weight"][:, 1] = False  # layer-1 unit 1: no output
    masks["5.weight"][:, 2] = False  # layer-2 unit 2: no output
    rep = effective_report(model, masks)
    rows = {l.name: l for l in rep.layers}
    assert (rows["1.weight"].dead_units, rows["1.weight"].no_input, rows["1.weight"].no_output) == (2, 1, 1)
    # layer 2: unit 2 has no output; units 0, 1 still get unit 2 of layer 1 -> alive
    assert (rows["3.weight"].dead_units, rows["3.weight"].no_input, rows["3.weight"].no_output) == (1, 0, 1)
    assert rows["5.weight"].dead_units == 0
    assert rep.dead_units == 3
    # effective counts by hand: layer 1 keeps only unit 2's row (4); layer 2: rows 0, 1 from col 2 (2);
    # layer 3: columns 0, 1 (4)
    assert [rows[k].effective_kept for k in ("1.weight", "3.weight", "5.weight")] == [4, 2, 4]
    row = rep.to_row()
    assert row["total_weights"] == 12 + 9 + 6
    assert row["direct_kept"] == 8 + 6 + 4
    assert row["effective_kept"] == 10
    assert row["effective_sparsity"] == pytest.approx(1 - 10 / 27)
    assert row["effective_compression"] == pytest.approx(27 / 10)
    assert row["dead_units"] == 3


def test_batchnorm_zero_or_masked_weight_cuts_the_channel():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2, 1))
    masks = {"0.weight": torch.ones(2, 1, 1, 1, dtype=torch.bool), "4.weight": torch.ones(1, 2, dtype=torch.bool)}
    with torch.no_grad():
        model[1].weight[0] = 0.0  # channel 0 is a constant (its BN bias) afterwards
    eff = effective_masks(model, masks, input_shape=(1, 1, 1))
    assert eff["0.weight"].view(-1).tolist() == [False, True]
    assert eff["4.weight"].view(-1).tolist() == [False, True]
    with torch.no_grad():
        model[1].weight.fill_(1.0)
    masks["1.weight"] = torch.tensor([True, False])  # a masked BN weight cuts channel 1
    eff = effective_masks(model, masks, input_shape=(1, 1, 1))
    assert eff["0.weight"].view(-1).tolist() == [True, False]
    assert eff["1.weight"].tolist() == [True, False]


def test_identity_shortcut_keeps_weights_effective_when_the_residual_branch_is_cut():
    model = ProjectionResNet()
    masks = {k: torch.ones_like(p, dtype=torch.bool) for k, p in model.named_parameters() if p.dim() > 1}
    masks["b1.weight"][:] = False  # the whole branch of the identity block is pruned
    eff = effective_masks(model, masks)
    for k in masks:
        if k != "b1.weight":
            assert bool(eff[k].all()), k
    masks["fc.weight"][:] = False  # no output at all: nothing is effective
    assert effective_sparsity(model, masks) == 1.0


def test_deep_dense_network_has_no_overflow():
    # 60 dense layers of width 64: float path counts reach 64**60 ~ 1e108 (inf in float32 and nearly
    # so in float64 for wider nets); the boolean pass keeps values in {0, 1} and finds every weight.
    torch.manual_seed(0)
    model = make_mlp([64] * 61)
    masks = {k: torch.ones_like(p, dtype=torch.bool) for k, p in model.named_parameters() if k.endswith("weight")}
    x = torch.ones(1, 64)
    for k in masks:
        x = x @ torch.ones(64, 64)  # what a SynFlow-style path count with |W| = 1 would compute
    assert torch.isinf(x).all()
    assert effective_sparsity(model, masks) == 0.0
    masks["1.weight"][:, 5] = False  # input 5 is now disconnected: only those 64 weights drop out
    assert effective_sparsity(model, masks) == pytest.approx(64 / (60 * 64 * 64))


# --------------------------------------------------------------------------------------------------
# Invariants, return types and input checks


def test_zoo_resnet_invariants():
    models = pytest.importorskip("prunelab.models")
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, input_shape=(3, 8, 8))  # option-A pad shortcuts
    gen = torch.Generator().manual_seed(0)
    masks = {k: torch.rand(p.shape, generator=gen) < 0.05 for k, p in model.named_parameters() if p.dim() > 1}
    eff = effective_masks(model, masks)
    for k in masks:
        assert not bool((eff[k] & ~masks[k]).any())  # effective weights are kept weights
    assert effective_masks(model, eff) == eff  # idempotent: effective weights lie on effective paths
    rep = effective_report(model, masks)
    assert rep.effective_sparsity > rep.direct_sparsity
    dense = {k: torch.ones_like(m) for k, m in masks.items()}
    assert effective_sparsity(model, dense) == 0.0


def test_returns_masks_with_same_keys_and_accepts_01_float_masks():
    model, masks = tiny_mlp()
    out = effective_masks(model, {k: v.float() for k, v in masks.items()})
    assert list(out) == list(masks)
    assert all(v.dtype == torch.bool for v in out.values())
    try:
        from prunelab.masks import Masks
    except ImportError:
        return
    assert isinstance(out, Masks)


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = nn.Linear(2, 2)

    def forward(self, x):
        return self.a(x) * torch.sigmoid(self.b(x))


class Sorted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)

    def forward(self, x):
        return torch.sort(self.a(x), dim=-1).values


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.a(x)
        return x


@pytest.mark.parametrize(
    "model, masks, kwargs, match",
    [
        (make_mlp([2, 2]), {"1.bias": torch.ones(2, dtype=torch.bool)}, {}, "not the weight"),
        (make_mlp([2, 2]), {"9.weight": torch.ones(2, 2, dtype=torch.bool)}, {}, "not a parameter"),
        (make_mlp([2, 2]), {"1.weight": torch.ones(3, 2, dtype=torch.bool)}, {}, "shape"),
        (make_mlp([2, 2]), {"1.weight": torch.full((2, 2), 0.5)}, {}, "0/1"),
        (make_mlp([2, 2]), {}, {}, "empty"),
        (make_mlp([2, 2]), {"1.weight": torch.ones(2, 2, dtype=torch.bool)}, {"input_shape": (0,)}, "positive"),
        (make_mlp([2, 2]), {"1.weight": torch.ones(2, 2, dtype=torch.bool)}, {"input_shape": (3,)}, "does not fit"),
        (nn.Sequential(nn.Conv2d(1, 1, 1)), {"0.weight": torch.ones(1, 1, 1, 1, dtype=torch.bool)}, {}, "input_shape"),
        # products of activations and LayerNorm are supported now (tests/analysis/test_effective_general.py);
        # an op with no connectivity rule is still refused, naming it
        (Sorted(), {"a.weight": torch.ones(2, 2, dtype=torch.bool)}, {}, "sort"),
        (Branchy(), {"a.weight": torch.ones(2, 2, dtype=torch.bool)}, {}, "torch.fx"),
    ],
)
def test_bad_input_raises_prunelab_error(model, masks, kwargs, match):
    with pytest.raises(PrunelabError, match=match):
        effective_masks(model, masks, **kwargs)
