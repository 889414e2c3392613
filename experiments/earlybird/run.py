"""Early-bird tickets of VGG-16 on CIFAR-10: when are they found, and are they as good as pruning late?

One dense training run (seeded) watches two early-bird rules at once, without stopping:

* the spline-partition rule (You et al., TMLR 2022): partition distance on a canvas, window 3, 0.16;
* the channel-mask rule (You et al., ICLR 2020): network-slimming masks at ratio p, window 4 (a FIFO
  of 5 masks), 0.1;

and keeps the weights at each early-bird epoch and at the end. Then, for every pruning ratio p
(fraction of conv channels removed, network slimming: global threshold on |gamma|, the EB paper's
pruning; ``--criteria spline`` adds spline node pruning):

* **EB ticket** (EB-Train's ``--refine ... --start-epoch e``): prune the early-bird weights of epoch e
  and train the pruned net on along the same learning-rate schedule to the last epoch, so dense and
  pruned epochs add up to the dense budget;
* **fully trained, then pruned** (network slimming, Liu et al. 2017): prune the final dense weights
  and fine-tune for ``finetune`` epochs at lr 0.01.

Training recipe of the EB paper: SGD lr 0.1, momentum 0.9, weight decay 1e-4, lr / 10 at 50 % and
75 % of training, crop+flip augmentation, L1 1e-4 on the BatchNorm scales.

    python experiments/earlybird/run.py --quick --data-root DIR     # < 1 minute smoke test
    python experiments/earlybird/run.py --data-root DIR             # reduced CPU setting (~10-15 min)
    python experiments/earlybird/run.py --full --device cuda        # the paper's setting (GPU)

DIR holds ``cifar-10-batches-bin`` (``/work/shared/data/unpack.sh DIR`` makes it; default
$PRUNELAB_DATA). Reduced setting: VGG-16-BN with widths / 8, 5,000 training and 2,000 test images,
24 epochs, p = 0.5, one seed. Paper setting (``--full``): full VGG-16-BN and CIFAR-10, 160 epochs
(milestones 80, 120), batch 256, p in {0.3, 0.5, 0.7}, canvas 100 x 100, fine-tuning 160 epochs.
Resumable: the dense run (``runs/dense_seed<k>/``) and every pruned run (``runs/<source>_e<epoch>_<criterion>
_p<p>_seed<k>/result.json``) are skipped when done. Writes ``results.csv`` (pruned runs),
``eb_curves.csv`` (distance per rule and epoch), ``summary.md`` and ``eb_distance.png`` under
``OUT/<setting>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from prunelab import data as data_mod
from prunelab import models
from prunelab.analysis.partition import plane_canvas, plot_distance_curve
from prunelab.errors import PrunelabError
from prunelab.models.init import build_he_initialised
from prunelab.models.vgg import CONFIGS, VGG
from prunelab.pruning.enforce import MaskEnforcer
from prunelab.pruning.spline import prune_units
from prunelab.pruning.structured import STRUCTURED, channel_groups, expand_unit_masks, weight_masks
from prunelab.report.tables import write_csv
from prunelab.train import TrainConfig, evaluate, fit, save_state_dict
from prunelab.pruning.earlybird import (
    MASK_THRESHOLD,
    PARTITION_THRESHOLD,
    BNScaleL1,
    ChannelMaskEarlyBird,
    PartitionEarlyBird,
)
from prunelab.utils import atomic_write_json, atomic_write_text, resolve_device

SETTINGS: dict[str, dict[str, Any]] = {
    "full": dict(epochs=160, milestones=[80, 120], batch=256, width_div=1, n_train=None, n_test=None,
                 ratios=[0.3, 0.5, 0.7], finetune=160, canvas=100, eval_every=5, seeds=1),
    "reduced": dict(epochs=24, milestones=[12, 18], batch=128, width_div=8, n_train=5000, n_test=2000,
                    ratios=[0.5], finetune=8, canvas=32, eval_every=4, seeds=1),
    "quick": dict(epochs=6, milestones=[3, 5], batch=128, width_div=16, n_train=1000, n_test=500,
                  ratios=[0.5], finetune=2, canvas=12, eval_every=0, seeds=1),
}
PAPER = ("You et al. (ICLR 2020) draw VGG-16 / CIFAR-10 early-bird tickets at about epoch 13-15 of 160 "
         "(under 10 % of training), and the retrained EB tickets match or beat the accuracy of pruning the "
         "fully trained network (network slimming) at p = 0.3-0.7; You et al. (TMLR 2022) find the spline "
         "partition settles equally early.")
FINETUNE_LR = 0.01


def vgg16_bn(width_div: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if width_div == 1:
        return models.create("vgg16", num_classes=10, input_shape=(3, 32, 32))
    cfg = [c if c == "M" else max(1, int(c) // width_div) for c in CONFIGS["vgg16"]]
    return build_he_initialised(lambda: VGG(cfg, 3, 10, True))


def train_config(setting: dict[str, Any], seed: int, device: torch.device, **changes: Any) -> TrainConfig:
    base = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, epochs=setting["epochs"], batch_size=setting["batch"],
                lr_schedule="step", milestones=setting["milestones"], gamma=0.1, augment=True, seed=seed,
                device=str(device), eval_every=setting["eval_every"])
    base.update(changes)
    return TrainConfig(**base)


def continued_config(setting: dict[str, Any], seed: int, device: torch.device, start: int) -> TrainConfig:
    """The dense schedule from epoch ``start`` on (EB-Train's ``--start-epoch``): same lr drops, shifted."""
    passed = sum(1 for m in setting["milestones"] if m <= start)
    later = [m - start for m in setting["milestones"] if m > start]
    return train_config(setting, seed + 1, device, epochs=setting["epochs"] - start, lr=0.1 * 0.1**passed,
                        milestones=later, lr_schedule="step" if later else "constant")


def canvas_for(ds: Any, resolution: int) -> torch.Tensor:
    """The reference canvas: the plane through the origin and two test images of different classes."""
    first = int((ds.y_test != ds.y_test[0]).nonzero()[0])
    zero = torch.zeros_like(ds.x_test[0].cpu())
    return plane_canvas(zero, ds.x_test[0].cpu(), ds.x_test[first].cpu(), resolution=resolution, margin=0.0).points


def dense_run(setting: dict[str, Any], seed: int, ds: Any, device: torch.device, out: Path) -> dict[str, Any]:
    run_dir = out / "runs" / f"dense_seed{seed}"
    if (run_dir / "result.json").exists():
        return json.loads((run_dir / "result.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model = vgg16_bn(setting["width_div"], seed)
    partition = PartitionEarlyBird(canvas_for(ds, setting["canvas"]))
    masks_eb = {p: ChannelMaskEarlyBird(p) for p in setting["ratios"]}
    res = fit(model, ds, train_config(setting, seed, device),
              callbacks=[BNScaleL1(1e-4), partition, *masks_eb.values()], progress=False)
    save_state_dict(run_dir / "final.safetensors", model.state_dict())
    found = {"partition": partition.found_epoch}
    if partition.ticket_state is not None:
        save_state_dict(run_dir / "eb_partition.safetensors", partition.ticket_state)
    curves = {"partition": partition.curve}
    for p, cb in masks_eb.items():
        found[f"mask_p{p}"] = cb.found_epoch
        curves[f"mask_p{p}"] = cb.curve
        if cb.ticket_state is not None:
            save_state_dict(run_dir / f"eb_mask_p{p}.safetensors", cb.ticket_state)
    result = {"seed": seed, "dense_test_acc": res.final.accuracy, "epochs": res.epochs, "found": found,
              "curves": curves, "seconds": round(time.time() - started, 1)}
    atomic_write_json(run_dir / "history.json", res.history)
    atomic_write_json(run_dir / "result.json", result)
    return result


def prune_channels(model: torch.nn.Module, criterion: str, ratio: float) -> tuple[Any, dict[str, torch.Tensor]]:
    """Remove ``ratio`` of all conv channels, lowest scores over the whole network (global)."""
    convs = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    groups = channel_groups(model, convs)
    scores = STRUCTURED.get(criterion)(model, groups, {}, None)
    units = prune_units(scores, ratio, "global")
    masks = expand_unit_masks(model, units, groups)
    masks.apply(model)
    return masks, units


def pruned_run(source: str, epoch: int, state_file: Path, criterion: str, ratio: float, setting: dict[str, Any],
               seed: int, ds: Any, device: torch.device, out: Path) -> dict[str, Any]:
    run_dir = out / "runs" / f"{source}_e{epoch}_{criterion}_p{ratio}_seed{seed}"
    if (run_dir / "result.json").exists():
        return json.loads((run_dir / "result.json").read_text())
    started = time.time()
    model = vgg16_bn(setting["width_div"], seed)
    model.load_state_dict(load_file(str(state_file)))
    model.to(device)
    masks, units = prune_channels(model, criterion, ratio)
    no_retrain = evaluate(model, ds.x_test, ds.y_test).accuracy
    if source.startswith("eb"):
        config = continued_config(setting, seed, device, epoch) if epoch < setting["epochs"] else None
    else:
        config = train_config(setting, seed + 1, device, epochs=setting["finetune"], lr=FINETUNE_LR,
                              lr_schedule="constant", milestones=[])
    final = no_retrain
    if config is not None:
        final = fit(model, ds, config, callbacks=[MaskEnforcer(masks), BNScaleL1(1e-4)], progress=False).final.accuracy
    per_layer = ";".join(str(int(u.sum())) for u in units.values())
    kept = sum(int(u.sum()) for u in units.values())
    total = sum(u.numel() for u in units.values())
    row = {"source": source, "criterion": criterion, "ratio": ratio, "seed": seed, "prune_epoch": epoch,
           "dense_epochs": epoch, "pruned_epochs": config.epochs if config is not None else 0,
           "channels_kept": kept / total, "channels_per_layer": per_layer, "weight_density": weight_masks(masks).density(),
           "acc_no_retrain": no_retrain, "test_acc": final, "seconds": round(time.time() - started, 1)}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "result.json", row)
    return row


def summary(name: str, setting: dict[str, Any], dense: list[dict[str, Any]], rows: list[dict[str, Any]],
            device: torch.device) -> str:
    e = setting["epochs"]
    lines = [f"# Early-bird tickets: VGG-16-BN on CIFAR-10 ({name} setting)", ""]
    if name != "full":
        lines += [f"Reduced setting on {device}: widths / {setting['width_div']}, {setting['n_train']} training and "
                  f"{setting['n_test']} test images, {e} epochs (lr drops at {setting['milestones']}). No GPU was "
                  "available for these numbers; the paper-scale run is `--full` (160 epochs, full data and width).", ""]
    lines += ["| seed | dense test acc | EB epoch (partition, 0.16) | " +
              " | ".join(f"EB epoch (mask p={p}, 0.1)" for p in setting["ratios"]) + " |",
              "|---|---|---|" + "---|" * len(setting["ratios"])]
    for d in dense:
        found = d["found"]
        cells = [str(found["partition"]) if found["partition"] is not None else f"not in {e}"]
        cells += [str(found[f"mask_p{p}"]) if found[f"mask_p{p}"] is not None else f"not in {e}"
                  for p in setting["ratios"]]
        lines.append(f"| {d['seed']} | {d['dense_test_acc']:.4f} | " + " | ".join(cells) + " |")
    lines += ["", "| ticket | criterion | p | pruned at epoch | epochs dense + pruned | channels kept | "
              "acc. before retraining | final test acc |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['source']} | {r['criterion']} | {r['ratio']} | {r['prune_epoch']} | "
                     f"{r['dense_epochs']} + {r['pruned_epochs']} | {r['channels_kept']:.3f} | "
                     f"{r['acc_no_retrain']:.4f} | {r['test_acc']:.4f} |")
    lines += ["", f"**Paper:** {PAPER}", ""]
    eb_rows = [r for r in rows if r["source"].startswith("eb")]
    late = {(r["criterion"], r["ratio"], r["seed"]): r for r in rows if r["source"] == "trained"}
    verdicts = []
    for r in eb_rows:
        base = late.get((r["criterion"], r["ratio"], r["seed"]))
        if base is not None:
            verdicts.append(f"{r['source']} ticket (epoch {r['prune_epoch']} of {e}, {r['criterion']}, p={r['ratio']}): "
                            f"{r['test_acc']:.4f} vs {base['test_acc']:.4f} when pruning the fully trained net "
                            f"({r['test_acc'] - base['test_acc']:+.4f})")
    fractions = [d["found"]["partition"] / e for d in dense if d["found"]["partition"] is not None]
    lines += ["**Ours:** " + ("; ".join(verdicts) if verdicts else "no early bird found, nothing to compare") + ".",
              "", "Partition early bird at " + (", ".join(f"{100 * f:.0f} %" for f in fractions) or "no epoch") +
              f" of training (paper: about 8-9 %). A compressed schedule ({e} epochs) gives the partition "
              "fewer epochs to settle, so the fraction is not expected to match exactly."]
    return "\n".join(lines) + "\n"


def plot(dense: dict[str, Any], setting: dict[str, Any], path: Path) -> None:
    curves = {k: ([e for e, _ in c], [d for _, d in c]) for k, c in dense["curves"].items()}
    thresholds = {k: (PARTITION_THRESHOLD if k == "partition" else MASK_THRESHOLD) for k in curves}
    plot_distance_curve(curves, path, thresholds, dense["found"],
                        title=f"early-bird distances, VGG-16-BN / CIFAR-10 (seed {dense['seed']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="< 1 minute smoke test")
    size.add_argument("--full", action="store_true", help="the paper's setting (needs a GPU)")
    p.add_argument("--out", type=Path, default=Path("out/earlybird"), help="output folder (default out/earlybird)")
    p.add_argument("--data-root", default=None, help="folder with cifar-10-batches-bin (default $PRUNELAB_DATA)")
    p.add_argument("--criteria", nargs="+", default=["bn_scale"], choices=["bn_scale", "spline"],
                   help="channel criteria for pruning the tickets (default: bn_scale, the EB paper's)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 1)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the machine is shared)")
    args = p.parse_args(argv)
    name = "quick" if args.quick else "full" if args.full else "reduced"
    setting = dict(SETTINGS[name])
    if args.seeds is not None:
        setting["seeds"] = args.seeds
    torch.set_num_threads(max(1, args.threads))
    try:
        device = resolve_device(args.device)
        if name == "full" and device.type != "cuda":
            print("warning: --full is the paper's 160-epoch VGG-16 setting; without a GPU it takes days", file=sys.stderr)
        ds = data_mod.load("cifar10", root=args.data_root, download=False)
        ds = replace(ds, x_train=ds.x_train[: setting["n_train"]], y_train=ds.y_train[: setting["n_train"]],
                     x_test=ds.x_test[: setting["n_test"]], y_test=ds.y_test[: setting["n_test"]]).to(device)
        out = args.out / name
        dense_rows, rows = [], []
        for seed in range(setting["seeds"]):
            d = dense_run(setting, seed, ds, device, out)
            dense_rows.append(d)
            print(f"seed {seed}: dense {d['dense_test_acc']:.4f}, early birds {d['found']} ({d['seconds']} s)", flush=True)
            run_dir = out / "runs" / f"dense_seed{seed}"
            for crit in args.criteria:
                for ratio in setting["ratios"]:
                    tickets: dict[int, list[tuple[str, Path]]] = {}
                    for rule, key, file in (("partition", "partition", "eb_partition"),
                                            ("mask", f"mask_p{ratio}", f"eb_mask_p{ratio}")):
                        if d["found"][key] is not None:  # the same epoch for both rules is one ticket
                            tickets.setdefault(d["found"][key], []).append((rule, run_dir / f"{file}.safetensors"))
                    sources = [("eb_" + "+".join(r for r, _ in found), epoch, found[0][1])
                               for epoch, found in sorted(tickets.items())]
                    sources.append(("trained", setting["epochs"], run_dir / "final.safetensors"))
                    for source, epoch, state_file in sources:
                        row = pruned_run(source, epoch, state_file, crit, ratio, setting, seed, ds, device, out)
                        rows.append(row)
                        print(f"  {source} e{epoch} {crit} p={ratio}: no retrain {row['acc_no_retrain']:.4f}, "
                              f"final {row['test_acc']:.4f} ({row['seconds']} s)", flush=True)
                        write_csv(out / "results.csv", rows)
        write_csv(out / "results.csv", rows)
        text = summary(name, setting, dense_rows, rows, device)
        atomic_write_text(out / "summary.md", text)
        write_csv(out / "eb_curves.csv", [{"seed": d["seed"], "rule": rule, "epoch": e, "distance": dist}
                                          for d in dense_rows for rule, c in d["curves"].items() for e, dist in c])
        plot(dense_rows[0], setting, out / "eb_distance.png")
        print(text)
    except PrunelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
