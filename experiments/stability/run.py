"""Reproduce the generalization-stability tradeoff (Bartoldson, Morcos, Barbu & Erlebacher, NeurIPS 2020,
Fig. 2, VGG11-BN on CIFAR-10).

Five methods, each a training run with iterative filter pruning of VGG11-BN's last four convolutions
(30/30/30/90 % of their filters, L2-norm scores, the authors' code and config ``F2_VGG_*``):
no pruning, Prune_S 1 %, Prune_S 13 %, Prune_R 13 %, Prune_L 13 % (S/R/L = smallest/random/largest
filters; 1 % / 13 % = filters removed per pruning event, set by the retrain period). For each run:
mean pruning stability, best test accuracy after the last pruning event and the generalisation gap;
across runs: Pearson's r and Kendall's tau between stability and accuracy.

    python experiments/stability/run.py --quick            # ~1 minute smoke test
    python experiments/stability/run.py                    # reduced CPU setting (~10-15 minutes)
    python experiments/stability/run.py --full --device cuda   # the paper's setting (GPU)

Reduced setting (default): VGG11-BN with every width divided by 8, 5,000 CIFAR-10 training and 1,000
test images, 24 epochs, the pruning schedule compressed accordingly, one seed. Paper setting
(``--full``): full VGG11-BN and CIFAR-10, Adam lr 1e-3 decayed 10x at epochs 150 and 300, 325 epochs,
pruning epochs 3/4/5/6 to 150/150/150/275, retrain period 4 (1 %) or 40 (13 %), 10 seeds.
Resumable: finished runs (``runs/<method>_seed<k>/result.json``) are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any

import torch

from prunelab import data as data_mod
from prunelab import models
from prunelab.analysis.flatness import flatness
from prunelab.errors import PrunelabError
from prunelab.models.init import build_he_initialised
from prunelab.models.vgg import CONFIGS, VGG
from prunelab.report.tables import write_csv
from prunelab.train import TrainConfig, fit
from prunelab.analysis.stability import stability_correlations, stability_summary
from prunelab.pruning.instability import IterativeStructuredPruning, LayerSchedule
from prunelab.utils import atomic_write_json, atomic_write_text, resolve_device

LAYERS = ["features.15", "features.18", "features.22", "features.25"]  # VGG11-BN's last four convs
FRACTIONS = [0.3, 0.3, 0.3, 0.9]
METHODS = [("No Pruning", None, None), ("Prune_S 1%", "smallest", "1%"), ("Prune_S 13%", "smallest", "13%"),
           ("Prune_R 13%", "random", "13%"), ("Prune_L 13%", "largest", "13%")]
SETTINGS: dict[str, dict[str, Any]] = {
    "full": dict(epochs=325, milestones=[150, 300], starts=[3, 4, 5, 6], ends=[150, 150, 150, 275],
                 periods={"1%": 4, "13%": 40}, width_div=1, n_train=None, n_test=None, seeds=10),
    "reduced": dict(epochs=24, milestones=[11, 22], starts=[2, 2, 3, 3], ends=[11, 11, 11, 20],
                    periods={"1%": 1, "13%": 3}, width_div=8, n_train=5000, n_test=1000, seeds=1),
    "quick": dict(epochs=5, milestones=[4], starts=[1, 1, 1, 1], ends=[3, 3, 3, 3],
                  periods={"1%": 1, "13%": 2}, width_div=16, n_train=800, n_test=400, seeds=1),
}
FIG2_SUBSET = ("Prune_S 1%", "Prune_S 13%", "Prune_L 13%")  # the runs of the paper's Fig. 2 VGG correlation
PAPER_CLAIM = (
    "Bartoldson et al. (2020, abstract and Fig. 2, VGG11-BN / CIFAR-10, 10 seeds): pruning's benefit to "
    "generalization increases with its instability; across the Prune_S 1%, Prune_S 13% and Prune_L 13% runs, "
    "mean stability and best test accuracy are negatively correlated (Pearson's r and Kendall's tau < 0)."
)


def vgg11_bn(width_div: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if width_div == 1:
        return models.create("vgg11", num_classes=10, input_shape=(3, 32, 32))
    cfg = [c if c == "M" else max(1, int(c) // width_div) for c in CONFIGS["vgg11"]]
    return build_he_initialised(lambda: VGG(cfg, 3, 10, True))


def schedules(setting: dict[str, Any], period: int) -> list[LayerSchedule]:
    return [LayerSchedule(layer, frac, start, end, period)
            for layer, frac, start, end in zip(LAYERS, FRACTIONS, setting["starts"], setting["ends"])]


def subset(ds: Any, n_train: int | None, n_test: int | None) -> Any:
    from dataclasses import replace

    return replace(ds, x_train=ds.x_train[:n_train], y_train=ds.y_train[:n_train],
                   x_test=ds.x_test[:n_test], y_test=ds.y_test[:n_test])


def run_one(method: str, target: str | None, rate: str | None, seed: int, setting: dict[str, Any], ds: Any,
            device: torch.device, out: Path, with_flatness: bool) -> dict[str, Any]:
    run_dir = out / "runs" / f"{method.replace(' ', '_').replace('%', 'pct')}_seed{seed}"
    if (run_dir / "result.json").exists():
        return json.loads((run_dir / "result.json").read_text())
    started = time.time()
    model = vgg11_bn(setting["width_div"], seed)
    cfg = TrainConfig(optimizer="adam", lr=1e-3, momentum=0.9, epochs=setting["epochs"], batch_size=128,
                      lr_schedule="step", milestones=setting["milestones"], gamma=0.1, seed=seed, device=str(device))
    callbacks = []
    if target is not None:
        cb = IterativeStructuredPruning(schedules(setting, setting["periods"][rate]), "l2", target, seed=seed)
        callbacks.append(cb)
    result = fit(model, ds, cfg, callbacks=callbacks, progress=False)
    summary = stability_summary(result.history)
    row: dict[str, Any] = {"method": method, "seed": seed, **summary.to_row(),
                           "final_test_acc": result.final.accuracy}
    if callbacks:
        n_units = {x: g.num_units for x, g in cb.groups.items()}
        row["max_fraction_per_event"] = max(e["units"].get(x, 0) / n_units[x] for e in cb.events for x in n_units)
        row["filters_removed"] = sum(int(r.sum()) for r in cb.removed.values())
        atomic_write_json(run_dir / "events.json", cb.events)
    if with_flatness:
        flat = flatness(model, ds.x_test, ds.y_test, 1, samples=512, iters=20, seed=seed)
        row.update(flat.to_row())
    row["seconds"] = round(time.time() - started, 1)
    atomic_write_json(run_dir / "history.json", result.history)
    atomic_write_json(run_dir / "result.json", row)
    return row


def report(rows: list[dict[str, Any]], name: str, setting: dict[str, Any], out: Path, device: torch.device) -> str:
    lines = [f"# Generalization-stability tradeoff: VGG11-BN on CIFAR-10 ({name} setting)", ""]
    if name != "full":
        lines += [f"{name.capitalize()} setting on {device}: widths / {setting['width_div']}, {setting['n_train']} training "
                  f"and {setting['n_test']} test images, {setting['epochs']} epochs, "
                  f"{len({r['seed'] for r in rows})} seed(s). The paper-scale run (`--full`) needs a GPU; none was "
                  "available for these numbers.", ""]
    lines += ["| method | runs | mean stability (%) | best test acc after pruning | gen. gap | max filters/event |",
              "|---|---|---|---|---|---|"]
    for method, _, _ in METHODS:
        rs = [r for r in rows if r["method"] == method]
        if not rs:
            continue
        rates = [r["max_fraction_per_event"] for r in rs if r.get("max_fraction_per_event") is not None]
        rate = f"{100 * max(rates):.1f}%" if rates else "-"
        lines.append(f"| {method} | {len(rs)} | {mean(r['mean_stability'] for r in rs):.2f} | "
                     f"{mean(r['best_test_acc'] for r in rs):.4f} | "
                     f"{mean(r['generalization_gap'] for r in rs):.4f} | {rate} |")
    lines += ["", "Correlation between mean stability and best test accuracy across runs:", ""]
    pruned = [r for r in rows if r["method"] != "No Pruning"]
    fig2 = [r for r in rows if r["method"] in FIG2_SUBSET]
    for label, group in (("all runs", rows), ("pruned runs", pruned), ("the paper's Fig. 2 methods", fig2)):
        c = stability_correlations([r["mean_stability"] for r in group], [r["best_test_acc"] for r in group])
        lines.append(f"- {label} (n={int(c['n'])}): Pearson r = {c['pearson_r']:.3f} (p = {c['pearson_p']:.3g}), "
                     f"Kendall tau = {c['kendall_tau']:.3f} (p = {c['kendall_p']:.3g})")
    if math.isnan(c["kendall_tau"]):
        verdict = "cannot be judged (too few runs or constant values)"
    else:
        verdict = "agrees (negative correlation)" if c["kendall_tau"] < 0 else "does not agree (no negative correlation)"
        if c["kendall_p"] >= 0.05:
            verdict += f", but with p = {c['kendall_p']:.2g} over {int(c['n'])} runs it is not significant"
    lines += ["", f"**Paper:** {PAPER_CLAIM}", "", f"**Ours:** over the Fig. 2 methods, Kendall tau = "
              f"{c['kendall_tau']:.3f}: the qualitative claim (lower stability -> higher final accuracy) {verdict}."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "summary.md", text)
    return text


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, _, _ in METHODS:
        rs = [r for r in rows if r["method"] == method]
        if rs:
            ax.scatter([r["mean_stability"] for r in rs], [r["best_test_acc"] for r in rs], label=method, s=40)
    ax.set_xlabel("mean pruning stability (%)")
    ax.set_ylabel("best test accuracy after last pruning")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out / ".stability_vs_accuracy.png.tmp"
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    tmp.replace(out / "stability_vs_accuracy.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1-minute smoke test")
    size.add_argument("--full", action="store_true", help="the paper's setting (needs a GPU)")
    p.add_argument("--out", type=Path, default=Path("out/stability"), help="output folder (default out/stability)")
    p.add_argument("--data-root", default=None, help="folder with the CIFAR-10 binary files (default $PRUNELAB_DATA)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 1, or 10 with --full)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    p.add_argument("--flatness", action="store_true", help="also top Hessian eigenvalue and gradient second moment "
                   "on 512 test samples at the end of each run (always on with --full)")
    args = p.parse_args(argv)
    name = "quick" if args.quick else "full" if args.full else "reduced"
    setting = dict(SETTINGS[name])
    if args.seeds is not None:
        if args.seeds < 1:
            print(f"error: --seeds must be >= 1, got {args.seeds}", file=sys.stderr)
            return 2
        setting["seeds"] = args.seeds
    torch.set_num_threads(max(1, args.threads))
    try:
        device = resolve_device(args.device)
        if name == "full" and device.type != "cuda":
            print("warning: --full is the paper's 325-epoch setting; without a GPU it takes days", file=sys.stderr)
        ds = data_mod.load("cifar10", root=args.data_root, download=False)
        ds = subset(ds, setting["n_train"], setting["n_test"]).to(device)
        out = args.out / name
        rows = []
        for seed in range(setting["seeds"]):
            for method, target, rate in METHODS:
                row = run_one(method, target, rate, seed, setting, ds, device, out, args.flatness or name == "full")
                rows.append(row)
                print(f"{method:12s} seed {seed}: stability {row['mean_stability']:.2f}%  "
                      f"best acc {row['best_test_acc']:.4f}  ({row['seconds']} s)", flush=True)
                write_csv(out / "results.csv", rows)
        print(report(rows, name, setting, out, device))
        plot(rows, out)
    except PrunelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
