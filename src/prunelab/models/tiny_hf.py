"""Tiny Hugging Face ``transformers`` models, built from small configs (random weights, no download).

One of each family prunelab's adapters cover (BERT classifier, GPT-2 and Llama causal LMs, T5
seq2seq, ViT classifier), two blocks of width ``HIDDEN`` each: small enough to prune with every
criterion in seconds on a CPU, real enough to exercise the code paths the full-size models take.
The test suite and ``benchmarks/support_matrix.py`` both build their models here.

    from prunelab.models.tiny_hf import tiny_hf_model, tiny_hf_batch
    model = tiny_hf_model("gpt2")            # transformers.GPT2LMHeadModel, seeded weights
    batch = tiny_hf_batch("gpt2", n=16)      # {"input_ids", "attention_mask"}, some rows padded

Needs the optional ``transformers`` package (``pip install transformers``; the ``test`` extra has it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError

#: sequence length of the token batches, vocabulary, hidden width and feed-forward width
SEQ, VOCAB, HIDDEN, FF = 8, 100, 32, 64
#: the families built here
TINY_HF_MODELS = ("bert", "gpt2", "llama", "t5", "vit")


def tiny_hf_configs() -> dict[str, tuple[type, Any]]:
    """``{name: (model class, config)}`` for every name of :data:`TINY_HF_MODELS`."""
    try:
        import transformers as t
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise PrunelabError("the tiny Hugging Face models need the 'transformers' package: "
                            "pip install transformers") from exc
    t.logging.set_verbosity_error()
    return {
        "bert": (t.BertForSequenceClassification, t.BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=FF,
            max_position_embeddings=16, num_labels=3)),
        "gpt2": (t.GPT2LMHeadModel, t.GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0)),
        "llama": (t.LlamaForCausalLM, t.LlamaConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FF, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=0)),
        "t5": (t.T5ForConditionalGeneration, t.T5Config(
            vocab_size=VOCAB, d_model=HIDDEN, d_kv=16, d_ff=FF, num_layers=2, num_heads=2, decoder_start_token_id=0,
            pad_token_id=0, eos_token_id=1)),
        "vit": (t.ViTForImageClassification, t.ViTConfig(
            image_size=8, patch_size=4, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=FF, num_labels=3)),
    }


def _check_name(name: str) -> None:
    if name not in TINY_HF_MODELS:
        raise PrunelabError(f"unknown tiny Hugging Face model {name!r}; choose one of {', '.join(TINY_HF_MODELS)}")


def tiny_hf_model(name: str, seed: int = 0) -> nn.Module:
    """A fresh tiny model of family ``name``, its random initialisation drawn with ``seed``."""
    _check_name(name)
    cls, config = tiny_hf_configs()[name]
    torch.manual_seed(seed)
    return cls(config)


def tiny_hf_batch(name: str, n: int = 16, seed: int = 1) -> Any:
    """``n`` random training examples for model ``name``: ``(images, labels)`` for ViT; otherwise a
    dict of ``input_ids`` (tokens 2..VOCAB-1, length :data:`SEQ`) and ``attention_mask`` in which
    every third sequence ends in two padding tokens, plus ``labels`` for BERT (3 classes) and T5
    (6 target tokens). GPT-2 and Llama need no labels: their adapter predicts each next input token."""
    _check_name(name)
    g = torch.Generator().manual_seed(seed)
    if name == "vit":
        return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    ids = torch.randint(2, VOCAB, (n, SEQ), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, SEQ - 2:] = 0  # every third sequence ends in two padding tokens
    batch = {"input_ids": ids, "attention_mask": mask}
    if name == "bert":
        batch["labels"] = torch.randint(0, 3, (n,), generator=g)
    if name == "t5":
        batch["labels"] = torch.randint(2, VOCAB, (n, 6), generator=g)
    return batch
