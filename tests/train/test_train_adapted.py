"""``fit`` on models an adapter calls: the tiny ``transformers`` models (token inputs, ModelOutput
outputs, the models' own losses) and a plain model with a custom adapter."""

from __future__ import annotations

import copy
import types
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import prunelab
from prunelab.callbacks import Callback
from prunelab.errors import PrunelabError
from prunelab.models.adapters import TensorAdapter, adapter_for
from prunelab.models.tiny_hf import SEQ, TINY_HF_MODELS, tiny_hf_batch, tiny_hf_model
from prunelab.pruning import MaskEnforcer
from prunelab.train import CHECKPOINT_NAME, TrainConfig, fit
from prunelab.train.adapted import PairLoader, evaluate_pair, split_pair

transformers.logging.set_verbosity_error()
CFG = {"epochs": 3, "lr": 1e-3, "optimizer": "adam", "batch_size": 16, "device": "cpu", "seed": 3}


def data_for(name: str, n_train: int = 64, n_test: int = 32) -> types.SimpleNamespace:
    tr, te = tiny_hf_batch(name, n_train, seed=1), tiny_hf_batch(name, n_test, seed=2)
    if name == "vit":
        return types.SimpleNamespace(x_train=tr[0], y_train=tr[1], x_test=te[0], y_test=te[1])
    return types.SimpleNamespace(x_train=tr, x_test=te)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", TINY_HF_MODELS)
def test_pruned_transformers_train_and_keep_their_masks(name):
    """Each tiny model at 50% magnitude sparsity, 3 epochs of Adam: the training loss falls every
    epoch, pruned weights stay exactly 0, kept ones move, and the reported test loss is the adapter's
    loss (the model's own, tests/pruning/test_transformers.py) on the whole test split in one batch."""
    model = tiny_hf_model(name, seed=0)
    masks = prunelab.prune(model, 0.5, "magnitude")
    before = _weights(model)
    data = data_for(name)
    res = fit(model, data, CFG, callbacks=[MaskEnforcer(masks)], progress=False)
    losses = [r["train_loss"] for r in res.history]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2], losses
    params = dict(model.named_parameters())
    for key, mask in masks.items():
        assert torch.count_nonzero(params[key].detach()[~mask]) == 0, key
        assert not torch.equal(params[key].detach()[mask], before[key][mask]), key
    adapter = adapter_for(model)
    (test,) = adapter.check(model, adapter.batches(data.x_test if name != "vit" else (data.x_test, data.y_test)))
    with torch.no_grad():
        model.eval()
        own = float(adapter.loss(model, test))
    assert res.final.loss == pytest.approx(own, rel=1e-5)
    assert 0.0 <= res.final.accuracy <= 1.0 and res.final.num_samples == 32


def test_causal_lm_token_accuracy_and_mean_by_hand():
    """GPT-2 on 10 sequences in batches of 3: the accuracy is the share of next tokens predicted at
    the positions that count (target not padding), the loss their mean cross-entropy, both over the
    whole split, however it is batched (a plain mean of batch means would differ: batches hold
    different numbers of tokens)."""
    model = tiny_hf_model("gpt2", seed=0).eval()
    batch = tiny_hf_batch("gpt2", 10, seed=4)
    adapter = adapter_for(model)
    (pair,) = adapter.check(model, adapter.batches(batch))
    res = evaluate_pair(model, adapter, pair, batch_size=3)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    pred, target = logits[:, :-1].argmax(-1), batch["input_ids"][:, 1:]
    valid = batch["attention_mask"][:, 1:] != 0
    assert int(valid.sum()) == 10 * (SEQ - 1) - 2 * 4  # sequences 0, 3, 6, 9 end in two padding tokens
    acc = float((pred[valid] == target[valid]).float().mean())
    ce = float(nn.functional.cross_entropy(logits[:, :-1][valid], target[valid]))
    assert res.accuracy == pytest.approx(acc, abs=1e-12)
    assert (res.num_samples, res.num_classes) == (10, logits.shape[-1])  # sequences; the vocabulary
    assert res.loss == pytest.approx(ce, rel=1e-6)
    with torch.no_grad():
        batch_means = [float(adapter.loss(model, adapter.select(pair, torch.arange(s, min(10, s + 3)))))
                       for s in range(0, 10, 3)]
    assert abs(sum(batch_means) / len(batch_means) - ce) > 1e-6  # the unweighted mean is not the answer


def test_the_same_seed_gives_the_same_weights_and_a_crashed_run_resumes_bitwise(tmp_path: Path):
    class Crash(Callback):
        def on_epoch_begin(self, state):
            if state.epoch == 2:
                raise RuntimeError("simulated crash")

    data = data_for("bert")
    cfg = TrainConfig(**CFG, eval_every=1)
    ref = tiny_hf_model("bert", seed=0)
    ref_res = fit(ref, data, cfg, progress=False)
    again = tiny_hf_model("bert", seed=0)
    fit(again, data, cfg, progress=False)
    for k, v in _weights(ref).items():
        assert torch.equal(v, _weights(again)[k]), k
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tiny_hf_model("bert", seed=0), data, cfg, callbacks=[Crash()], progress=False, checkpoint=tmp_path)
    assert (tmp_path / CHECKPOINT_NAME).is_file()

    class Quiet(Callback):  # the same callback type as the crashed run's, which does not crash
        pass

    Quiet.__qualname__ = Crash.__qualname__
    model = tiny_hf_model("bert", seed=0)
    res = fit(model, data, cfg, callbacks=[Quiet()], progress=False, checkpoint=tmp_path)
    assert res.resumed_from == 2
    for k, v in _weights(ref).items():
        assert torch.equal(v, _weights(model)[k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "time"} for r in h]
    assert strip(res.history) == strip(ref_res.history) and res.final == ref_res.final
    assert not (tmp_path / CHECKPOINT_NAME).exists()
    # other data: the checkpoint of this run is refused, not silently resumed
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tiny_hf_model("bert", seed=0), data, cfg, callbacks=[Crash()], progress=False, checkpoint=tmp_path)
    other = data_for("bert", n_train=48)
    with pytest.raises(PrunelabError, match="other data"):
        fit(tiny_hf_model("bert", seed=0), other, cfg, callbacks=[Quiet()], progress=False, checkpoint=tmp_path)


def test_an_equivalent_custom_loss_trains_like_the_plain_path():
    """A plain MLP through TensorAdapter with a custom loss equal to cross-entropy (log-softmax +
    NLL) takes the adapter path; its shuffling, steps and evaluation match the plain loop's."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(120, 6, generator=g), torch.randint(0, 3, (120,), generator=g)
    data = types.SimpleNamespace(x_train=x[:80], y_train=y[:80], x_test=x[80:], y_test=y[80:])

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    cfg = {"epochs": 3, "lr": 0.1, "batch_size": 16, "device": "cpu", "seed": 1}
    plain, custom = net(), net()
    a = fit(plain, data, cfg, progress=False)

    def nll(logits, t):
        return nn.functional.nll_loss(nn.functional.log_softmax(logits, dim=1), t)

    b = fit(custom, data, cfg, progress=False, adapter=TensorAdapter(loss_fn=nll))
    for k, v in _weights(plain).items():
        torch.testing.assert_close(_weights(custom)[k], v, rtol=1e-5, atol=1e-6)
    assert b.final.accuracy == a.final.accuracy
    assert b.final.loss == pytest.approx(a.final.loss, rel=1e-5)
    assert [r["train_acc"] for r in b.history] == [r["train_acc"] for r in a.history]


def test_pair_loader_draws_each_sample_once_per_epoch_in_the_tensor_loaders_order():
    from prunelab.data.loader import TensorLoader

    adapter = adapter_for(tiny_hf_model("bert", seed=0))
    batch = tiny_hf_batch("bert", 10, seed=1)
    ids = torch.arange(10)[:, None].repeat(1, SEQ)  # row i holds token i: shows which rows a batch took
    (pair,) = adapter.batches({**batch, "input_ids": ids})
    loader = PairLoader(adapter, pair, 4, seed=7)
    ref = TensorLoader(torch.arange(10), torch.arange(10), 4, seed=7)
    assert len(loader) == 3
    for _ in range(2):  # two epochs: each a permutation, the same one TensorLoader draws
        got = torch.cat([b[0]["input_ids"][:, 0] for b in loader])
        want = torch.cat([xb for xb, _ in ref])
        assert torch.equal(got, want) and sorted(got.tolist()) == list(range(10))
    loader.set_epoch(0)
    first = next(iter(loader))  # the labels travel with their rows
    assert torch.equal(first[1], batch["labels"][first[0]["input_ids"][:, 0]])


@pytest.mark.parametrize("option, value", [("augment", True), ("label_smoothing", 0.1), ("jumpstart", 0.5)])
def test_options_of_the_plain_path_are_refused_not_ignored(option, value):
    with pytest.raises(PrunelabError, match=f"{option} is not supported") as info:
        fit(tiny_hf_model("bert", seed=0), data_for("bert"), {**CFG, option: value}, progress=False)
    assert "\n" not in str(info.value)


def test_bad_token_data_is_one_line_error():
    model = tiny_hf_model("bert", seed=0)
    good = data_for("bert")
    cases = [
        (types.SimpleNamespace(x_train=[1, 2], x_test=good.x_test), "must be a tensor or a dict of tensors"),
        (types.SimpleNamespace(x_train=good.x_train, y_train=good.x_train["labels"], x_test=good.x_test),
         "labels twice"),
        (types.SimpleNamespace(x_train={k: v for k, v in good.x_train.items() if k != "labels"},
                               x_test=good.x_test), "has no labels"),
        (types.SimpleNamespace(x_train=good.x_train), "data needs x_train and x_test"),
    ]
    for data, words in cases:
        with pytest.raises(PrunelabError, match=words) as info:
            fit(copy.deepcopy(model), data, CFG, progress=False)
        assert "\n" not in str(info.value)
    out_of_range = {**good.x_train, "labels": torch.full((64,), 7)}
    with pytest.raises(PrunelabError, match="class indices in 0..2"):
        split_pair(types.SimpleNamespace(x_train=out_of_range), "train", adapter_for(model), model,
                   torch.device("cpu"))
