"""Reproduce recall distortion under pruning (Good, Lin, Yu, Sieg, Fergurson, Zhe, Wieczorek & Serra,
NeurIPS 2022): iterative magnitude pruning (20 % of the remaining weights per round, weights rewound
to their initialisation and retrained after each round, output layer not pruned, as in the
lottery-ticket code the authors build on) with two criteria, ``magnitude`` and the undecayed ``upa``; per-class recall after every
round, the intensification measures of :mod:`prunelab.analysis.recall` against the unpruned model of
the same seed, and their statistics across seeds and pruning ratios.

    python experiments/recall/run.py --quick                  # ~1 minute smoke test
    python experiments/recall/run.py                          # reduced CPU setting (~10-15 minutes)
    python experiments/recall/run.py --full --device cuda     # LeNet-300-100, paper-scale training (GPU)
    python experiments/recall/run.py --full --model resnet20 --device cuda   # ResNet-20 on CIFAR-10 (GPU)

Reduced setting (default): LeNet-300-100 on all of MNIST, SGD lr 0.1, weight decay 5e-4, batch 128,
2 epochs dense and 2 per round, 12 rounds (to 93 % sparsity), 2 seeds. ``--full``: 40 epochs per round,
20 rounds (98.8 %), 5 seeds; ResNet-20: SGD lr 0.1, momentum 0.9, weight decay 1e-4, 160 epochs with
10x decays at 80 and 120, augmentation, 15 rounds. The ``upa`` weight decay lambda is the training
weight decay. Resumable: finished rounds (``runs/<criterion>_seed<k>/round_<r>/result.json``) are
reused, and an interrupted run continues from its last finished round.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from statistics import mean
from typing import Any

import torch
from safetensors.torch import load_file

import prunelab.pruning.upa  # noqa: F401  (registers the "upa" criterion)
from prunelab import data as data_mod
from prunelab import models
from prunelab.analysis.recall import distortion_rows, summarize
from prunelab.errors import PrunelabError
from prunelab.pruning.api import prune
from prunelab.pruning.enforce import MaskEnforcer
from prunelab.masks import Masks
from prunelab.report.tables import write_csv
from prunelab.train import TrainConfig, evaluate, fit, save_state_dict
from prunelab.utils import atomic_write_json, atomic_write_text, resolve_device

CRITERIA = ("magnitude", "upa")
RATE = 0.2
# open_lth's recipes (models/mnist_lenet.py, models/cifar_resnet.py), the output layer is not pruned;
# LeNet's weight decay 5e-4 is our addition (open_lth has none), so that upa's lambda is the training decay.
LENET = dict(model="lenet300", dataset="mnist", optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=5e-4,
             batch_size=128, milestones=[], augment=False, exclude=("5.weight",))
RESNET = dict(model="resnet20", dataset="cifar10", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
              batch_size=128, augment=True, exclude=("fc.weight",))
SETTINGS: dict[str, dict[str, Any]] = {
    "quick": dict(LENET, dense_epochs=1, epochs=1, rounds=3, seeds=1, n_train=5000, n_test=2000),
    "reduced": dict(LENET, dense_epochs=2, epochs=2, rounds=12, seeds=2, n_train=None, n_test=None),
    "full": dict(LENET, dense_epochs=40, epochs=40, rounds=20, seeds=5, n_train=None, n_test=None),
    "full_resnet20": dict(RESNET, dense_epochs=160, epochs=160, milestones=[80, 120], rounds=15, seeds=5,
                          n_train=None, n_test=None),
}
PAPER_CLAIMS = [
    ("intensification at high pruning ratios", "alpha > 1/2 at the highest ratio"),
    ("de-intensification at low pruning ratios", "alpha < 1/2 at the lowest ratio"),
    ("intensification grows with the pruning ratio", "positive slope of alpha on the ratio"),
    ("undecayed pruning (upa) intensifies less than magnitude pruning", "mean alpha(upa) < mean alpha(magnitude)"),
]


def train_config(s: dict[str, Any], epochs: int, seed: int, device: torch.device) -> TrainConfig:
    return TrainConfig(optimizer=s["optimizer"], lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"],
                       epochs=epochs, batch_size=s["batch_size"], augment=s["augment"], seed=seed, device=str(device),
                       lr_schedule="step" if s.get("milestones") else "constant", milestones=s.get("milestones") or [],
                       eval_every=0)


def record(s: dict[str, Any], criterion: str, seed: int, rnd: int, sparsity: float, model: torch.nn.Module,
           ds: Any) -> dict[str, Any]:
    ev = evaluate(model, ds.x_test, ds.y_test)
    return {"dataset": s["dataset"], "model": s["model"], "criterion": criterion, "seed": seed, "round": rnd,
            "sparsity": round(sparsity, 4), "test_accuracy": ev.accuracy,
            "per_class_recall": ";".join(f"{r:.6f}" for r in ev.per_class_recall)}


def dense_stage(s: dict[str, Any], seed: int, ds: Any, device: torch.device, out: Path) -> tuple[dict, dict, dict]:
    """(row, init state, trained state) of the unpruned model of ``seed`` (trained once, shared)."""
    d = out / "dense" / f"seed{seed}"
    if (d / "result.json").exists():
        return (json.loads((d / "result.json").read_text()), load_file(str(d / "init.safetensors")),
                load_file(str(d / "model.safetensors")))
    torch.manual_seed(seed)
    model = models.create(s["model"], num_classes=ds.num_classes, input_shape=ds.input_shape).to(device)
    d.mkdir(parents=True, exist_ok=True)
    save_state_dict(d / "init.safetensors", model.state_dict())
    fit(model, ds, train_config(s, s["dense_epochs"], seed, device), progress=False)
    save_state_dict(d / "model.safetensors", model.state_dict())
    row = record(s, "dense", seed, 0, 0.0, model, ds)
    atomic_write_json(d / "result.json", row)
    return row, load_file(str(d / "init.safetensors")), load_file(str(d / "model.safetensors"))


def imp_run(s: dict[str, Any], criterion: str, seed: int, ds: Any, device: torch.device, out: Path,
            init: dict, trained: dict) -> list[dict[str, Any]]:
    """Rounds 1..R of IMP with ``criterion``; finished rounds are read back, not recomputed."""
    torch.manual_seed(seed)
    model = models.create(s["model"], num_classes=ds.num_classes, input_shape=ds.input_shape).to(device)
    rows, weights = [], trained
    masks = Masks.ones(model, exclude=s["exclude"])
    for rnd in range(1, s["rounds"] + 1):
        rdir = out / "runs" / f"{criterion}_seed{seed}" / f"round_{rnd:02d}"
        if (rdir / "result.json").exists():
            rows.append(json.loads((rdir / "result.json").read_text()))
            masks = Masks.load(rdir / "masks.safetensors", device=device)
            weights = load_file(str(rdir / "model.safetensors"))
            continue
        model.load_state_dict(weights)
        g = torch.Generator().manual_seed(1000 * seed + rnd)
        idx = torch.randperm(len(ds.y_train), generator=g)[: s["batch_size"]].to(ds.x_train.device)
        level = 1.0 - (1.0 - RATE) ** rnd
        masks = prune(model, level, criterion, "global", data=(ds.x_train[idx], ds.y_train[idx]), seed=seed,
                      masks=masks, options={"weight_decay": s["weight_decay"]})
        model.load_state_dict(init)  # rewind the kept weights to their initialisation
        masks.apply(model)
        fit(model, ds, train_config(s, s["epochs"], seed + rnd, device), callbacks=[MaskEnforcer(masks)],
            progress=False)
        row = record(s, criterion, seed, rnd, level, model, ds)
        row["measured_sparsity"] = masks.sparsity()
        rdir.mkdir(parents=True, exist_ok=True)
        masks.save(rdir / "masks.safetensors")
        save_state_dict(rdir / "model.safetensors", model.state_dict())
        atomic_write_json(rdir / "result.json", row)
        weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        rows.append(row)
        print(f"{criterion:9s} seed {seed} round {rnd:2d}: sparsity {level:.3f}  acc {row['test_accuracy']:.4f}",
              flush=True)
    return rows


def fmt(v: float, spec: str = ".3f") -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def report(rows: list[dict], dist: list[dict], name: str, s: dict[str, Any], device: torch.device, out: Path) -> str:
    stats_alpha = summarize(dist)
    stats_slope = summarize(dist, measure="distortion_slope")
    lines = [f"# Recall distortion under iterative pruning: {s['model']} on {s['dataset']} ({name} setting)", ""]
    if not name.startswith("full"):
        lines += [f"{name.capitalize()} setting on {device}: {s['dense_epochs']} dense epochs, {s['epochs']} epochs per round, "
                  f"{s['rounds']} rounds of {RATE:.0%}, {s['seeds']} seed(s), weight decay {s['weight_decay']} "
                  "(also upa's lambda). The paper-scale settings (`--full`) need a GPU; none was available here.", ""]
    lines += ["alpha = fraction of classes whose recall moved further from the accuracy (intensified); "
              "beta = slope of the change in recall/accuracy on the unpruned deviation (> 0: intensification).", "",
              "| criterion | sparsity | n | accuracy | mean alpha [95% CI] | mean beta |", "|---|---|---|---|---|---|"]
    slope_means = {(r["criterion"], r["sparsity"]): r["mean_distortion_slope"] for r in stats_slope["by_ratio"]}
    for r in stats_alpha["by_ratio"]:
        accs = [x["test_accuracy"] for x in dist if x["criterion"] == r["criterion"] and x["sparsity"] == r["sparsity"]]
        lines.append(f"| {r['criterion']} | {r['sparsity']:.3f} | {r['n']} | {mean(accs):.4f} | "
                     f"{fmt(r['mean_intensification_ratio'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] | "
                     f"{fmt(slope_means[(r['criterion'], r['sparsity'])])} |")
    lines += ["", "Linear trend of alpha on the pruning ratio (scipy.stats.linregress over runs and rounds):", "",
              "| criterion | n | slope [95% CI] | p | ratio where alpha = 1/2 |", "|---|---|---|---|---|"]
    for t in stats_alpha["trend"]:
        lines.append(f"| {t['criterion']} | {t['n']} | {fmt(t['slope'])} [{fmt(t['slope_ci_low'])}, "
                     f"{fmt(t['slope_ci_high'])}] | {fmt(t['p_value'], '.3g')} | {fmt(t['neutral_crossing'])} |")
    lines += ["", "Per-class recall (mean over seeds):", ""]
    n_classes = len(rows[0]["per_class_recall"].split(";"))
    lines += ["| criterion | sparsity | " + " | ".join(f"c{c}" for c in range(n_classes)) + " |",
              "|---|---|" + "---|" * n_classes]
    keys = sorted({(r["criterion"], r["sparsity"]) for r in rows}, key=lambda k: (k[0] != "dense", k[0], k[1]))
    for crit, sp in keys:
        rec = [[float(v) for v in r["per_class_recall"].split(";")] for r in rows
               if r["criterion"] == crit and r["sparsity"] == sp]
        lines.append(f"| {crit} | {sp:.3f} | " + " | ".join(f"{mean(c):.3f}" for c in zip(*rec)) + " |")
    lines += ["", "Paper claims (Good et al. 2022) beside ours:", "", "| paper | test | ours |", "|---|---|---|"]
    by = {c: [r for r in stats_alpha["by_ratio"] if r["criterion"] == c] for c in CRITERIA}
    for claim, test in PAPER_CLAIMS:
        lines.append(f"| {claim} | {test} | {_verdict(claim, by, stats_alpha['trend'])} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "summary.md", text)
    return text


def _verdict(claim: str, by: dict[str, list[dict]], trend: list[dict]) -> str:
    key = "mean_intensification_ratio"
    parts = []
    if claim.startswith("intensification at high"):
        parts = [f"{c}: {fmt(rs[-1][key])}" for c, rs in by.items() if rs]
    elif claim.startswith("de-intensification"):
        parts = [f"{c}: {fmt(rs[0][key])}" for c, rs in by.items() if rs]
    elif claim.startswith("intensification grows"):
        parts = [f"{t['criterion']}: slope {fmt(t['slope'])} (p {fmt(t['p_value'], '.2g')})" for t in trend]
    else:
        means = {c: mean(r[key] for r in rs if not math.isnan(r[key])) for c, rs in by.items()
                 if any(not math.isnan(r[key]) for r in rs)}
        parts = [f"{c}: {fmt(m)}" for c, m in means.items()]
        if len(means) == 2:
            parts.append("agrees" if means["upa"] < means["magnitude"] else "does not agree")
    return "; ".join(parts)


def plot(rows: list[dict], dist: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    dense = [r for r in rows if r["criterion"] == "dense"]
    for ax, crit in zip(axes[:2], CRITERIA):
        pts = sorted({r["sparsity"] for r in rows if r["criterion"] == crit})
        series = [[float(v) for v in dense[0]["per_class_recall"].split(";")]]
        for sp in pts:
            rec = [[float(v) for v in r["per_class_recall"].split(";")] for r in rows
                   if r["criterion"] == crit and r["sparsity"] == sp]
            series.append([mean(c) for c in zip(*rec)])
        for c, ys in enumerate(zip(*series)):
            ax.plot([0.0, *pts], ys, marker=".", label=f"class {c}")
        ax.set_title(f"{crit}: per-class recall")
        ax.set_xlabel("sparsity")
    axes[0].legend(fontsize=6)
    for crit in CRITERIA:
        pts = sorted({r["sparsity"] for r in dist if r["criterion"] == crit})
        ys = [mean(r["intensification_ratio"] for r in dist if r["criterion"] == crit and r["sparsity"] == sp)
              for sp in pts]
        axes[2].plot(pts, ys, marker="o", label=crit)
    axes[2].axhline(0.5, color="grey", lw=0.8)
    axes[2].set_title("intensification ratio alpha")
    axes[2].set_xlabel("sparsity")
    axes[2].legend()
    fig.tight_layout()
    tmp = out / ".recall.png.tmp"
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(out / "recall.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1-minute smoke test (MNIST subset)")
    size.add_argument("--full", action="store_true", help="paper-scale training (needs a GPU)")
    p.add_argument("--model", choices=("lenet300", "resnet20"), default="lenet300",
                   help="resnet20 (CIFAR-10) needs --full")
    p.add_argument("--out", type=Path, default=Path("out/recall"), help="output folder (default out/recall)")
    p.add_argument("--data-root", default=None, help="dataset folder (default $PRUNELAB_DATA)")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    args = p.parse_args(argv)
    name = "quick" if args.quick else "full" if args.full else "reduced"
    if args.model == "resnet20":
        if name != "full":
            print("error: --model resnet20 is the paper-scale CIFAR-10 run: add --full (and use a GPU)", file=sys.stderr)
            return 2
        name = "full_resnet20"
    s = dict(SETTINGS[name])
    for key in ("seeds", "rounds"):
        if getattr(args, key) is not None:
            if getattr(args, key) < 1:
                print(f"error: --{key} must be >= 1, got {getattr(args, key)}", file=sys.stderr)
                return 2
            s[key] = getattr(args, key)
    torch.set_num_threads(max(1, args.threads))
    try:
        device = resolve_device(args.device)
        if name.startswith("full") and device.type != "cuda":
            print("warning: --full trains for days without a GPU", file=sys.stderr)
        ds = data_mod.load(s["dataset"], root=args.data_root, download=False)
        ds = replace(ds, x_train=ds.x_train[: s["n_train"]], y_train=ds.y_train[: s["n_train"]],
                     x_test=ds.x_test[: s["n_test"]], y_test=ds.y_test[: s["n_test"]]).to(device)
        out = args.out / name
        rows: list[dict[str, Any]] = []
        for seed in range(s["seeds"]):
            dense_row, init, trained = dense_stage(s, seed, ds, device, out)
            rows.append(dense_row)
            for criterion in CRITERIA:
                rows += imp_run(s, criterion, seed, ds, device, out, init, trained)
                write_csv(out / "results.csv", rows)
        dist = distortion_rows(rows, match_keys=("dataset", "model", "seed"))
        write_csv(out / "distortion.csv", dist)
        print(report(rows, dist, name, s, device, out))
        plot(rows, dist, out)
    except PrunelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
