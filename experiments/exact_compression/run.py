"""Reproduce exact compression by ReLU stability on MNIST MLPs (Serra, Kumar & Ramalingam, "Lossless
Compression of Deep Neural Networks", CPAIOR 2020; Serra, Yu, Kumar & Ramalingam, "Scaling Up Exact
Neural Network Compression by ReLU Stability", NeurIPS 2021).

Protocol: MLPs of 2 x 100, 2 x 200, 2 x 400 and 3 x 100 ReLUs trained on MNIST pixels in [0, 1]
(no mean/std normalisation, so the domain is the box [0, 1]^784) with an L1 penalty ``l1 * sum |W|``
on all Linear weights (L1 grid 0 to 2e-4, plus CPAIOR's 5e-4). The papers' recipe is SGD (lr 0.01,
momentum 0.9, batch 128) for about 120 epochs with a step decay of the learning rate; on this CPU the
default is 25 epochs at a constant lr 0.01: with so few epochs a decay at 50%/75% leaves the L1
penalty too little time to kill units (measured: 8 epochs with the decay gave no stable unit at all).
``--epochs 120 --lr-schedule step`` is the papers' recipe. Then ``find_stable_neurons`` over the
box (training + test images as witnesses, HiGHS MILPs with ``--time-limit`` seconds; per-unit MILPs
by default: they prove the same sets as the paper's single MILP and are faster with HiGHS, see
benchmarks/exact_speed.py) and ``compress``, which checks the smaller network against the original
on the test set and 10^4 random points of the box. Reported: test accuracy (original and compressed:
identical by construction), stably active / inactive / unresolved units, neurons, layers and
connections (non-zero weights) removed, and the time of each stage.

The papers' figures, for comparison: CPAIOR 2020, 2 x 100 on MNIST with L1 = 5e-4 keeps 97.14%
accuracy with 30.8% of the network removed; NeurIPS 2021 removes up to 56% of the connections of
CIFAR-10 MLPs without hurting accuracy (and reports a median 183x speed-up of the single MILP over
the per-unit MILPs of CPAIOR 2020).

    python experiments/exact_compression/run.py --quick --data-root /work/shared/data   # ~1 minute
    python experiments/exact_compression/run.py --data-root /work/shared/data           # ~15 minutes
    python experiments/exact_compression/run.py --epochs 120 --lr-schedule step --seeds 0,1,2 --time-limit 600

Resumable: each run's result is written atomically to OUT/runs/<key>.json (and its trained model to
OUT/models/<key>.safetensors) and skipped when present; OUT/results.csv and OUT/results.md are
rebuilt from the JSON files at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from prunelab.analysis.exact import compress, find_stable_neurons
from prunelab.data import load
from prunelab.errors import PrunelabError
from prunelab.models import create
from prunelab.report.tables import write_csv
from prunelab.train import TrainConfig, evaluate, fit, load_checkpoint, save_checkpoint
from prunelab.utils import atomic_write_json, atomic_write_text, seed_everything

ARCHS = "100x2,200x2,400x2,100x3"
L1_GRID = "0,1e-4,2e-4,5e-4"
COLUMNS = [
    "arch", "l1", "seed", "epochs", "test_acc", "compressed_test_acc", "stably_active", "stably_inactive",
    "unstable", "unresolved", "neurons_removed", "neurons_before", "layers_before", "layers_after",
    "connections_removed_fraction", "train_s", "stability_s", "lp_s", "milp_s", "compress_s",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="~1 minute smoke test: 2 x 100, 5 epochs, L1 0 and 2e-3")
    p.add_argument("--archs", default=ARCHS, help="comma list of WIDTHxDEPTH, e.g. 100x2,400x2")
    p.add_argument("--l1", default=L1_GRID, help="comma list of L1 strengths")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--lr-schedule", default="constant", choices=["step", "constant"],
        help="step: x0.1 at 50%% and 75%% of training (the papers, with 120 epochs)",
    )
    p.add_argument("--time-limit", type=float, default=30.0, help="seconds of MILP per network")
    p.add_argument(
        "--method", default="per_unit", choices=["single_milp", "per_unit"],
        help="MILP stage; both give the same sets, per_unit is faster with HiGHS (benchmarks/exact_speed.py)",
    )
    p.add_argument("--data-root", default=None, help="dataset root (default $PRUNELAB_DATA or the user cache)")
    p.add_argument("--out", default=None, help="output folder (default out/exact_compression[_quick])")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.quick:
        args.archs, args.l1, args.seeds, args.epochs, args.time_limit = "100x2", "0,2e-3", "0", 5, 10.0
    if args.out is None:
        args.out = "out/exact_compression" + ("_quick" if args.quick else "")
    return args


def parse_arch(text: str) -> tuple[int, int]:
    try:
        width, depth = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise PrunelabError(f"architecture {text!r} not understood; use WIDTHxDEPTH, e.g. 100x2") from None
    if width <= 0 or depth <= 0:
        raise PrunelabError(f"architecture {text!r}: width and depth must be positive")
    return width, depth


def train_config(args: argparse.Namespace, l1: float, seed: int) -> TrainConfig:
    milestones = sorted({m for m in (args.epochs // 2, (3 * args.epochs) // 4) if 0 < m < args.epochs})
    if args.lr_schedule == "constant":
        milestones = []
    return TrainConfig(
        optimizer="sgd", lr=args.lr, momentum=0.9, batch_size=args.batch_size, epochs=args.epochs,
        lr_schedule="step" if milestones else "constant", milestones=milestones, gamma=0.1,
        l1=l1, seed=seed, device="cpu", eval_every=0,
    )


def one_run(args, data, width: int, depth: int, l1: float, seed: int, out: Path) -> dict:
    key = f"mlp{width}x{depth}_l1{l1:g}_s{seed}_e{args.epochs}" + ("_const" if args.lr_schedule == "constant" else "")
    path = out / "runs" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    seed_everything(seed)
    model = create("mlp", widths=[width] * depth)
    ckpt = out / "models" / f"{key}.safetensors"
    t0 = time.perf_counter()
    if ckpt.exists():
        load_checkpoint(ckpt, model)
    else:
        fit(model, data, train_config(args, l1, seed), progress=False)
        save_checkpoint(ckpt, model, {"key": key, "l1": l1, "seed": seed, "epochs": args.epochs})
    train_s = time.perf_counter() - t0
    model.eval()
    acc = evaluate(model, data.x_test, data.y_test).accuracy
    witnesses = torch.cat([data.x_train, data.x_test])
    stable = find_stable_neurons(
        model, data.input_box(0.0, 1.0), data=witnesses, time_limit=args.time_limit, method=args.method, seed=seed
    )
    t1 = time.perf_counter()
    result = compress(model, stable, data=data.x_test, seed=seed)
    compress_s = time.perf_counter() - t1
    small_acc = evaluate(result.model, data.x_test, data.y_test).accuracy
    totals = stable.totals()
    row = {
        "key": key, "arch": f"{width}x{depth}", "l1": l1, "seed": seed, "epochs": args.epochs,
        "test_acc": acc, "compressed_test_acc": small_acc,
        "stably_active": totals["active"], "stably_inactive": totals["inactive"],
        "unstable": totals["unstable"], "unresolved": totals["unresolved"],
        "train_s": round(train_s, 2), "stability_s": round(stable.timings["total"], 2),
        "search_s": round(stable.timings["search"], 2), "lp_s": round(stable.timings["lp"], 2),
        "milp_s": round(stable.timings["milp"], 2), "milp_solves": stable.milp_solves,
        "milp_candidates": stable.milp_candidates,
        "compress_s": round(compress_s, 2), "time_limit": args.time_limit, "method": args.method,
        **result.to_row(),
        "per_layer": stable.to_rows(),
    }
    atomic_write_json(path, row)
    return row


def markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = ""
    for r in rows:
        cells = []
        for c in COLUMNS:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        body += "| " + " | ".join(cells) + " |\n"
    note = (
        "\nPapers, for comparison: CPAIOR 2020 (2 x 100 MNIST, L1 = 5e-4): 97.14% accuracy, 30.8% "
        "compression; NeurIPS 2021: up to 56% of connections removed on CIFAR-10 without hurting "
        "accuracy. Ours use far fewer epochs (see `epochs`) and HiGHS instead of Gurobi, with a "
        "per-network MILP time limit: `unresolved` units were kept (treated as unstable).\n"
    )
    return "# Exact compression by ReLU stability (MNIST)\n\n" + head + body + note


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    archs = [parse_arch(a) for a in args.archs.split(",") if a.strip()]
    l1s = [float(v) for v in args.l1.split(",") if v.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    data = load("mnist", root=args.data_root, normalize=False)
    rows = []
    for width, depth in archs:
        for l1 in l1s:
            for seed in seeds:
                t = time.perf_counter()
                row = one_run(args, data, width, depth, l1, seed, out)
                rows.append(row)
                print(
                    f"{row['arch']} l1={l1:g} seed={seed}: acc {row['test_acc']:.4f}, stable "
                    f"{row['stably_active']} active / {row['stably_inactive']} inactive, unresolved "
                    f"{row['unresolved']}, connections removed {row['connections_removed_fraction']:.1%} "
                    f"({time.perf_counter() - t:.1f} s)",
                    flush=True,
                )
    all_rows = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    flat = [{k: v for k, v in r.items() if k != "per_layer"} for r in all_rows]
    write_csv(out / "results.csv", flat)
    atomic_write_text(out / "results.md", markdown(flat))
    print(f"wrote {out / 'results.csv'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
