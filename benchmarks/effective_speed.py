"""How long effective masks take, as a multiple of one forward+backward pass of the same model.

For VGG-16 and ResNet-18 (CIFAR-10 variants from ``prunelab.models``) pruned to 99% sparsity by
random and by magnitude pruning (global allocation), time ``effective_masks`` and one training-style
forward + backward pass at batch 1 on the CPU, in the same process, and print the median of a few
repeats of each and their ratio (target: <= 3).

    python benchmarks/effective_speed.py                  # 7 repeats
    python benchmarks/effective_speed.py --quick          # 3 repeats, ~20 s
    python benchmarks/effective_speed.py --transformers   # also small BERT / ViT (torch.export path)

The transformers rows (needs ``transformers``; models built from configs, nothing downloaded) go
through ``torch.export``, which fx cannot trace them with: their cost is mostly the export (a one-time
warm-up of several seconds in a process, then a fixed cost per call).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import prunelab
from prunelab.analysis.effective import effective_masks, effective_report
from prunelab.models import create


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocator, lazy imports)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of --repeats")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sparsity", type=float, default=0.99)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--transformers", action="store_true", help="also time small HF BERT and ViT models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats

    print(f"threads={args.threads} repeats={repeats} sparsity={args.sparsity} batch=1 device=cpu")
    print(f"{'model':<9} {'criterion':<10} {'fwd+bwd ms':>10} {'effective ms':>12} {'ratio':>6} "
          f"{'direct':>8} {'effective':>9}")
    for name in ("vgg16", "resnet18"):
        for criterion in ("random", "magnitude"):
            torch.manual_seed(0)
            model = create(name, num_classes=10, input_shape=(3, 32, 32))
            masks = prunelab.prune(model, args.sparsity, criterion, "global", seed=0)
            x = torch.randn(1, 3, 32, 32)

            def forward_backward(model=model, x=x) -> None:
                model.zero_grad(set_to_none=True)
                model(x).sum().backward()

            def effective(model=model, masks=masks) -> None:
                effective_masks(model, masks)

            t_fb = median_seconds(forward_backward, repeats)
            t_eff = median_seconds(effective, repeats)
            row = effective_report(model, masks).to_row()
            print(f"{name:<9} {criterion:<10} {1e3 * t_fb:10.1f} {1e3 * t_eff:12.1f} {t_eff / t_fb:6.2f} "
                  f"{row['direct_sparsity']:8.4f} {row['effective_sparsity']:9.4f}")
    if args.transformers:
        transformers_rows(args.sparsity, repeats)


def transformers_rows(sparsity: float, repeats: int) -> None:
    """BERT (4 layers, width 256, 128 tokens) and ViT (4 layers, width 192, 32x32 images of 4x4 patches),
    random pruning of every weight but the embeddings' at ``sparsity``."""
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: no transformers rows")
        return
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    models = {
        "bert": (transformers.BertModel(transformers.BertConfig(
            vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
            max_position_embeddings=128)), {"input_ids": torch.randint(1, 1000, (1, 128))}),
        "vit": (transformers.ViTModel(transformers.ViTConfig(
            image_size=32, patch_size=4, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
            intermediate_size=768)), {"pixel_values": torch.randn(1, 3, 32, 32)}),
    }
    for name, (model, example) in models.items():
        gen = torch.Generator().manual_seed(0)
        masks = {k: torch.rand(p.shape, generator=gen) >= sparsity for k, p in model.named_parameters()
                 if p.dim() > 1 and "embeddings" not in k}

        def forward_backward(model=model, example=example) -> None:
            model.zero_grad(set_to_none=True)
            out = model(**example)
            out.last_hidden_state.sum().backward()

        def effective(model=model, masks=masks, example=example) -> None:
            effective_masks(model, masks, example_input=example)

        t_fb = median_seconds(forward_backward, repeats)
        t_eff = median_seconds(effective, repeats)
        row = effective_report(model, masks, example_input=example).to_row()
        print(f"{name:<9} {'random':<10} {1e3 * t_fb:10.1f} {1e3 * t_eff:12.1f} {t_eff / t_fb:6.2f} "
              f"{row['direct_sparsity']:8.4f} {row['effective_sparsity']:9.4f}")


if __name__ == "__main__":
    main()
