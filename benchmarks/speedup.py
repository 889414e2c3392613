"""Latency and size: dense vs masked vs physically pruned vs sparse-exported, as ratios in one run.

For each model, in one process, on the same inputs:

* ``dense``     the model as built;
* ``masked``    90% unstructured magnitude masks applied (zeros in dense tensors: the dense cost);
* ``physical``  50% structured pruning, units removed (:func:`prunelab.pruning.compact.compact`):
  ResNet -- half the channels of every block's first conv (smallest L1 filters; the residual stream
  is left whole); ViT / GPT-2 -- half the attention heads of every layer (smallest L1 over their
  q/k/v rows) and half the MLP channels (smallest L1 rows of the up projection);
* ``csr-90``    the 90% masks exported to CSR layers (:func:`prunelab.pruning.sparse_export.to_sparse`);
* ``csr-2:4``   2:4 masks (allocation ``nm``; layers whose input is not a multiple of 4 stay dense)
  exported to CSR;
* ``bsr-90``    (``--bsr``) the 90% masks as 16x16 BSR (its blocks store their zeros: unstructured masks
  are a poor fit, block-pruned masks are what BSR is for).

Latency is the median of ``--repeats`` (3) timed forward passes -- ``repeats * 64 / batch``, at most 50,
at smaller batches -- after warm-up passes (2; 1 at batch >= 16); the variants take turns, so a change
in machine load hits all of them; all under ``torch.inference_mode``, at batch 1 and 64
(``--batches``). Size is the bytes of parameters and buffers (sparse layers: values + int32 indices +
bias). Ratios are against ``dense`` of the same
model and batch: ``speedup`` = dense time / time (> 1 is faster), ``size`` = bytes / dense bytes.
CUDA rows follow when a GPU is present (``--device`` also picks one explicitly).

Models (CPU-sized; the defaults keep one run under ~5 minutes on one thread):

* ``resnet``  prunelab's ``resnet20`` on CIFAR-shaped inputs (3, 32, 32);
* ``vit``     transformers ``ViTForImageClassification`` with ViT-S widths (hidden 384, 6 heads, MLP
  1536) and ``--vit-layers`` (12) layers, on 32x32 images with 8x8 patches (17 tokens);
* ``gpt2``    transformers ``GPT2Model`` (the transformer, no LM head) with GPT-2 small widths
  (768, 12 heads, MLP 3072) and ``--gpt2-layers`` layers (default 4, not 12: one batch-64 forward of
  the full depth takes seconds on one CPU thread), on ``--seq`` (16) tokens.

    python benchmarks/speedup.py                # all three, batch 1 and 64, 1 thread
    python benchmarks/speedup.py --models resnet --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import prunelab
import prunelab.pruning.nm
from prunelab.masks import Masks
from prunelab.models import create
from prunelab.pruning.compact import attention_modules, compact, head_masks, unit_masks
from prunelab.pruning.sparse_export import model_bytes, to_sparse
from prunelab.pruning.structured import channel_groups, expand_unit_masks


def _call(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def latencies_ms(models: dict[str, nn.Module], inputs: Any, repeats: int, device: torch.device,
                 warmup: int = 2) -> dict[str, float]:
    """Median wall time of one forward pass of each model, in ms: ``warmup`` passes each, then
    ``repeats`` rounds that time every model once (interleaved, so drifting machine load hits all alike)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                _call(model, inputs)
        sync()
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                _call(model, inputs)
                sync()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def smallest(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep-mask (True = kept) dropping the ``fraction`` lowest scores (ties: lower index dropped)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    order = torch.sort(scores.detach().double().flatten(), stable=True).indices
    keep[order[: int(fraction * scores.numel())]] = False
    return keep


# --- the models and their structured masks ---------------------------------------------------------
def resnet(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create("resnet20", input_shape=(3, 32, 32)).eval()
    groups = channel_groups(model)
    inner = {k: g for k, g in groups.items() if k.endswith(".conv1")}
    keep = {k: smallest(model.get_submodule(k).weight.abs().flatten(1).sum(1), 0.5) for k in inner}
    return {
        "name": "resnet20 (3x32x32)",
        "model": model,
        "structured": expand_unit_masks(model, keep, groups),
        "inputs": lambda b, g: torch.randn(b, 3, 32, 32, generator=g),
        "nm_options": {"indivisible": "dense"},  # the stem conv has 3 input channels
    }


def _unit_l1(layer: nn.Module) -> torch.Tensor:
    """L1 norm of each output unit's weights (a Conv1D stores its weight (in, out))."""
    w = layer.weight.detach().abs()
    return w.sum(0) if type(layer).__name__ == "Conv1D" else w.sum(1)


def _transformer_structured(model: nn.Module, mlp_up: Callable[[str], str]) -> Masks:
    heads, keep = {}, {}
    for name, a in attention_modules(model).items():
        score = torch.zeros(a.num_heads(), dtype=torch.float64)
        for layer in a.layers():  # L1 of the head's q, k and v rows
            per_unit = _unit_l1(layer).double()
            score += per_unit.reshape(-1, a.num_heads(), a.head_dim).sum((0, 2))
        heads[name] = [int(h) for h in torch.nonzero(~smallest(score, 0.5)).flatten()]
        up = mlp_up(name)
        keep[up] = smallest(_unit_l1(model.get_submodule(up)), 0.5)
    return unit_masks(model, keep, head_masks(model, heads))


def vit(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=384, num_attention_heads=6,
                                 intermediate_size=1536, num_hidden_layers=args.vit_layers, num_labels=10)
    model = transformers.ViTForImageClassification(cfg).eval()
    return {
        "name": f"ViT-S widths, {args.vit_layers} layers (3x32x32, patch 8)",
        "model": model,
        "structured": _transformer_structured(model, lambda att: att.replace(".attention", ".mlp.fc1")),
        "inputs": lambda b, g: {"pixel_values": torch.randn(b, 3, 32, 32, generator=g)},
        "nm_options": {},
    }


def gpt2(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=args.gpt2_layers, n_embd=768, n_head=12, n_positions=max(64, args.seq))
    model = transformers.GPT2Model(cfg).eval()
    return {
        "name": f"GPT-2 small widths, {args.gpt2_layers} layers ({args.seq} tokens)",
        "model": model,
        "structured": _transformer_structured(model, lambda att: att.replace(".attn", ".mlp.c_fc")),
        "inputs": lambda b, g: {"input_ids": torch.randint(0, cfg.vocab_size, (b, args.seq), generator=g),
                                "use_cache": False},
        "nm_options": {"transposed": ["h.*"]},  # Conv1D weights are stored (in, out)
    }


CASES = {"resnet": resnet, "vit": vit, "gpt2": gpt2}


def variants(case: dict[str, Any], args: argparse.Namespace) -> dict[str, nn.Module]:
    model = case["model"]
    example = case["inputs"](2, torch.Generator().manual_seed(1))
    out: dict[str, nn.Module] = {"dense": model}
    m90 = copy.deepcopy(model)
    masks90 = prunelab.prune(m90, 0.9, "magnitude", "global")
    out["masked"] = m90.eval()
    res = compact(model, case["structured"], example)
    print(f"  physical: {res.params_before:,} -> {res.params_after:,} parameters, "
          f"{sum(len(v) for v in res.heads_removed.values())} heads and "
          f"{sum(len(v) for v in res.removed.values())} units removed, {sum(len(v) for v in res.kept.values())} "
          f"pruned units kept, max |diff| {res.max_abs_diff:.2g}")
    out["physical"] = res.model
    out["csr-90"] = to_sparse(model, masks90, "csr")
    m24 = copy.deepcopy(model)
    masks24 = prunelab.prune(m24, 0.5, "magnitude", "nm", options=case["nm_options"])
    out["csr-2:4"] = to_sparse(model, masks24, "csr")
    if args.bsr:
        out["bsr-90"] = to_sparse(model, masks90, "bsr", 16)
    with torch.inference_mode():  # every exported model computes what its masked model computes
        ref90, ref24 = _first(_call(m90, example)), _first(_call(m24.eval(), example))
        for name, ref in (("csr-90", ref90), ("csr-2:4", ref24)) + ((("bsr-90", ref90),) if args.bsr else ()):
            torch.testing.assert_close(_first(_call(out[name], example)), ref, rtol=1e-3, atol=1e-4)
    return out


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if hasattr(out, "logits") and out.logits is not None else out[0]


def _to(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return inputs.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet,vit,gpt2", help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes at batch 64 (more at small batches)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cpu, plus cuda rows when present)")
    parser.add_argument("--vit-layers", type=int, default=12)
    parser.add_argument("--gpt2-layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=16, help="GPT-2 sequence length")
    parser.add_argument("--bsr", action="store_true", help="also 16x16 BSR of the 90%% masks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device(args.device)] if args.device else [torch.device("cpu")] + (
        [torch.device("cuda")] if torch.cuda.is_available() else [])
    batches = [int(b) for b in args.batches.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), devices: "
          f"{', '.join(str(d) for d in devices)}, median of {args.repeats}")
    rows = []
    start = time.perf_counter()
    for key in args.models.split(","):
        case = CASES[key](args)
        print(f"{case['name']}:")
        models = variants(case, args)
        sizes = {name: model_bytes(m) for name, m in models.items()}
        for device in devices:
            on = {name: m.to(device) for name, m in models.items()}
            for b in batches:
                inputs = _to(case["inputs"](b, torch.Generator().manual_seed(2)), device)
                repeats = max(args.repeats, min(50, args.repeats * 64 // b))  # small batches: cheap, noisier
                times = latencies_ms(on, inputs, repeats, device, warmup=2 if b < 16 else 1)
                for name in models:
                    rows.append((case["name"].split(" (")[0], device.type, b, name, times[name],
                                 times["dense"] / times[name], sizes[name] / 2**20, sizes[name] / sizes["dense"]))
            for m in models.values():
                m.to("cpu")
    print()
    header = f"{'model':<32} {'dev':<4} {'batch':>5} {'variant':<9} {'ms':>9} {'speedup':>8} {'MiB':>8} {'size':>6}"
    print(header)
    print("-" * len(header))
    for name, dev, b, variant, ms, speed, mib, size in rows:
        print(f"{name:<32} {dev:<4} {b:>5} {variant:<9} {ms:>9.2f} {speed:>7.2f}x {mib:>8.2f} {size:>6.3f}")
    print(f"\n(total {time.perf_counter() - start:.0f} s; speedup = dense ms / ms, size = bytes / dense bytes)")


if __name__ == "__main__":
    main()
