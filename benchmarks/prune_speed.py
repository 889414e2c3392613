"""How long computing masks takes on VGG-16 (CIFAR-10 shape), against torch's own global pruning.

Times ``prunelab.prune`` with magnitude/global, SNIP (one batch of 128 random CIFAR-shaped inputs) and
SynFlow (100 iterations; ``--quick``: 5), and the same global magnitude masks through
``torch.nn.utils.prune.global_unstructured`` in the same process, on fresh copies of one model.
Prints the times and the ratio torch / ours (> 1 means ours is faster).

    python benchmarks/prune_speed.py --quick
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import prunelab
from prunelab.models import create
from prunelab.pruning import Masks, from_torch_prune


def build_model() -> tuple[nn.Module, str]:
    return create("vgg16", num_classes=10, input_shape=(3, 32, 32)), "prunelab.models vgg16"


def best_of(repeats: int, base: nn.Module, fn: Callable[[nn.Module], object]) -> tuple[float, object]:
    """Minimum wall time over ``repeats`` runs, each on a fresh copy of ``base`` (copy not timed)."""
    times, result = [], None
    for _ in range(repeats):
        model = copy.deepcopy(base)
        start = time.perf_counter()
        result = fn(model)
        times.append(time.perf_counter() - start)
    return min(times), result


def torch_global_magnitude(model: nn.Module, amount: int) -> Masks:
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
    return from_torch_prune(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="SynFlow with 5 iterations, 1 repeat")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    synflow_iterations = 5 if args.quick else 100

    torch.manual_seed(0)
    base, source = build_model()
    base = base.to(args.device)
    total = Masks.ones(base).num_total()
    amount = round(args.sparsity * total)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g))
    print(f"model: {source}, {total:,} prunable weights, sparsity {args.sparsity} "
          f"({amount:,} pruned), device {args.device}, {torch.get_num_threads()} thread(s)")

    t_ours, ours = best_of(repeats, base, lambda m: prunelab.prune(m, amount / total, "magnitude", "global"))
    t_torch, theirs = best_of(repeats, base, lambda m: torch_global_magnitude(m, amount))
    same = ours == theirs.to(ours[next(iter(ours))].device)
    print(f"magnitude/global  prunelab {t_ours * 1e3:9.1f} ms   torch global_unstructured "
          f"{t_torch * 1e3:9.1f} ms   torch/ours = {t_torch / t_ours:5.2f}   identical masks: {same}")

    t_snip, _ = best_of(repeats, base, lambda m: prunelab.prune(m, args.sparsity, "snip", data=batch))
    print(f"snip (1 batch of 128)          {t_snip:8.2f} s")
    t_flow, _ = best_of(1, base, lambda m: prunelab.prune(m, args.sparsity, "synflow", iterations=synflow_iterations))
    print(f"synflow ({synflow_iterations} iterations)      {t_flow:8.2f} s   "
          f"({t_flow / synflow_iterations * 1e3:.0f} ms per iteration)")


if __name__ == "__main__":
    main()
