"""Effective sparsity (Vysogorets & Kempe, 2023) on general graphs: the rule of each op family.

Each hand-built model has its effective masks computed by hand in the test (docs/effective_sparsity.md
states the rules). Tiny HF BERT / GPT-2 / ViT models (built from configs, nothing downloaded) are
compared with an independent numerical check: in a float64 copy with every bias set to 0 and the
pruned weights set to 0, a kept weight is effective iff the gradient of a random combination of the
outputs with respect to it is non-zero, on a batch that uses every token id and position.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.analysis.effective import effective_masks, effective_report, effective_sparsity
from prunelab.errors import PrunelabError


def dense(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: torch.ones_like(p, dtype=torch.bool) for k, p in model.named_parameters()
            if "bias" not in k.rpartition(".")[2]}


def rows(n_rows: int, n_cols: int, live_rows: list[int]) -> torch.Tensor:
    out = torch.zeros(n_rows, n_cols, dtype=torch.bool)
    out[live_rows] = True
    return out


def cols(n_rows: int, n_cols: int, live_cols: list[int]) -> torch.Tensor:
    out = torch.zeros(n_rows, n_cols, dtype=torch.bool)
    out[:, live_cols] = True
    return out


def assert_masks(got, want: dict[str, torch.Tensor]) -> None:
    for k, v in want.items():
        assert torch.equal(got[k].reshape(v.shape), v), f"{k}: got {got[k].int().tolist()} want {v.int().tolist()}"


def numeric_effective(model: nn.Module, masks: dict[str, torch.Tensor], batch: dict, seed: int = 1,
                      positive: bool = False) -> dict[str, torch.Tensor]:
    """Independent check: d(random combination of outputs)/d(weight) != 0 in the bias-free float64
    copy with pruned weights zeroed (``positive``: |weights|, for nets with ReLU)."""
    m = copy.deepcopy(model).double().eval()
    params = dict(m.named_parameters())
    with torch.no_grad():
        for n, p in params.items():
            if "bias" in n.rpartition(".")[2]:
                p.zero_()
                continue
            if positive:
                p.abs_().mul_(0.3)
            if n in masks:
                p.mul_(masks[n].double())
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    out = m(**batch)
    outs = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else [out]
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.rand(o.shape, generator=gen, dtype=torch.float64)).sum()
               for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point())
    grads = torch.autograd.grad(loss, [params[k] for k in masks], allow_unused=True)
    return {k: masks[k] & (g != 0) if g is not None else torch.zeros_like(masks[k]) for k, g in zip(masks, grads)}


def random_masks(model: nn.Module, density: float, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.rand(p.shape, generator=gen) < (density if p.dim() > 1 else 0.8)
            for k, p in model.named_parameters() if "bias" not in k.rpartition(".")[2]}


# --------------------------------------------------------------------------------------------------
# Products of two activations: attention


class TwoHeadAttention(nn.Module):
    """3 tokens of 4 features, 2 heads of 2: rows 0-1 of q/k/v are head 0, rows 2-3 head 1."""

    def __init__(self, sdpa: bool) -> None:
        super().__init__()
        self.sdpa = sdpa
        self.q, self.k, self.v, self.o = (nn.Linear(4, 4) for _ in range(4))
        self.input_shape = (3, 4)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (lin(x).view(b, t, 2, 2).transpose(1, 2) for lin in (self.q, self.k, self.v))
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(2), dim=-1) @ v
        return self.o(a.transpose(1, 2).reshape(b, t, d))


@pytest.mark.parametrize("sdpa", [False, True])
def test_attention_head_with_pruned_queries_loses_its_keys_not_its_values(sdpa):
    # q of head 0 is 0, so its scores are 0 whatever k is and its softmax is the uniform (non-zero)
    # average: head 0's k rows are ineffective, its v rows and o columns still carry the input.
    model = TwoHeadAttention(sdpa)
    masks = dense(model)
    masks["q.weight"][0:2] = False
    eff = effective_masks(model, masks)
    assert_masks(eff, {"q.weight": rows(4, 4, [2, 3]), "k.weight": rows(4, 4, [2, 3]),
                       "v.weight": torch.ones(4, 4, dtype=torch.bool), "o.weight": torch.ones(4, 4, dtype=torch.bool)})


@pytest.mark.parametrize("sdpa", [False, True])
def test_attention_head_with_pruned_values_loses_queries_keys_and_output_columns(sdpa):
    # v of head 0 is 0: head 0's output is 0, so its attention weights multiply zero (q, k rows 0-1
    # ineffective) and o's columns 0-1 read zero.
    model = TwoHeadAttention(sdpa)
    masks = dense(model)
    masks["v.weight"][0:2] = False
    eff = effective_masks(model, masks)
    assert_masks(eff, {"q.weight": rows(4, 4, [2, 3]), "k.weight": rows(4, 4, [2, 3]),
                       "v.weight": rows(4, 4, [2, 3]), "o.weight": cols(4, 4, [2, 3])})
    assert effective_sparsity(model, masks) == pytest.approx(4 * 8 / 64)  # q, k, v rows 0-1, o columns 0-1


class MHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.input_shape = (3, 4)

    def forward(self, x):
        return self.attn(x, x, x)[0]


def test_multihead_attention_module_via_torch_export():
    # in_proj_weight rows: 0-3 q, 4-7 k, 8-11 v (head 0 = first two rows of each); fx cannot run
    # nn.MultiheadAttention's forward, torch.export decomposes it.
    model = MHA()
    masks = dense(model)
    masks["attn.in_proj_weight"][0:2] = False
    eff = effective_masks(model, masks)
    assert_masks(eff, {"attn.in_proj_weight": rows(12, 4, [2, 3, 6, 7, 8, 9, 10, 11]),
                       "attn.out_proj.weight": torch.ones(4, 4, dtype=torch.bool)})


class CausalMix(nn.Module):
    """2 tokens of 2 features; per-token values from one Linear over both tokens (row = 2 * token +
    feature); scores from the input; only token 0's output is read."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.v = nn.Linear(4, 4, bias=False)
        self.out = nn.Linear(2, 1)
        self.input_shape = (2, 2)

    def forward(self, x):
        v = self.v(x.flatten(1)).view(1, 2, 2)
        allowed = torch.ones(2, 2, dtype=torch.bool).tril()
        if self.how == "is_causal":
            a = F.scaled_dot_product_attention(x, x, v, is_causal=True)
        elif self.how == "bool_mask":
            a = F.scaled_dot_product_attention(x, x, v, attn_mask=allowed)
        elif self.how == "additive_finfo_min":
            mask = torch.full((2, 2), torch.finfo(torch.float32).min).triu(1)
            a = torch.softmax(x @ x.transpose(1, 2) + mask, -1) @ v
        elif self.how == "masked_fill_inf":
            a = torch.softmax((x @ x.transpose(1, 2)).masked_fill(~allowed, float("-inf")), -1) @ v
        else:
            a = torch.softmax(x @ x.transpose(1, 2), -1) @ v
        return self.out(a[:, 0])


@pytest.mark.parametrize("how", ["is_causal", "bool_mask", "additive_finfo_min", "masked_fill_inf", "none"])
def test_attention_masks_cut_the_masked_pairs(how):
    # token 0 attends only to itself under a causal mask: the v rows of token 1 (rows 2, 3) feed
    # nothing that is read; without a mask they feed token 0's output.
    model = CausalMix(how)
    eff = effective_masks(model, dense(model))
    want = rows(4, 4, [0, 1]) if how != "none" else torch.ones(4, 4, dtype=torch.bool)
    assert_masks(eff, {"v.weight": want, "out.weight": torch.ones(1, 2, dtype=torch.bool)})


# --------------------------------------------------------------------------------------------------
# Squeeze-excitation gates and GLUs


class SEBlock(nn.Module):
    """MobileNetV3-style: 1x1 stem + Hardswish, SE gate (pool, fc1, ReLU, fc2, gate), x * gate, head."""

    def __init__(self, gate: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 1, bias=False)
        self.fc1 = nn.Conv2d(2, 2, 1)
        self.fc2 = nn.Conv2d(2, 2, 1)
        self.gate = gate
        self.head = nn.Linear(2, 1)
        self.input_shape = (1, 2, 2)

    def forward(self, x):
        x = F.hardswish(self.stem(x))
        s = self.gate(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x * s, 1), 1))


@pytest.mark.parametrize("gate, alive", [(nn.Hardsigmoid(), True), (nn.Sigmoid(), True), (nn.ReLU(), False)])
def test_se_block_with_pruned_gate(gate, alive):
    # fc2 fully pruned: the gate is hardsigmoid(0) = 0.5 or sigmoid(0) = 0.5, a non-zero constant, so
    # x * gate keeps x's paths (fc1 only feeds fc2: ineffective). A ReLU gate is relu(0) = 0 and kills
    # the block: nothing is effective.
    model = SEBlock(gate)
    masks = dense(model)
    masks["fc2.weight"][:] = False
    eff = effective_masks(model, masks)
    full = {k: torch.full(m.shape, alive) for k, m in masks.items()}
    assert_masks(eff, {"stem.weight": full["stem.weight"], "head.weight": full["head.weight"],
                       "fc1.weight": torch.zeros(2, 2, 1, 1, dtype=torch.bool),
                       "fc2.weight": torch.zeros(2, 2, 1, 1, dtype=torch.bool)})


def test_se_block_with_a_dead_channel():
    # stem channel 1 pruned: x1 = 0, its pooled value is 0 (fc1 column 1 ineffective), x1 * gate1 = 0
    # (fc2 row 1, the gate of channel 1, is ineffective) and the head's column 1 reads 0.
    model = SEBlock(nn.Hardsigmoid())
    masks = dense(model)
    masks["stem.weight"][1] = False
    eff = effective_masks(model, masks)
    assert_masks(eff, {"stem.weight": torch.tensor([True, False]), "fc1.weight": cols(2, 2, [0]),
                       "fc2.weight": rows(2, 2, [0]), "head.weight": cols(1, 2, [0])})


def test_se_block_matches_the_numerical_check_on_random_masks():
    model = SEBlock(nn.Hardsigmoid())
    disconnected = 0
    for seed in range(12):
        masks = random_masks(model, 0.5, seed)
        want = numeric_effective(model, masks, {"x": torch.rand(3, 1, 2, 2) + 0.5}, positive=True)
        got = effective_masks(model, masks)
        assert_masks(got, want)
        disconnected += sum(int(masks[k].sum() - want[k].sum()) for k in masks)
    assert disconnected > 5


class GLUNet(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU with act = SiLU (silu(0) = 0), GLU with sigmoid."""

    def __init__(self, act) -> None:
        super().__init__()
        self.act = act
        self.gate = nn.Linear(2, 2, bias=False)
        self.up = nn.Linear(2, 2, bias=False)
        self.down = nn.Linear(2, 1, bias=False)
        self.input_shape = (2,)

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


def test_swiglu_with_pruned_gate_is_dead_and_sigmoid_glu_is_not():
    swiglu = GLUNet(F.silu)
    masks = dense(swiglu)
    masks["gate.weight"][:] = False  # silu(0) = 0: the product is 0, up and down are ineffective
    assert effective_sparsity(swiglu, masks) == 1.0
    glu = GLUNet(torch.sigmoid)  # sigmoid(0) = 0.5: up and down keep their paths
    eff = effective_masks(glu, masks)
    assert_masks(eff, {"up.weight": torch.ones(2, 2, dtype=torch.bool), "down.weight": torch.ones(1, 2, dtype=torch.bool)})


def test_swiglu_gate_unit_pruned_cuts_its_up_row_and_down_column():
    model = GLUNet(F.silu)
    masks = dense(model)
    masks["gate.weight"][0] = False
    eff = effective_masks(model, masks)
    assert_masks(eff, {"gate.weight": rows(2, 2, [1]), "up.weight": rows(2, 2, [1]), "down.weight": cols(1, 2, [1])})
    masks = dense(model)
    masks["up.weight"][1] = False  # value unit 1 is 0: its gate row is ineffective
    assert_masks(effective_masks(model, masks), {"gate.weight": rows(2, 2, [0]), "down.weight": cols(1, 2, [0])})


@pytest.mark.parametrize("functional", [False, True])
def test_glu_op_value_half_pruned_cuts_its_gate_row(functional):
    # GLU halves a (units 0, 1) and b (units 2, 3): out_i = a_i * sigmoid(b_i). Unit a_0 has no input,
    # so out_0 = 0 and b_0 (row 2) is ineffective, and down's column 0 reads 0.
    glu = (lambda t: F.glu(t, -1)) if functional else nn.GLU(-1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 4)
            self.glu = glu
            self.down = nn.Linear(2, 1)

        def forward(self, x):
            return self.down(self.glu(self.lin(x)))

    model = Net()
    masks = dense(model)
    masks["lin.weight"][0] = False
    assert_masks(effective_masks(model, masks), {"lin.weight": rows(4, 2, [1, 3]), "down.weight": cols(1, 2, [1])})


# --------------------------------------------------------------------------------------------------
# Normalisations


class NormNet(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 3)
        self.norm = norm
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


@pytest.mark.parametrize("norm, col1_alive", [(nn.LayerNorm(3), True), (nn.Identity(), False), (nn.RMSNorm(3), False)])
def test_layernorm_revives_a_unit_without_input_and_rmsnorm_does_not(norm, col1_alive):
    # hidden unit 1 has no input. LayerNorm subtracts the mean of units 0-2: unit 1 becomes -mean/std,
    # which depends on the input, so fc2's column 1 is effective. RMSNorm keeps 0 at 0 (x / rms(x)).
    model = NormNet(norm)
    masks = {"fc1.weight": rows(3, 2, [0, 2]), "fc2.weight": torch.ones(2, 3, dtype=torch.bool)}
    eff = effective_masks(model, masks)
    fc2 = torch.ones(2, 3, dtype=torch.bool)
    fc2[:, 1] = col1_alive
    assert_masks(eff, {"fc1.weight": rows(3, 2, [0, 2]), "fc2.weight": fc2})


def test_layernorm_zero_or_masked_weight_cuts_its_unit_but_not_its_inputs():
    model = NormNet(nn.LayerNorm(3))
    masks = {"fc1.weight": torch.ones(3, 2, dtype=torch.bool), "fc2.weight": torch.ones(2, 3, dtype=torch.bool)}
    with torch.no_grad():
        model.norm.weight[1] = 0.0  # unit 1 is the constant beta_1; unit 1's input still feeds the mean
    assert_masks(effective_masks(model, masks), {"fc1.weight": torch.ones(3, 2, dtype=torch.bool),
                                                 "fc2.weight": cols(2, 3, [0, 2])})
    with torch.no_grad():
        model.norm.weight.fill_(1.0)
    masks["norm.weight"] = torch.tensor([True, False, True])
    eff = effective_masks(model, masks)
    assert_masks(eff, {"fc1.weight": torch.ones(3, 2, dtype=torch.bool), "fc2.weight": cols(2, 3, [0, 2]),
                       "norm.weight": torch.tensor([True, False, True])})
    masks["fc1.weight"][:] = False  # LayerNorm of 0 is 0 (its shift is dropped): nothing is left
    assert effective_sparsity(model, masks) == 1.0


@pytest.mark.parametrize("norm, want", [(nn.GroupNorm(2, 4), [True, True, False, False]),
                                        (nn.InstanceNorm2d(4, affine=True), [True, False, False, False])])
def test_groupnorm_mixes_channels_of_a_group(norm, want):
    # only channel 0 has an input; GroupNorm(2 groups) mixes channels {0, 1} and {2, 3}: channel 1 is
    # revived, channels 2, 3 stay 0. InstanceNorm normalises each channel alone.
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 1, bias=False)
            self.norm = norm
            self.conv2 = nn.Conv2d(4, 1, 1)
            self.input_shape = (1, 2, 2)

        def forward(self, x):
            return self.conv2(self.norm(self.conv1(x))).flatten(1)

    model = Net()
    masks = {"conv1.weight": torch.tensor([True, False, False, False]).view(4, 1, 1, 1),
             "conv2.weight": torch.ones(1, 4, 1, 1, dtype=torch.bool)}
    assert_masks(effective_masks(model, masks), {"conv2.weight": torch.tensor(want)})


# --------------------------------------------------------------------------------------------------
# Parameters used directly, embeddings


class ClsNet(nn.Module):
    """2 patches of 3 features -> Linear embedding, a cls token prepended, position embeddings added,
    optionally one weight-free attention that mixes tokens; the head reads the cls token."""

    def __init__(self, mix: bool) -> None:
        super().__init__()
        self.mix = mix
        self.embed = nn.Linear(3, 2, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 2))  # zero-valued, as HF/timm initialise it
        self.pos = nn.Parameter(torch.zeros(1, 3, 2))
        self.head = nn.Linear(2, 1)
        self.input_shape = (2, 3)

    def forward(self, x):
        t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.embed(x)], dim=1) + self.pos
        if self.mix:
            t = torch.softmax(t @ t.transpose(1, 2), dim=-1) @ t
        return self.head(t[:, 0])


def test_cls_token_is_a_source():
    masks = {"embed.weight": torch.ones(2, 3, dtype=torch.bool), "head.weight": torch.ones(1, 2, dtype=torch.bool)}
    # no mixing: the head reads only the cls token (+ its position embedding), both sources; the
    # patches never reach it
    eff = effective_masks(ClsNet(mix=False), masks)
    assert_masks(eff, {"embed.weight": torch.zeros(2, 3, dtype=torch.bool), "head.weight": torch.ones(1, 2, dtype=torch.bool)})
    rep = {l.name: l for l in effective_report(ClsNet(mix=False), masks).layers}
    assert (rep["embed.weight"].units, rep["embed.weight"].dead_units, rep["embed.weight"].no_output) == (2, 2, 2)
    # attention mixes the patches into the cls token
    assert bool(effective_masks(ClsNet(mix=True), masks)["embed.weight"].all())
    # a fully pruned patch embedding leaves the head fed by the cls token and position embeddings
    masks["embed.weight"][:] = False
    assert bool(effective_masks(ClsNet(mix=True), masks)["head.weight"].all())


def test_masked_direct_parameters_and_layer_scale():
    class LayerScale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(2, 2)
            self.gamma = nn.Parameter(torch.tensor([1.0, 0.0]))
            self.fc2 = nn.Linear(2, 1)

        def forward(self, x):
            return self.fc2(self.fc1(x) * self.gamma)

    model = LayerScale()
    masks = {"fc1.weight": torch.ones(2, 2, dtype=torch.bool), "fc2.weight": torch.ones(1, 2, dtype=torch.bool)}
    # gamma_1 = 0 scales unit 1 to 0: fc1 row 1 and fc2 column 1 are ineffective
    assert_masks(effective_masks(model, masks), {"fc1.weight": rows(2, 2, [0]), "fc2.weight": cols(1, 2, [0])})
    with torch.no_grad():
        model.gamma.fill_(1.0)
    masks["gamma"] = torch.tensor([False, True])  # a masked scale cuts the same way
    eff = effective_masks(model, masks)
    assert_masks(eff, {"fc1.weight": rows(2, 2, [1]), "fc2.weight": cols(1, 2, [1]), "gamma": torch.tensor([False, True])})


class TinyLM(nn.Module):
    def __init__(self, padding_idx=None) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 3, padding_idx=padding_idx)
        self.head = nn.Linear(3, 2)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


def test_embedding_rows_are_input_units():
    model = TinyLM()
    emb = torch.ones(5, 3, dtype=torch.bool)
    emb[:, 0] = False  # feature 0 has no kept entry in any row: no token reaches it
    emb[4, 2] = False
    head = torch.ones(2, 3, dtype=torch.bool)
    head[:, 1] = False  # feature 1 reaches no output
    masks = {"emb.weight": emb, "head.weight": head}
    want_emb = torch.zeros(5, 3, dtype=torch.bool)
    want_emb[:, 2] = True
    want_emb[4, 2] = False
    want = {"emb.weight": want_emb, "head.weight": cols(2, 3, [2])}
    assert_masks(effective_masks(model, masks, input_shape=(4,)), want)  # token ids of shape (1, 4)
    # the example's ids do not matter: every row is a token that may appear at any position
    assert_masks(effective_masks(model, masks, example_input=torch.tensor([[1, 1]])), want)
    # the padding row is a fixed pad vector (not trained), not an input unit
    want_emb[0] = False
    assert_masks(effective_masks(TinyLM(padding_idx=0), masks, input_shape=(4,)), want)


def test_lookup_with_constant_indices_reads_its_rows_only():
    # position embeddings looked up with arange(T): rows T.. are never read (unlike token ids, which
    # come from the input and may be any row)
    class PosNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(4, 2)
            self.pos = nn.Embedding(5, 2)
            self.head = nn.Linear(2, 1)

        def forward(self, ids):
            return self.head((self.tok(ids) + self.pos(torch.arange(ids.shape[1]))).sum(1))

    model = PosNet()
    eff = effective_masks(model, dense(model), input_shape=(3,))
    assert_masks(eff, {"tok.weight": torch.ones(4, 2, dtype=torch.bool), "pos.weight": rows(5, 2, [0, 1, 2])})


# --------------------------------------------------------------------------------------------------
# Moving values: concat, split, permute/reshape


def test_concat_of_a_dead_and_a_live_branch():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = nn.Linear(2, 2)
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(torch.cat([self.a(x), self.b(x)], dim=-1))

    model = Net()
    masks = dense(model)
    masks["a.weight"][:] = False
    assert_masks(effective_masks(model, masks), {"b.weight": torch.ones(2, 2, dtype=torch.bool),
                                                 "head.weight": cols(1, 4, [2, 3])})


@pytest.mark.parametrize("how", ["split", "chunk", "torch.split", "slice"])
def test_split_half_that_is_never_read(how):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 4)
            self.head = nn.Linear(2, 1)

        def forward(self, x):
            h = self.lin(x)
            if how == "split":
                first, _ = h.split(2, dim=-1)
            elif how == "chunk":
                first, _ = h.chunk(2, dim=-1)
            elif how == "torch.split":
                first, _ = torch.split(h, [2, 2], dim=-1)
            else:
                first = h[:, :2]
            return self.head(F.gelu(first))

    model = Net()
    assert_masks(effective_masks(model, dense(model)), {"lin.weight": rows(4, 2, [0, 1])})


@pytest.mark.parametrize("how", ["transpose", "permute", "movedim"])
def test_permute_then_reshape_moves_units(how):
    # conv1d output (channel, position) -> (position, channel) -> flat index 2 * position + channel.
    # The Linear keeps only the entries of channel 0 (even indices): conv channel 1 is ineffective.
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(2, 2, 1)
            self.fc = nn.Linear(6, 1)
            self.input_shape = (2, 3)

        def forward(self, x):
            y = self.conv(x)
            y = y.transpose(1, 2) if how == "transpose" else y.permute(0, 2, 1) if how == "permute" else torch.movedim(y, 1, 2)
            return self.fc(y.reshape(y.shape[0], -1))

    model = Net()
    fc = torch.tensor([[True, False] * 3])
    eff = effective_masks(model, {"conv.weight": torch.ones(2, 2, 1, dtype=torch.bool), "fc.weight": fc})
    assert_masks(eff, {"conv.weight": torch.tensor([True, False]).view(2, 1, 1).expand(2, 2, 1).clone(), "fc.weight": fc})


# --------------------------------------------------------------------------------------------------
# Element-wise activations


ZERO_PRESERVING = [nn.ReLU(), nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.Tanh(), nn.Mish(), nn.ELU(), nn.LeakyReLU(),
                   nn.ReLU6(), nn.Softsign(), F.gelu, torch.tanh, F.hardswish, F.silu]
NON_ZERO_AT_ZERO = [nn.Sigmoid(), nn.Hardsigmoid(), nn.Softplus(), torch.sigmoid, F.hardsigmoid, torch.exp]


@pytest.mark.parametrize("act", ZERO_PRESERVING + NON_ZERO_AT_ZERO, ids=lambda a: getattr(a, "__name__", type(a).__name__))
def test_activation_in_a_chain_keeps_connectivity(act):
    # hidden unit 0 has no input; whatever f(0) is, the next layer's column 0 only multiplies a
    # constant (foldable into a bias): ineffective.
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(2, 2)
            self.act = act
            self.fc2 = nn.Linear(2, 1)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    model = Net()
    masks = {"fc1.weight": rows(2, 2, [1]), "fc2.weight": torch.ones(1, 2, dtype=torch.bool)}
    assert_masks(effective_masks(model, masks), {"fc2.weight": cols(1, 2, [1])})


@pytest.mark.parametrize("act", ZERO_PRESERVING + NON_ZERO_AT_ZERO, ids=lambda a: getattr(a, "__name__", type(a).__name__))
def test_activation_as_a_gate_with_pruned_input(act):
    # value(x) * f(gate(x)) with gate fully pruned: f(0) = 0 kills the value path, f(0) != 0 keeps it
    model = GLUNet(act)
    masks = dense(model)
    masks["gate.weight"][:] = False
    alive = any(act is a for a in NON_ZERO_AT_ZERO)
    assert bool(effective_masks(model, masks)["up.weight"].all()) == alive


# --------------------------------------------------------------------------------------------------
# Weights used directly (GPT-2's Conv1D), torch.export fallback, errors


class Conv1DLike(nn.Module):
    """HF GPT-2's Conv1D: y = x @ W + b with W of shape (in, out)."""

    def __init__(self, nin: int, nout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nin, nout))
        self.bias = nn.Parameter(torch.zeros(nout))

    def forward(self, x):
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], -1)


def test_weight_of_shape_in_out_used_by_addmm():
    model = nn.Sequential(Conv1DLike(3, 2), nn.ReLU(), nn.Linear(2, 1))
    masks = {"0.weight": cols(3, 2, [0]), "2.weight": torch.ones(1, 2, dtype=torch.bool)}  # output unit 1: no input
    assert_masks(effective_masks(model, masks, input_shape=(3,)), {"0.weight": cols(3, 2, [0]), "2.weight": cols(1, 2, [0])})
    rep = {l.name: l for l in effective_report(model, masks, input_shape=(3,)).layers}
    assert (rep["0.weight"].units, rep["0.weight"].dead_units, rep["0.weight"].no_input) == (2, 1, 1)


def test_transposed_conv_units_are_weight_dim_1():
    # ConvTranspose2d weight is (in, out, kh, kw): output channel 1 has no input, the Linear's columns
    # that read it (4-7 after flattening (channel, 2, 2)) are ineffective
    model = nn.Sequential(nn.ConvTranspose2d(1, 2, 2, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1))
    conv = torch.ones(1, 2, 2, 2, dtype=torch.bool)
    conv[0, 1] = False
    masks = {"0.weight": conv, "3.weight": torch.ones(1, 8, dtype=torch.bool)}
    assert_masks(effective_masks(model, masks, input_shape=(1, 1, 1)), {"3.weight": cols(1, 8, [0, 1, 2, 3])})
    rep = {l.name: l for l in effective_report(model, masks, input_shape=(1, 1, 1)).layers}
    assert (rep["0.weight"].units, rep["0.weight"].dead_units, rep["0.weight"].no_input) == (2, 1, 1)


def test_normalize_keeps_zero_units_zero():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 3)
            self.b = nn.Linear(3, 1)

        def forward(self, x):
            return self.b(F.normalize(self.a(x), dim=-1))

    masks = {"a.weight": rows(3, 2, [0, 2]), "b.weight": torch.ones(1, 3, dtype=torch.bool)}
    assert_masks(effective_masks(Net(), masks), {"b.weight": cols(1, 3, [0, 2])})


class ShapeBranch(nn.Module):
    """Control flow on a shape: torch.fx cannot trace it, torch.export specialises it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 3)
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        if h.shape[-1] > 2:
            h = h * 2.0
        return self.fc2(h)


def test_torch_export_fallback_when_fx_cannot_trace():
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(ShapeBranch())
    masks = {"fc1.weight": rows(3, 3, [0, 2]), "fc2.weight": torch.ones(2, 3, dtype=torch.bool)}
    assert_masks(effective_masks(ShapeBranch(), masks), {"fc2.weight": cols(2, 3, [0, 2])})


class NormConvNet(nn.Module):
    """conv-BN-ReLU, conv-GroupNorm, max-pool, flatten, LayerNorm, Linear; ``branch``: a shape test fx
    cannot trace (so the ATen graph of torch.export is used)."""

    def __init__(self, branch: bool) -> None:
        super().__init__()
        self.branch = branch
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 3)
        self.input_shape = (2, 4, 4)

    def forward(self, x):
        y = F.relu(self.bn(self.c1(x)))
        if self.branch and y.shape[-1] > 2:
            y = y * 1.0
        y = F.max_pool2d(self.gn(self.c2(y)), 2)
        return self.fc(self.ln(y.flatten(1)))


def test_torch_export_graph_gives_the_fx_answer():
    gen = torch.Generator().manual_seed(0)
    fx_net, export_net = NormConvNet(False), NormConvNet(True)
    for _ in range(4):
        with torch.no_grad():  # some BatchNorm channels cut
            fx_net.bn.weight.copy_((torch.rand(4, generator=gen) > 0.3).float())
        export_net.load_state_dict(fx_net.state_dict())
        masks = {k: torch.rand(p.shape, generator=gen) < 0.3 for k, p in fx_net.named_parameters() if "bias" not in k}
        assert effective_masks(export_net, masks) == effective_masks(fx_net, masks)


def test_unsupported_op_is_a_one_line_error_naming_it():
    class Sorted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return torch.sort(self.fc(x), dim=-1).values

    with pytest.raises(PrunelabError, match="torch.sort") as info:
        effective_masks(Sorted(), dense(Sorted()))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"input_shape": (2,), "example_input": torch.ones(1, 2)}, "not both"),
    ({"example_input": [torch.ones(1, 2)]}, "example_input must be"),
])
def test_example_input_checks(kwargs, match):
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(PrunelabError, match=match):
        effective_masks(model, dense(model), **kwargs)


# --------------------------------------------------------------------------------------------------
# HF transformers (tiny, from configs) and torchvision's MobileNetV3-small


def _hf_model(name: str):
    """A tiny HF model, its example input (batch 1) and a batch using every token id and position."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    ids = torch.arange(40).view(5, 8)
    if name == "bert":
        model = transformers.BertModel(transformers.BertConfig(
            vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
            max_position_embeddings=8, type_vocab_size=1))
    elif name == "gpt2":
        model = transformers.GPT2Model(transformers.GPT2Config(vocab_size=40, n_embd=8, n_layer=2, n_head=2, n_positions=8))
    elif name == "llama":  # RMSNorm read as x * weight, rotary embeddings, grouped KV heads, SwiGLU
        model = transformers.LlamaModel(transformers.LlamaConfig(
            vocab_size=40, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=8))
    elif name == "t5_encoder":  # relative position bias: an embedding of buckets added to the scores
        model = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=40, d_model=8, d_kv=4, d_ff=16, num_layers=2, num_heads=2))
    else:
        model = transformers.ViTModel(transformers.ViTConfig(
            image_size=8, patch_size=4, num_channels=1, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=16))
        return model, {"pixel_values": torch.ones(1, 1, 8, 8)}, {"pixel_values": torch.randn(3, 1, 8, 8)}
    return model, {"input_ids": ids[:1]}, {"input_ids": ids}


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit", "llama", "t5_encoder"])
def test_tiny_hf_transformer_matches_the_numerical_check(name):
    model, example, batch = _hf_model(name)
    masks = random_masks(model, 0.3, 0)  # every weight: embeddings, Linear/Conv1D, LayerNorm, cls token
    rep = effective_report(model, masks, example_input=example)
    got = effective_masks(model, masks, example_input=example)
    want = numeric_effective(model, masks, batch)
    assert_masks(got, want)
    disconnected = sum(int(masks[k].sum() - want[k].sum()) for k in masks)
    assert disconnected > 10  # the masks really disconnect weights
    assert rep.direct_kept - rep.effective_kept == disconnected
    full = effective_masks(model, dense(model), example_input=example)
    assert_masks(full, numeric_effective(model, dense(model), batch))
    kept = sum(int(m.sum()) for m in full.values())
    total = sum(m.numel() for m in full.values())
    # dense: all weights are effective but BERT's padding row (token 0: a fixed pad vector) and T5's
    # relative-distance buckets that no pair of 8 tokens uses
    assert (total - kept == 8) if name == "bert" else (total - kept > 0) if name == "t5_encoder" else kept == total


def test_hf_model_with_a_head_gets_its_dummy_input_from_the_adapter():
    # no example_input: prunelab.models.adapters gives token ids of the context length (8)
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=8, type_vocab_size=1, num_labels=3))
    masks = dense(model)
    masks["classifier.weight"][:] = False  # no output: nothing is effective
    assert effective_sparsity(model, masks) == 1.0
    masks = dense(model)
    masks["bert.pooler.dense.weight"][:, 0] = False  # pooler input 0 is the cls token's feature 0
    eff = effective_masks(model, masks)
    assert_masks(eff, {"bert.pooler.dense.weight": cols(8, 8, list(range(1, 8))),
                       "classifier.weight": torch.ones(3, 8, dtype=torch.bool)})


def test_mobilenet_v3_small():
    # torchvision does not import beside this project's CPU torch build (docs/effective_sparsity.md says
    # how to run this); SE blocks with Hardsigmoid gates, Hardswish, BatchNorm, depthwise convs
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = models.mobilenet_v3_small(num_classes=10).eval()
    full = {k: torch.ones(p.shape, dtype=torch.bool) for k, p in model.named_parameters() if p.dim() > 1}
    # at 32x32 the last blocks see a 1x1 map: a 5x5 depthwise kernel (features.10, 576 channels) uses
    # only its centre tap there, the other 24 taps per channel multiply padding
    rows_ = {l.name: l for l in effective_report(model, full, input_shape=(3, 32, 32)).layers}
    assert rows_["features.10.block.1.0.weight"].total - rows_["features.10.block.1.0.weight"].effective_kept == 576 * 24
    assert effective_sparsity(model, full, input_shape=(3, 224, 224)) == 0.0
    gen = torch.Generator().manual_seed(0)
    masks = {k: torch.rand(m.shape, generator=gen) < 0.1 for k, m in full.items()}
    eff = effective_masks(model, masks, input_shape=(3, 32, 32))
    assert all(not bool((eff[k] & ~masks[k]).any()) for k in masks)
    assert 1 - sum(int(m.sum()) for m in eff.values()) / sum(m.numel() for m in eff.values()) > 0.9
