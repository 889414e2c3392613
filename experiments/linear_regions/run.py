"""Reproduce Cai et al. (CPAIOR 2023), "Getting Away with More Network Pruning: From Sparsity to
Geometry and Linear Regions": choosing per-layer densities that maximise the expected linear-region
bound (``lr_bound``) beats pruning every layer to the same density (``uniform``).

Protocol (the paper's, Sec. 6): a 2 x W ReLU MLP (W = 100 by default; 200 and 400 with --width) on
MNIST (Fashion-MNIST with --dataset fashion_mnist when its files are present), trained with SGD
(lr 0.01, batch 128) for 15 epochs; the two hidden layers are pruned by magnitude inside each layer
(output layer dense) at overall density D over the hidden weights, with per-layer densities from
``uniform`` or ``lr_bound``; then 15 epochs of fine-tuning with the mask enforced. Densities
{1, .01, .005, .0025, .001, .00075, .0005, .0001}, several seeds. Choice written down: plain SGD
(momentum 0), since the paper names only the learning rate and batch size.

Each run also records the regions counted exactly along segments between test images and on the
plane through three test images, the expected bound at the run's layer densities (analytic ranks)
and Serra et al.'s rank bound of the trained network.

    python experiments/linear_regions/run.py --quick                 # ~1 minute smoke test
    python experiments/linear_regions/run.py                         # 2x100 MNIST, 3 seeds
    python experiments/linear_regions/run.py --width 400 --seeds 0,1,2,3,4

Resumable: every run's result is written atomically to OUT/<tag>/runs/*.json and skipped when
present; the dense model of each seed is checkpointed (safetensors). ``results.csv``, ``results.md``
and the plot are rebuilt from the JSON files at the end (see report.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

import prunelab  # noqa: E402
import prunelab.pruning.lr_bound  # noqa: E402,F401  (registers the allocation)
from prunelab.analysis.affine import mlp_layers, widths as mlp_widths  # noqa: E402
from prunelab.analysis.regions import count_line, count_plane, expected_bound, model_bound  # noqa: E402
from prunelab.data import load  # noqa: E402
from prunelab.errors import PrunelabError  # noqa: E402
from prunelab.models import create  # noqa: E402
from prunelab.pruning import MaskEnforcer  # noqa: E402
from prunelab.train import TrainConfig, evaluate, fit, load_checkpoint, save_checkpoint  # noqa: E402
from prunelab.utils import atomic_write_json, resolve_device  # noqa: E402

DENSITIES = [1.0, 0.01, 0.005, 0.0025, 0.001, 0.00075, 0.0005, 0.0001]
ALLOCATIONS = ("uniform", "lr_bound")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~1 minute smoke test: MNIST subset, 1+1 epochs, 3 densities")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    p.add_argument("--width", type=int, default=100, choices=[100, 200, 400], help="hidden width W of the 2 x W MLP")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--densities", default=",".join(map(str, DENSITIES)), help="overall densities of the hidden layers")
    p.add_argument("--epochs", type=int, default=15, help="training epochs before pruning")
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lines", type=int, default=20, help="segments between test images on which regions are counted")
    p.add_argument("--data-root", default=None, help="dataset root (default $PRUNELAB_DATA or the user cache)")
    p.add_argument("--out", default=None, help="output folder (default out/linear_regions[_quick])")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def setup(args: argparse.Namespace) -> dict:
    if args.quick:
        args.epochs, args.finetune_epochs, args.seeds = 1, 1, "0"
        args.densities, args.lines = "1,0.01,0.001", 3
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    densities = [float(d) for d in args.densities.split(",") if d.strip()]
    if not seeds or any(s < 0 for s in seeds):
        raise PrunelabError(f"--seeds must be non-negative integers, got {args.seeds!r}")
    if not densities or any(not 0 < d <= 1 for d in densities):
        raise PrunelabError(f"--densities must be numbers in (0, 1], got {args.densities!r}")
    tag = f"{args.dataset}-2x{args.width}" + ("-quick" if args.quick else "")
    out = Path(args.out or ("out/linear_regions_quick" if args.quick else "out/linear_regions")) / tag
    return {"seeds": seeds, "densities": densities, "tag": tag, "out": out}


def load_data(args: argparse.Namespace):
    data = load(args.dataset, args.data_root, download=False)
    if args.quick:  # a fixed slice keeps the smoke test within a minute
        data = dataclasses.replace(
            data, x_train=data.x_train[:6000], y_train=data.y_train[:6000], x_test=data.x_test[:2000], y_test=data.y_test[:2000]
        )
    return data


def train_config(args: argparse.Namespace, epochs: int, seed: int) -> TrainConfig:
    return TrainConfig(
        optimizer="sgd", lr=args.lr, momentum=0.0, epochs=epochs, batch_size=args.batch_size, seed=seed, device=args.device
    )


def dense_model(args, data, seed: int, out: Path):
    """The trained dense 2 x W model of this seed (trained once, then loaded from its checkpoint)."""
    torch.manual_seed(seed)
    model = create("mlp", num_classes=data.num_classes, input_shape=data.input_shape, widths=[args.width, args.width])
    path = out / "dense" / f"seed{seed}.safetensors"
    if path.is_file():
        load_checkpoint(path, model)
        return model
    result = fit(model, data, train_config(args, args.epochs, seed), progress=False)
    save_checkpoint(path, model, {"seed": seed, "epochs": args.epochs, "test_accuracy": result.final.accuracy})
    return model


def count_regions(model, masks, data, lines: int, seed: int) -> dict:
    """Exact region counts along ``lines`` test-image segments and on one test-image plane."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_test), generator=g)[: 2 * lines + 3].tolist()
    x = data.x_test.double()
    per_line = [count_line(model, x[idx[2 * i]], x[idx[2 * i + 1]], masks).num_regions for i in range(lines)]
    a, b, c = idx[-3:]
    plane = count_plane(model, x[a], x[b], x[c], masks, max_regions=200_000)
    return {
        "line_regions_mean": float(np.mean(per_line)),
        "line_regions": per_line,
        "plane_regions": plane.num_regions,
        "plane_is_lower_bound": plane.is_lower_bound,
    }


def one_run(args, data, seed: int, density: float, allocation: str, dense, out: Path) -> dict:
    model = create("mlp", num_classes=data.num_classes, input_shape=data.input_shape, widths=[args.width, args.width])
    model.load_state_dict(dense.state_dict())
    layers = mlp_layers(model)
    ws = mlp_widths(layers)
    output = layers[-1].name
    start = time.perf_counter()
    masks = prunelab.prune(
        model, 1.0 - density, "magnitude", allocation, seed=seed, exclude=(output,), options={"widths": ws}
    )
    prune_seconds = time.perf_counter() - start
    device = resolve_device(args.device)
    after_prune = evaluate(model.to(device), data.x_test, data.y_test).accuracy
    result = fit(model, data, train_config(args, args.finetune_epochs, 1000 + seed), [MaskEnforcer(masks)], progress=False)
    model = model.cpu()
    masks = masks.to("cpu")
    layer_density = [float(masks[f"{l.name}.weight"].float().mean()) for l in layers[:-1]]
    row = {
        "dataset": args.dataset,
        "width": args.width,
        "seed": seed,
        "density": density,
        "allocation": allocation,
        "layer_densities": layer_density,
        "kept_hidden_weights": int(masks.num_kept()),
        "test_accuracy_after_prune": after_prune,
        "test_accuracy": result.final.accuracy,
        "test_loss": result.final.loss,
        "bound_expected_log2": expected_bound(ws[0], ws[1:-1], layer_density).log2,
        "bound_rank_log2": model_bound(model, masks).log2,
        "prune_seconds": prune_seconds,
        "finetune_seconds": result.time,
        "epochs": args.epochs,
        "finetune_epochs": args.finetune_epochs,
        "quick": bool(args.quick),
    }
    row.update(count_regions(model, masks, data, args.lines, seed))
    return row


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    plan = setup(args)
    out: Path = plan["out"]
    if args.epochs != 15 or args.finetune_epochs != 15:
        print(f"note: {args.epochs} + {args.finetune_epochs} epochs (the paper trains 15 + 15)")
    data = load_data(args)
    for seed in plan["seeds"]:
        dense = None
        for density in plan["densities"]:
            for allocation in ALLOCATIONS if density < 1 else ("uniform",):
                name = "dense" if density >= 1 else allocation
                path = out / "runs" / f"seed{seed}-{name}-d{density:g}.json"
                if path.is_file():
                    continue
                if dense is None:
                    dense = dense_model(args, data, seed, out)
                t0 = time.perf_counter()
                row = one_run(args, data, seed, density, allocation, dense, out)
                row["allocation"] = name
                atomic_write_json(path, row)
                print(
                    f"seed {seed} density {density:g} {name:>8}: acc {row['test_accuracy']:.4f} "
                    f"(after prune {row['test_accuracy_after_prune']:.4f}), line regions {row['line_regions_mean']:.1f}, "
                    f"plane {row['plane_regions']}, bound 2^{row['bound_expected_log2']:.1f} "
                    f"[{time.perf_counter() - t0:.1f}s]",
                    flush=True,
                )
    rows = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    csv_path = report.write_results(out, rows)
    print(report.build(csv_path, out, title=plan["tag"]))


if __name__ == "__main__":
    try:
        main()
    except PrunelabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
