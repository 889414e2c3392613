"""The CPAIOR 2020 reproduction row with the authors' released training recipe, in hidden units.

Serra, Kumar & Ramalingam, "Lossless Compression of Deep Neural Networks" (CPAIOR 2020), Table 1,
2 x 100 MNIST: 97.14% accuracy, 36.7 + 24.9 of the 200 hidden units removed = 30.8% "network
compression" (hidden units removed / hidden units, not connections). Their released training script
(``train_fcnn.py`` of github.com/yuxwind/ExactCompression, the NeurIPS 2021 follow-up's code) trains
with plain SGD (lr 0.01, momentum 0.9, no weight decay), batch 128, 121 epochs, ``StepLR(step_size=50,
gamma=0.1)`` stepped at the start of every epoch under torch 1.2 (so the rate drops before epochs 49
and 99, 0-based: ``milestones=[49, 99]``), an L1 penalty ``l1 * sum |W|`` over all Linear weights, NLL
of log-softmax (= cross-entropy), Kaiming-normal weights (fan-in) and zero biases (the zoo's
initialisation), MNIST pixels in [0, 1] without augmentation. L1 = 5e-4 as in
``experiments/exact_compression/run.py``.

Per seed: train with :func:`prunelab.train.fit`, then :func:`find_stable_neurons` over [0, 1]^784
(training + test images as witnesses, per-unit MILPs with ``--time-limit`` seconds) and
:func:`compress` (verified on the test set and 10^4 random points). One CSV row per seed and a
mean ± sample std summary.

    python experiments/exact_compression/units_recipe.py --data-root ../shared/data --seeds 0,1,2,3,4
    python experiments/exact_compression/units_recipe.py --data-root ../shared/data --epochs 2 --seeds 0  # smoke

Resumable: each seed's row is written to OUT/runs/<key>.json and skipped when present; trained
weights go to MODELS/<key>.safetensors (outside git by default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from prunelab.analysis.exact import compress, find_stable_neurons
from prunelab.data import load
from prunelab.models import create
from prunelab.report.tables import write_csv
from prunelab.train import TrainConfig, evaluate, fit, load_checkpoint, save_checkpoint
from prunelab.utils import atomic_write_json, atomic_write_text, seed_everything

PAPER = {"test_acc": 0.9714, "neurons_removed_fraction": 0.308}
SUMMARY = ["test_acc", "neurons_removed_fraction", "connections_removed_fraction", "inactive_removed",
           "active_folded", "stably_inactive", "stably_active", "unresolved"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=os.environ.get("PRUNELAB_DATA"), help="MNIST root (default $PRUNELAB_DATA)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=121)
    p.add_argument("--milestones", default="49,99", help="epochs (0-based) where lr is multiplied by 0.1")
    p.add_argument("--l1", type=float, default=5e-4)
    p.add_argument("--widths", default="100,100")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds of LP + MILP per network")
    p.add_argument("--out", default="experiments/exact_compression/results/units_recipe")
    p.add_argument("--models", default="out/exact_compression_units_models", help="trained weights (git-ignored)")
    return p.parse_args(argv)


def one_seed(args: argparse.Namespace, data, seed: int) -> dict:
    widths = [int(w) for w in args.widths.split(",")]
    milestones = [int(m) for m in args.milestones.split(",") if m.strip() and int(m) < args.epochs]
    key = f"mlp{'x'.join(map(str, widths))}_l1{args.l1:g}_e{args.epochs}_m{'-'.join(map(str, milestones))}_s{seed}"
    path = Path(args.out) / "runs" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    seed_everything(seed)
    model = create("mlp", widths=widths)
    ckpt = Path(args.models) / f"{key}.safetensors"
    t0 = time.perf_counter()
    if ckpt.exists():
        load_checkpoint(ckpt, model)
    else:
        config = TrainConfig(
            optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0, batch_size=128, epochs=args.epochs,
            lr_schedule="step" if milestones else "constant", milestones=milestones, gamma=0.1,
            l1=args.l1, seed=seed, device="cpu", eval_every=0,
        )
        fit(model, data, config, progress=False)
        save_checkpoint(ckpt, model, {"key": key})
    train_s = time.perf_counter() - t0
    model.eval()
    acc = evaluate(model, data.x_test, data.y_test).accuracy
    stable = find_stable_neurons(model, (0.0, 1.0), data=torch.cat([data.x_train, data.x_test]),
                                 time_limit=args.time_limit, method="per_unit", seed=seed)
    result = compress(model, stable, data=data.x_test, seed=seed)
    totals = stable.totals()
    row = {
        "key": key, "seed": seed, "epochs": args.epochs, "milestones": "-".join(map(str, milestones)),
        "l1": args.l1, "test_acc": acc,
        "compressed_test_acc": evaluate(result.model, data.x_test, data.y_test).accuracy,
        "stably_inactive": totals["inactive"], "stably_active": totals["active"],
        "unstable": totals["unstable"], "unresolved": totals["unresolved"],
        "stable_per_layer": ";".join(f"{r['stably_inactive']}+{r['stably_active']}" for r in stable.to_rows()),
        **result.to_row(),
        "train_s": round(train_s, 1), "stability_s": round(stable.timings["total"], 1),
    }
    atomic_write_json(path, row)
    return row


def summary(rows: list[dict]) -> str:
    head = f"# CPAIOR 2020 2 x 100 MNIST row, released recipe, L1 = {rows[0]['l1']:g}, {rows[0]['epochs']} epochs"
    lines = [f"{head} ({len(rows)} seeds)\n",
             "| metric | mean | std | min | max | paper |", "|---|---|---|---|---|---|"]
    for name in SUMMARY:
        vals = [float(r[name]) for r in rows]
        std = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        paper = PAPER.get(name, "")
        lines.append(f"| {name} | {statistics.mean(vals):.4g} | {std:.2g} | {min(vals):.4g} | {max(vals):.4g} | {paper} |")
    layers = list(zip(*[[int(v) for v in r["neurons_removed_per_layer"].split(",")] for r in rows]))
    shown = ", ".join(f"layer {k + 1}: {statistics.mean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0:.1f}"
                      for k, v in enumerate(layers))
    lines.append(f"\nUnits removed per layer (mean ± std): {shown}; paper 36.7 and 24.9 (of 100 each).\n")
    if len(rows) > 1:
        lines.append("Gap to the paper in standard errors of our mean (std / sqrt(seeds)):")
        for name, paper in PAPER.items():
            vals = [float(r[name]) for r in rows]
            se = statistics.stdev(vals) / len(vals) ** 0.5
            gap = statistics.mean(vals) - paper
            lines.append(f"- {name}: {100 * gap:+.2f} points, standard error {100 * se:.2f} points, {gap / se:+.1f} SE")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    data = load("mnist", root=args.data_root, normalize=False)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        t = time.perf_counter()
        row = one_seed(args, data, seed)
        rows.append(row)
        print(f"seed {seed}: acc {row['test_acc']:.4f}, units removed {row['neurons_removed']} "
              f"({row['neurons_removed_fraction']:.1%}; per layer {row['neurons_removed_per_layer']}; "
              f"{row['inactive_removed']} inactive + {row['active_folded']} active), connections removed "
              f"{row['connections_removed_fraction']:.1%}, unresolved {row['unresolved']} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    out = Path(args.out)
    done = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    done = [r for r in done if r["epochs"] == args.epochs and r["l1"] == args.l1]
    write_csv(out / "results.csv", done)
    atomic_write_text(out / "summary.md", summary(done))
    print(summary(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
