"""Jumpstart regularisation on deep thin MLPs against plain training (Riera et al., CPAIOR 2022).

For each architecture (depth x width of the hidden layers) and seed, the same initial weights are
trained twice, plainly and with jumpstart (strength ``lambda``, rho 0.5, L2-norm aggregation, the
authors' defaults), and we record the test accuracy and, on the whole training set, the dead units
(never active), the linear units (always active) and the layers whose units are all dead.

    python experiments/jumpstart/run.py --quick                    # digits, < 1 minute
    python experiments/jumpstart/run.py --data-root /work/shared/data      # reduced: MNIST (~10 min)
    python experiments/jumpstart/run.py --full --data-root DIR     # the paper-scale grid

Reduced setting (default): MNIST, depth 20 x width 8 and depth 10 x width 16 (160 hidden units each:
deep and thin vs half as deep and twice as wide), Adam lr 1e-3, batch 128, 10 epochs, lambda 0.1,
3 seeds. Full
(``--full``): depths 5/10/20/30/50 x widths 4/8/16/32, 20 epochs, 3 seeds. Resumable per run
(``runs/<arch>_<method>_seed<k>.json``); writes ``results.csv`` and ``summary.md`` under ``OUT/<setting>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

import torch

from prunelab import data as data_mod
from prunelab import models
from prunelab.errors import PrunelabError
from prunelab.report.tables import write_csv
from prunelab.train import TrainConfig, fit
from prunelab.analysis.units import unit_report
from prunelab.train.jumpstart import Jumpstart
from prunelab.utils import atomic_write_json, atomic_write_text, resolve_device

SETTINGS: dict[str, dict[str, Any]] = {
    "full": dict(dataset="mnist", archs=[(d, w) for d in (5, 10, 20, 30, 50) for w in (4, 8, 16, 32)],
                 epochs=20, seeds=3),
    "reduced": dict(dataset="mnist", archs=[(20, 8), (10, 16)], epochs=10, seeds=3),
    "quick": dict(dataset="digits", archs=[(10, 8)], epochs=20, seeds=1),
}
PAPER = ("Riera et al. (2022): without jumpstart, deep thin ReLU networks often fail to train (units and whole "
         "layers die); with it they train, so a thinner and deeper network reaches the accuracy of a wider one "
         "with fewer parameters.")


def run_one(depth: int, width: int, method: str, seed: int, setting: dict[str, Any], strength: float, ds: Any,
            device: torch.device, out: Path) -> dict[str, Any]:
    path = out / "runs" / f"d{depth}w{width}_{method}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    started = time.time()
    torch.manual_seed(seed)
    model = models.create("mlp", num_classes=ds.num_classes, input_shape=ds.input_shape, widths=[width] * depth)
    config = TrainConfig(optimizer="adam", lr=1e-3, momentum=0.9, epochs=setting["epochs"], batch_size=128,
                         seed=seed, device=str(device), eval_every=0)
    callbacks = [Jumpstart(strength)] if method == "jumpstart" else []
    result = fit(model, ds, config, callbacks=callbacks, progress=False)
    report = unit_report(model, ds.x_train)
    row = {"depth": depth, "width": width, "method": method, "strength": strength if callbacks else 0.0,
           "seed": seed, "params": sum(p.numel() for p in model.parameters()),
           "test_acc": result.final.accuracy, "train_acc": result.history[-1]["train_acc"],
           "diverged": result.diverged, **report.to_row(), "seconds": round(time.time() - started, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, row)
    return row


def summary(name: str, setting: dict[str, Any], rows: list[dict[str, Any]], device: torch.device) -> str:
    lines = [f"# Jumpstart regularisation on deep thin MLPs ({name} setting, {setting['dataset']})", ""]
    if name != "full":
        lines += [f"{setting['epochs']} epochs, Adam lr 1e-3, {setting['seeds']} seed(s), on {device} (no GPU "
                  "was used). Dead / linear units are counted on the whole training set.", ""]
    lines += ["| depth x width | params | method | test acc (mean ± sd) | dead units | linear units | "
              "all-dead layers |", "|---|---|---|---|---|---|---|"]
    for depth, width in setting["archs"]:
        for method in ("plain", "jumpstart"):
            rs = [r for r in rows if (r["depth"], r["width"], r["method"]) == (depth, width, method)]
            if not rs:
                continue
            accs = [r["test_acc"] for r in rs]
            lines.append(f"| {depth} x {width} | {rs[0]['params']} | {method} | {mean(accs):.4f} ± {pstdev(accs):.4f} | "
                         f"{mean(r['dead_units'] for r in rs):.1f} / {rs[0]['units']} | "
                         f"{mean(r['linear_units'] for r in rs):.1f} | {mean(r['dead_layers'] for r in rs):.1f} |")
    gains = []
    for depth, width in setting["archs"]:
        plain = [r["test_acc"] for r in rows if (r["depth"], r["width"], r["method"]) == (depth, width, "plain")]
        jump = [r["test_acc"] for r in rows if (r["depth"], r["width"], r["method"]) == (depth, width, "jumpstart")]
        if plain and jump:
            gains.append(f"{depth} x {width}: {mean(jump) - mean(plain):+.4f}")
    lines += ["", f"**Paper:** {PAPER}", "", "**Ours:** test-accuracy change with jumpstart: " +
              ("; ".join(gains) if gains else "n/a") + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="digits, < 1 minute")
    size.add_argument("--full", action="store_true", help="the paper-scale grid")
    p.add_argument("--out", type=Path, default=Path("out/jumpstart"), help="output folder (default out/jumpstart)")
    p.add_argument("--data-root", default=None, help="folder with mnist/ (default $PRUNELAB_DATA)")
    p.add_argument("--dataset", default=None, help="override the setting's dataset (digits, mnist, fashion_mnist)")
    p.add_argument("--strength", type=float, default=0.1, help="jumpstart lambda (default 0.1)")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    args = p.parse_args(argv)
    name = "quick" if args.quick else "full" if args.full else "reduced"
    setting = dict(SETTINGS[name])
    if args.seeds is not None:
        setting["seeds"] = args.seeds
    if args.dataset is not None:
        setting["dataset"] = args.dataset
    torch.set_num_threads(1)
    try:
        device = resolve_device(args.device)
        ds = data_mod.load(setting["dataset"], root=args.data_root, download=False).to(device)
        out = args.out / name
        rows = []
        for seed in range(setting["seeds"]):
            for depth, width in setting["archs"]:
                for method in ("plain", "jumpstart"):
                    row = run_one(depth, width, method, seed, setting, args.strength, ds, device, out)
                    rows.append(row)
                    print(f"{depth} x {width} {method:9s} seed {seed}: test acc {row['test_acc']:.4f}, dead "
                          f"{row['dead_units']}/{row['units']}, linear {row['linear_units']} ({row['seconds']} s)",
                          flush=True)
                    write_csv(out / "results.csv", rows)
        text = summary(name, setting, rows, device)
        atomic_write_text(out / "summary.md", text)
        print(text)
    except PrunelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
