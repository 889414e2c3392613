"""Pruning ``transformers`` models through model adapters (issue 14, items 1 and 3).

Five tiny models built from configs with a fixed seed (2 layers, hidden 32, vocab 100, sequence 8, no
weights downloaded): BERT (sequence classification), GPT-2 (LM head, Conv1D projections, tied head),
Llama (causal LM), T5 (conditional generation, tied head), ViT (image classification). Every cell of
criterion x allocation either gives masks of exactly the requested sparsity on the default prunable
set, or a one-line PrunelabError that says why.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import prunelab
from prunelab.analysis.sparsity import sparsity_report
from prunelab.errors import PrunelabError
from prunelab.masks import Masks, prunable_parameters
from prunelab.models.adapters import (
    HFCausalLMAdapter,
    HFImageClassificationAdapter,
    HFSeq2SeqLMAdapter,
    HFSequenceClassificationAdapter,
    ModelAdapter,
    TensorAdapter,
    adapter_for,
    is_conv1d,
    logits_of,
)
from prunelab.models.tiny_hf import FF, HIDDEN, SEQ, TINY_HF_MODELS, VOCAB, tiny_hf_batch, tiny_hf_model
from prunelab.pruning import MaskEnforcer
from prunelab.pruning.context import CRITERIA

transformers.logging.set_verbosity_error()



MODELS = TINY_HF_MODELS

# The default prunable set, counted by hand from the configs: the Linear-like projections inside
# the blocks (attention q/k/v/o and the MLP), nothing else.
PER_BLOCK = {
    "bert": 4 * HIDDEN * HIDDEN + 2 * HIDDEN * FF,  # query, key, value, attention.output, intermediate, output
    "gpt2": HIDDEN * 3 * HIDDEN + HIDDEN * HIDDEN + 2 * HIDDEN * 4 * HIDDEN,  # c_attn, c_proj, c_fc, mlp.c_proj
    "llama": 4 * HIDDEN * HIDDEN + 3 * HIDDEN * FF,  # q/k/v/o, gate/up/down
    "vit": 4 * HIDDEN * HIDDEN + 2 * HIDDEN * FF,  # q/k/v/o, fc1/fc2
}
PRUNABLE = {
    **{k: 2 * v for k, v in PER_BLOCK.items()},
    # encoder block: self-attention + FF; decoder block: self-attention + cross-attention + FF
    "t5": 2 * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FF) + 2 * (8 * HIDDEN * HIDDEN + 2 * HIDDEN * FF),
}
N_LAYERS = {"bert": 12, "gpt2": 8, "llama": 14, "t5": 12 + 20, "vit": 12}
NEVER_DEFAULT = ("embed", "wte", "wpe", "shared", "lm_head", "classifier", "pooler", "patch", "relative_attention")


@pytest.fixture(scope="module")
def base_models() -> dict[str, nn.Module]:
    out = {}
    for name in MODELS:
        out[name] = tiny_hf_model(name, seed=0)
    return out


def _options(criterion: str) -> dict | None:
    return {
        "woodfisher": {"fisher_samples": 8, "block_size": 64},
        "cbs": {"fisher_samples": 8, "block_size": 64},
        "synflow": {"iterations": 4},  # 100 by default; 4 rounds exercise the same loop
    }.get(criterion)


def _one_line_error(call) -> str:
    with pytest.raises(PrunelabError) as info:
        call()
    msg = str(info.value)
    assert msg and "\n" not in msg, msg
    return msg


def _check_masks(model: nn.Module, masks: Masks, name: str, sparsity: float, exact: bool) -> None:
    """Masks on exactly the default set, sparsity counted by hand, pruned weights exactly 0."""
    default = prunable_parameters(model)
    assert list(masks) == list(default)
    assert not [k for k in masks if any(bad in k for bad in NEVER_DEFAULT)]
    total = sum(m.numel() for m in masks.values())
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert total == PRUNABLE[name]
    target = round(sparsity * total)
    if exact:
        assert zeros == target
    else:  # density allocations round per layer: at most one weight per layer off
        assert abs(zeros - target) <= len(masks)
    params = dict(model.named_parameters())
    for key, mask in masks.items():
        assert torch.count_nonzero(params[key].detach()[~mask]) == 0, key


CRITERIA_ALL = ("random", "magnitude", "lamp", "snip", "grasp", "synflow", "upa", "woodfisher", "cbs")
#: cells that cannot work, and the words their error must contain
ERROR_CELLS: dict[str, str] = {}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("criterion", CRITERIA_ALL)
def test_every_criterion_global_at_0_9(base_models, name, criterion):
    model = copy.deepcopy(base_models[name])
    call = lambda: prunelab.prune(model, 0.9, criterion, "global", data=tiny_hf_batch(name), options=_options(criterion))
    if criterion in ERROR_CELLS:
        msg = _one_line_error(call)
        assert ERROR_CELLS[criterion] in msg and type(model).__name__ in msg
        return
    _check_masks(model, call(), name, 0.9, exact=True)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("allocation", ("global", "uniform", "erk", "igq"))
@pytest.mark.parametrize("criterion", ("magnitude", "snip"))
def test_every_allocation_at_0_5(base_models, name, allocation, criterion):
    model = copy.deepcopy(base_models[name])
    masks = prunelab.prune(model, 0.5, criterion, allocation, data=tiny_hf_batch(name))
    _check_masks(model, masks, name, 0.5, exact=allocation == "global")


def test_default_prunable_set_by_name(base_models):
    names = {k: list(Masks.ones(m)) for k, m in base_models.items()}
    assert {k: len(v) for k, v in names.items()} == N_LAYERS
    assert names["gpt2"][:4] == [f"transformer.h.0.{n}.weight" for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert names["llama"][:7] == [f"model.layers.0.{n}.weight" for n in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
        "mlp.down_proj")]
    # GPT-2's projections are Conv1D (weight stored (in, out)) and count as Linear
    gpt2 = base_models["gpt2"]
    c_attn = gpt2.get_submodule("transformer.h.0.attn.c_attn")
    assert is_conv1d(c_attn) and tuple(c_attn.weight.shape) == (HIDDEN, 3 * HIDDEN)
    assert not is_conv1d(gpt2.lm_head)
    assert list(Masks.ones(gpt2, include=(nn.Linear,))) == names["gpt2"] + ["transformer.wte.weight"]
    # explicit types: every module of that type, heads and patch projection included
    assert "classifier.weight" in Masks.ones(base_models["bert"], include=(nn.Linear,))
    assert list(Masks.ones(base_models["vit"], include=(nn.Conv2d,))) == ["vit.embeddings.patch_embeddings.projection.weight"]


def test_tied_head_is_one_mask_counted_once(base_models):
    gpt2 = copy.deepcopy(base_models["gpt2"])
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    with_head = Masks.ones(gpt2, include=("lm_head",))
    # the tied weight appears once, under the name named_parameters gives it
    assert list(with_head)[-1] == "transformer.wte.weight" and "lm_head.weight" not in with_head
    assert with_head.num_total() == PRUNABLE["gpt2"] + VOCAB * HIDDEN
    assert Masks.ones(gpt2, include=("transformer.wte",)) == with_head  # the embedding's name: the same weight
    assert Masks.ones(gpt2, include=("lm_head",), exclude=("transformer.wte",)) == Masks.ones(gpt2)
    unique = {id(p): p.numel() for _, p in gpt2.named_parameters(remove_duplicate=False)}
    report = sparsity_report(gpt2, with_head, input_shape=(SEQ,), effective=False)
    assert report.params == sum(unique.values()) < sum(p.numel() for _, p in gpt2.named_parameters(remove_duplicate=False))
    assert report.prunable == PRUNABLE["gpt2"] + VOCAB * HIDDEN

    masks = prunelab.prune(gpt2, 0.5, "snip", masks=with_head, data=tiny_hf_batch("gpt2"))
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert zeros == round(0.5 * masks.num_total())
    pruned = ~masks["transformer.wte.weight"]
    assert bool(pruned.any()) and torch.count_nonzero(gpt2.lm_head.weight.detach()[pruned]) == 0
    report = sparsity_report(gpt2, masks, input_shape=(SEQ,), effective=False)
    assert report.nonzero == report.params - zeros

    t5 = copy.deepcopy(base_models["t5"])
    t5_masks = Masks.ones(t5, include=("lm_head",))
    assert list(t5_masks)[-1] == "shared.weight" and len(t5_masks) == N_LAYERS["t5"] + 1
    masks = prunelab.prune(t5, 0.9, "snip", masks=t5_masks, data=tiny_hf_batch("t5"))
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * (PRUNABLE["t5"] + VOCAB * HIDDEN))
    assert torch.count_nonzero(t5.lm_head.weight.detach()[~masks["shared.weight"]]) == 0


def test_adapter_loss_is_the_models_own_loss(base_models):
    """The adapters' losses equal the ``loss`` transformers computes from labels (with padding -> -100)."""
    for name, model in base_models.items():
        adapter = adapter_for(model)
        batch = adapter.check(model, adapter.batches(tiny_hf_batch(name, n=6)))[0]
        inputs, targets = batch
        model.eval()
        with torch.no_grad():
            ours = adapter.loss(model, batch)
            if name in ("gpt2", "llama"):
                labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
                theirs = model(**inputs, labels=labels).loss
            elif name == "vit":
                theirs = model(pixel_values=inputs["pixel_values"], labels=targets).loss
            else:
                theirs = model(**inputs, labels=targets).loss
        assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-6), name
    assert type(adapter_for(base_models["bert"])) is HFSequenceClassificationAdapter
    assert type(adapter_for(base_models["gpt2"])) is HFCausalLMAdapter
    assert type(adapter_for(base_models["llama"])) is HFCausalLMAdapter
    assert type(adapter_for(base_models["t5"])) is HFSeq2SeqLMAdapter
    assert type(adapter_for(base_models["vit"])) is HFImageClassificationAdapter
    assert type(adapter_for(nn.Linear(3, 2))) is TensorAdapter


def test_causal_loss_by_hand():
    """Next-token loss on a 1-layer "model" whose logits we choose: mean of -log p(t+1 | <= t) over
    target positions that are not padding."""

    class Fixed(nn.Module):  # a causal LM stand-in: logits = one-hot(previous token) * 2
        def forward(self, input_ids, attention_mask=None):
            return {"logits": 2.0 * nn.functional.one_hot(input_ids, 4).float()}

    adapter = HFCausalLMAdapter.__new__(HFCausalLMAdapter)
    ModelAdapter.__init__(adapter)
    adapter.main, adapter.vocab_size, adapter._use_cache = "input_ids", 4, False
    ids = torch.tensor([[0, 1, 2], [3, 3, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the last token of row 1 is padding
    loss = adapter.loss(Fixed(), ({"input_ids": ids, "attention_mask": mask}, None))
    # predictions for targets (1, 2 | 3): logits one-hot(0), one-hot(1) | one-hot(3); the right class has
    # logit 2 only for row 1's pair (3 -> 3); p = e^2 / (e^2 + 3) there, 1 / (e^2 + 3) elsewhere
    e2 = torch.tensor(2.0).exp()
    wrong, right = -torch.log(1 / (e2 + 3)), -torch.log(e2 / (e2 + 3))
    assert torch.allclose(loss, (2 * wrong + right) / 3)


def test_masks_survive_adamw_with_weight_decay(base_models):
    for name, base in base_models.items():
        model = copy.deepcopy(base)
        include = ("lm_head",) if name == "gpt2" else None  # the tied head too
        masks = prunelab.prune(model, 0.5, "magnitude", masks=Masks.ones(model, include=include))
        adapter = adapter_for(model)
        batch = adapter.check(model, adapter.batches(tiny_hf_batch(name)))[0]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        state = type("State", (), {"model": model, "optimizer": opt})()
        enforcer = MaskEnforcer(masks)
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        model.train()
        enforcer.on_train_begin(state)
        for _ in range(3):
            opt.zero_grad()
            adapter.loss(model, batch).backward()
            enforcer.after_backward(state)
            opt.step()
            enforcer.after_step(state)
        params = dict(model.named_parameters())
        for key, mask in masks.items():
            assert torch.count_nonzero(params[key].detach()[~mask]) == 0, (name, key)
            assert not torch.equal(params[key].detach()[mask], before[key][mask]), (name, key)  # training moved them


def test_masks_save_load_round_trip(base_models, tmp_path):
    for name, base in base_models.items():
        model = copy.deepcopy(base)
        masks = prunelab.prune(model, 0.9, "random", data=tiny_hf_batch(name))
        path = tmp_path / f"{name}.safetensors"
        masks.save(path)
        loaded = Masks.load(path)
        assert loaded == masks and list(loaded) == list(masks)
        loaded.validate(model)


def test_flops_of_conv1d_and_token_inputs(base_models):
    gpt2 = copy.deepcopy(base_models["gpt2"])
    masks = prunelab.prune(gpt2, 0.5, "magnitude")
    report = sparsity_report(gpt2, masks, input_shape=(SEQ,), effective=False)
    per_layer = {row.name: row for row in report.layers}
    c_attn = per_layer["transformer.h.0.attn.c_attn.weight"]
    assert c_attn.kind == "Conv1D" and c_attn.flops_dense == SEQ * HIDDEN * 3 * HIDDEN
    assert c_attn.flops_sparse == SEQ * int(masks["transformer.h.0.attn.c_attn.weight"].sum())
    head = SEQ * VOCAB * HIDDEN  # the (unmasked) LM head counts dense in both
    assert report.flops_dense == SEQ * PRUNABLE["gpt2"] + head
    assert report.flops_sparse == SEQ * masks.num_kept() + head
    # no input shape given: the config's context length (n_positions = 16)
    default = sparsity_report(gpt2, masks, effective=False)
    assert default.input_shape == (16,) and default.flops_dense == 16 * PRUNABLE["gpt2"] + 16 * VOCAB * HIDDEN
    # T5: encoder and decoder both see T tokens; the tied head (scaled hidden states) counts too
    t5 = base_models["t5"]
    t5_report = sparsity_report(t5, input_shape=(SEQ,), effective=False)
    assert t5_report.flops_dense == SEQ * PRUNABLE["t5"] + SEQ * VOCAB * HIDDEN
    # ViT: the configured image; patch projection 16 * 3 * 4 * 4 per patch, 4 patches (+ CLS token rows)
    vit_report = sparsity_report(base_models["vit"], effective=False)
    assert vit_report.input_shape == (3, 8, 8)
    rows = 4 + 1
    assert vit_report.flops_dense == rows * PRUNABLE["vit"] + 4 * HIDDEN * 3 * 16 + 3 * HIDDEN


def test_report_effective_sparsity_through_the_adapter(base_models):
    """The report's effective counts are those of effective_masks on the adapter's dummy token input."""
    from prunelab.analysis.effective import effective_masks

    gpt2 = copy.deepcopy(base_models["gpt2"])
    masks = prunelab.prune(gpt2, 0.9, "magnitude")
    report = sparsity_report(gpt2, masks, input_shape=(SEQ,))
    if report.effective_kept is None:  # the connectivity analysis may refuse an op: then it says which
        assert report.effective_note.startswith("effective sparsity not computed: ")
        return
    ids = torch.zeros(1, SEQ, dtype=torch.long)
    direct = effective_masks(gpt2, masks, example_input={"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                                         "use_cache": False})
    assert report.effective_kept == sum(int(m.sum()) for m in direct.values()) <= masks.num_kept()
    assert report.effective_sparsity >= report.sparsity


def test_input_shape_from_model_then_first_batch_then_config(base_models):
    seen = []

    def record(model, masks, ctx):
        seen.append(ctx.input_shape)
        return {k: torch.rand(m.shape, generator=ctx.generator()) for k, m in masks.items()}

    gpt2 = copy.deepcopy(base_models["gpt2"])
    prunelab.prune(gpt2, 0.5, record, data=tiny_hf_batch("gpt2"))
    prunelab.prune(gpt2, 0.6, record)
    gpt2.input_shape = (4,)
    prunelab.prune(gpt2, 0.7, record, data=tiny_hf_batch("gpt2"))
    prunelab.prune(copy.deepcopy(base_models["vit"]), 0.5, record)
    assert seen == [(SEQ,), (16,), (4,), (3, 8, 8)]


def test_synflow_feeds_an_all_ones_embedding(base_models):
    """Token SynFlow = SynFlow of the same network with the token embedding replaced by a constant
    input of ones; checked against a direct computation on the abs-valued model."""
    torch.manual_seed(0)
    model = copy.deepcopy(base_models["llama"])
    masks = Masks.ones(model)
    from prunelab.pruning.context import ScoreContext

    scores = CRITERIA.get("synflow")(model, masks, ScoreContext(input_shape=(SEQ,)))
    absolute = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in absolute.parameters():
            p.abs_()
        for b in absolute.buffers():
            if b.is_floating_point():
                b.abs_()
    absolute.eval()
    out = absolute(inputs_embeds=torch.ones(1, SEQ, HIDDEN, dtype=torch.float64), use_cache=False).logits.sum()
    out.backward()
    params = dict(absolute.named_parameters())
    for key, score in scores.items():
        assert torch.allclose(score, (params[key].grad * params[key]).abs(), rtol=1e-10, atol=0), key


def test_upa_in_train_mode_is_seeded_and_leaves_the_rng_alone(base_models):
    runs = []
    for _ in range(2):
        model = copy.deepcopy(base_models["bert"])  # dropout 0.1: train mode draws dropout masks
        state = torch.get_rng_state()
        runs.append(prunelab.prune(model, 0.5, "upa", data=tiny_hf_batch("bert"), seed=3))
        assert torch.equal(torch.get_rng_state(), state)
    assert runs[0] == runs[1]


def test_cbs_update_after_woodfisher_works(base_models):
    model = copy.deepcopy(base_models["gpt2"])
    masks = prunelab.prune(model, 0.5, "woodfisher", data=tiny_hf_batch("gpt2"), update="cbs", options=_options("woodfisher"))
    _check_masks(model, masks, "gpt2", 0.5, exact=True)


def test_custom_adapter_is_used():
    """A model no built-in adapter knows: it takes two keyword tensors and returns a dict."""

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

        def forward(self, features, extra):
            return {"scores": self.a(features) + self.b(extra)}

    class Adapter(ModelAdapter):
        calls = 0

        def model_inputs(self, model, batch):
            return (), {"features": batch[0]["features"], "extra": batch[0]["extra"]}

        def logits(self, outputs, batch=None):
            Adapter.calls += 1
            return outputs["scores"]

    torch.manual_seed(0)
    model = TwoInputs()
    g = torch.Generator().manual_seed(0)
    data = ({"features": torch.randn(8, 4, generator=g), "extra": torch.randn(8, 2, generator=g)},
            torch.randint(0, 3, (8,), generator=g))
    ref = copy.deepcopy(model)
    masks = prunelab.prune(model, 0.5, "snip", data=data, adapter=Adapter())
    assert Adapter.calls >= 2 and masks.num_total() == 18 and masks.num_kept() == 9
    # the same SNIP scores by hand: |w * dL/dw|
    loss = nn.functional.cross_entropy(ref.a(data[0]["features"]) + ref.b(data[0]["extra"]), data[1])
    loss.backward()
    scores = torch.cat([(ref.a.weight.grad * ref.a.weight).abs().flatten(), (ref.b.weight.grad * ref.b.weight).abs().flatten()])
    kept = torch.cat([masks["a.weight"].flatten(), masks["b.weight"].flatten()])
    assert set(torch.topk(scores, 9).indices.tolist()) == set(torch.nonzero(kept).flatten().tolist())


def test_logits_of_outputs():
    t = torch.ones(2, 3)
    assert logits_of(t) is t and logits_of({"logits": t}) is t and logits_of((t, None)) is t
    assert logits_of(transformers.modeling_outputs.SequenceClassifierOutput(logits=t)) is t
    msg = _one_line_error(lambda: logits_of({"scores": t}))
    assert "dict with keys ['scores'] without logits" in msg


NO_HEAD = ("no built-in adapter for BertModel: prunelab knows the transformers heads ...ForImageClassification, "
           "ForSequenceClassification, ForTokenClassification, ForMaskedLM, ForCausalLM, LMHeadModel, "
           "ForConditionalGeneration; a model without a head has no loss: use one with a head or pass adapter= "
           "(see docs/models.md)")


def _bad_cells(models):
    bert, gpt2, t5 = models["bert"], models["gpt2"], models["t5"]
    ids = torch.randint(2, VOCAB, (4, SEQ))
    return [
        ("model without a head", lambda: prunelab.prune(transformers.BertModel(bert.config), 0.5, "snip",
                                                          data={"input_ids": ids}),
         NO_HEAD),
        ("synflow on a model without a head", lambda: prunelab.prune(transformers.BertModel(bert.config), 0.5, "synflow"),
         NO_HEAD),
        ("T5 without labels", lambda: prunelab.prune(t5, 0.5, "snip", data={"input_ids": ids}),
         ("data: the batch has no labels; T5ForConditionalGeneration (encoder-decoder) needs them: give {'labels': ...} "
         "in the batch dict or an (inputs, labels) pair")),
        ("token ids beyond the vocabulary", lambda: prunelab.prune(gpt2, 0.5, "snip", data={"input_ids": ids + VOCAB}),
         (f"data: input_ids of the batch range from {int(ids.min()) + VOCAB} to {int(ids.max()) + VOCAB}; token ids "
         f"must be in 0..{VOCAB - 1} (the model's vocab_size is {VOCAB})")),
        ("float token ids", lambda: prunelab.prune(gpt2, 0.5, "snip", data={"input_ids": ids.float()}),
         "data: input_ids of the batch have dtype torch.float32 and shape (4, 8); token ids are integers of shape (N, T)"),
        ("attention mask of another shape", lambda: prunelab.prune(
            gpt2, 0.5, "snip", data={"input_ids": ids, "attention_mask": torch.ones(4, SEQ - 1)}),
         "data: attention_mask of the batch has shape (4, 7), but input_ids has (4, 8); they must match"),
        ("labels out of range", lambda: prunelab.prune(bert, 0.5, "grasp", data={"input_ids": ids, "labels": torch.tensor([0, 1, 2, 3])}),
         "data: labels must be class indices in 0..2 (the model has 3 outputs), got labels from 0 to 3"),
        ("labels twice", lambda: prunelab.prune(bert, 0.5, "snip", data=({"input_ids": ids, "labels": ids[:, 0]}, ids[:, 0])),
         "data: the batch gives labels twice (inputs['labels'] and the pair's targets); give one"),
        ("batch sizes differ", lambda: prunelab.prune(gpt2, 0.5, "snip", data={"input_ids": ids, "attention_mask": torch.ones(3, SEQ)}),
         ("data: the tensors of the batch have different batch sizes {'input_ids': 4, 'attention_mask': 3}; they must "
         "have the same length")),
        ("only padding", lambda: prunelab.prune(gpt2, 0.5, "snip", data={"input_ids": ids, "attention_mask": torch.zeros_like(ids)}),
         ("data: the batch has no position to predict (next-token prediction needs at least 2 tokens: every label is "
         "-100 or padding); the mean loss over 0 tokens is NaN")),
        ("sequence lengths differ", lambda: prunelab.prune(gpt2, 0.5, "snip", data=[{"input_ids": ids}, {"input_ids": ids[:, :4]}]),
         ("data: batch 1 has inputs of per-sample shape (4,) but batch 0 has (8,); every batch must have the same "
         "per-sample shape (pad all batches to one length)")),
        ("no main input", lambda: prunelab.prune(gpt2, 0.5, "snip", data={"tokens": ids}),
         "data: the inputs of the batch have no 'input_ids' (keys: ['tokens']); this model's main input is 'input_ids'"),
        ("adapter and loss_fn", lambda: prunelab.prune(gpt2, 0.5, "snip", data={"input_ids": ids}, adapter=adapter_for(gpt2),
                                                       loss_fn=nn.functional.cross_entropy),
         "give either adapter= or loss_fn=, not both (an adapter carries its loss)"),
        ("adapter of the wrong type", lambda: prunelab.prune(gpt2, 0.5, "snip", data={"input_ids": ids}, adapter="causal"),
         "adapter must be a prunelab.models.adapters.ModelAdapter (e.g. adapter_for(model) or a subclass), got str"),
        ("include pattern that matches nothing", lambda: prunelab.prune(gpt2, 0.5, include=("lm_haed",)),
         ("include pattern 'lm_haed' matches no module or weight of GPT2LMHeadModel; give module types as classes "
         "(nn.Linear) and patterns as names (e.g. 'lm_head', '*.wte', 'fc1.weight')")),
        ("an image shape for a token model", lambda: sparsity_report(models["gpt2"], input_shape=(3, 8, 8)),
         "input_shape (3, 8, 8) is not a token shape: token models take (T,), the sequence length"),
    ]


def test_bad_cells_are_one_line_errors(base_models):
    models = {k: copy.deepcopy(v) for k, v in base_models.items()}
    for what, call, expected in _bad_cells(models):
        assert _one_line_error(call) == expected, what


def test_prunelab_never_imports_transformers():
    """prunelab works without transformers: duck typing only (run with the import blocked)."""
    code = textwrap.dedent("""
        import sys
        sys.modules["transformers"] = None  # any import of it raises ImportError
        import torch, prunelab, prunelab.pruning, prunelab.models.adapters as ad
        from prunelab.analysis.sparsity import sparsity_report
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        masks = prunelab.prune(net, 0.5, "snip", data=(x, y))
        assert type(ad.adapter_for(net)) is ad.TensorAdapter and not ad.is_transformers_model(net)
        print(masks.num_kept(), sparsity_report(net, masks).flops_dense)
    """)
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["18", str(6 * 4 + 4 * 3)]


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_prune_to_an_effective_sparsity_on_token_models(base_models, name):
    from prunelab.analysis.sparsity import model_effective_masks

    if name not in base_models:
        pytest.skip(f"{name} not built here")
    model = copy.deepcopy(base_models[name])
    masks = prunelab.prune(model, 0.9, "magnitude", "global", sparsity_kind="effective")
    from prunelab.models.adapters import adapter_for

    eff = model_effective_masks(model, masks, adapter_for(model).default_input_shape(model))
    assert eff.sparsity() >= 0.9 - 1e-9  # the target is met on the effective masks ...
    assert masks.sparsity() <= eff.sparsity() + 1e-12  # ... with at most that many weights pruned directly


def test_tiny_hf_unknown_family_is_one_line_error():
    from prunelab.models.tiny_hf import tiny_hf_model

    msg = _one_line_error(lambda: tiny_hf_model("bart"))
    assert "'bart'" in msg and "bert, gpt2, llama, t5, vit" in msg
