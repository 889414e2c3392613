"""Network MILP (Serra, Yu, Kumar & Ramalingam, NeurIPS 2021) vs one MILP per unit (Serra, Kumar &
Ramalingam, CPAIOR 2020) for proving ReLU stability, on the same MNIST MLPs.

For each network (2 x 100 and 2 x 200, trained here with an L1 penalty, or loaded with --checkpoint)
every method runs in two settings:

* ``paper``: the paper's own comparison: **no preprocessing** (no data, no sampled witnesses, no
  search, no LP proofs), so every unit the bounds leave open is a candidate in both directions, as in
  the authors' ``--formulation neuron`` baseline (which runs on all units) and their network MILP
  without ``--preprocess_all_samples``. The paper's median 183x (CIFAR-10) is of this kind: the
  network MILP against the per-unit baseline on all units.
* ``data``: the paper's preprocessing only (the training + test images as witnesses: the GPU
  preprocessing of NeurIPS 2021, ``--preprocess_all_samples`` of the authors' code), then the MILPs.
  The authors' README runs their network MILP this way against the per-unit baseline on all units,
  so the last lines also print that cross ratio: per-unit (``paper`` setting) / method (``data``).
* ``ours``: our pipeline **with preprocessing** (``--witnesses all``, the default: images, uniform
  points and bound corners, gradient search, LP-relaxation proofs), which leaves the MILPs only the
  few candidates nothing cheap settles (``--witnesses data --no-lp`` makes it the ``data`` setting).

Methods, all on the same big-M model: ``per_unit`` (the baseline, each MILP stopped as soon as the
sign is decided), ``single_milp`` (our restart loop: solution limit 1, re-solve without the flipped
candidates), ``callback_milp`` with HiGHS (solution + interrupt callbacks, restart: HiGHS cannot add
constraints mid-solve) and with SCIP (``pyscipopt``: one solve; a constraint handler takes every
incumbent's flips out as the lazy ``y = 0`` and a heuristic injects each node LP's input, the
authors' Gurobi callbacks). Printed per network and setting: the share of units settled by the bounds,
LP proofs, the (unit, direction) candidates left to the MILPs, each method's MILP seconds (``*``: hit
the time limit, units left unresolved), its solver runs, and the ratios per-unit / method (> 1: the
method is faster than the per-unit baseline). The stable sets of all methods that finish must agree
(asserted).

    python benchmarks/exact_speed.py --quick --data-root /work/shared/data     # ~2 minutes
    python benchmarks/exact_speed.py --data-root /work/shared/data             # 2x100 and 2x200, ~10 min
    python benchmarks/exact_speed.py --checkpoint model.safetensors --widths 100
    python benchmarks/exact_speed.py --settings ours --witnesses data --no-lp  # the paper's preprocessed pipeline
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from prunelab.analysis.exact import callback_milp, find_stable_neurons
from prunelab.data import load
from prunelab.models import create
from prunelab.train import TrainConfig, evaluate, fit, load_checkpoint, save_checkpoint

# (label, method, solver)
METHODS = [
    ("per-unit", "per_unit", "highs"),
    ("single", "single_milp", "highs"),
    ("cb-highs", "callback_milp", "highs"),
    ("cb-scip", "callback_milp", "scip"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 x 100 only, 3 epochs, 20 s MILP limit")
    p.add_argument("--widths", default="100,200", help="hidden widths W of the 2 x W MLPs")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--l1", type=float, default=2e-3, help="L1 strength (large: many units left to the MILPs)")
    p.add_argument("--checkpoint", default=None, help="load this 2 x W MLP (needs one width) instead of training")
    p.add_argument("--time-limit", type=float, default=120.0, help="MILP seconds per method, setting and network")
    p.add_argument("--settings", default="paper,data,ours",
                   help="paper (no preprocessing), data (the paper's data preprocessing), ours (our preprocessing)")
    p.add_argument("--methods", default=",".join(m[0] for m in METHODS), help="labels of the methods to run")
    p.add_argument(
        "--witnesses", default="all", choices=["all", "data"],
        help="setting 'ours': all = data, samples, corners and gradient search; data = the papers' "
        "preprocessing (data only)",
    )
    p.add_argument("--no-lp", action="store_true", help="setting 'ours': skip the LP-relaxation proofs")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="out/exact_speed", help="where trained models are cached")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.widths, args.epochs, args.time_limit = "100", 3, 20.0
    return args


def trained_model(args, data, width: int) -> torch.nn.Module:
    model = create("mlp", widths=[width, width])
    if args.checkpoint:
        load_checkpoint(args.checkpoint, model)
        return model
    path = Path(args.out) / f"mlp{width}x2_l1{args.l1:g}_e{args.epochs}.safetensors"
    if path.exists():
        load_checkpoint(path, model)
        return model
    config = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, batch_size=128, epochs=args.epochs,
                         l1=args.l1, seed=0, device="cpu", eval_every=0)
    fit(model, data, config, progress=False)
    save_checkpoint(path, model, {"width": width, "l1": args.l1, "epochs": args.epochs})
    return model


def setting_options(args, setting: str, witnesses: torch.Tensor) -> dict:
    if setting == "paper":  # no preprocessing: all units the bounds leave open go to the MILPs
        return {"data": None, "n_samples": 0, "search_steps": 0, "lp": False}
    if setting == "data":  # the paper's preprocessing: data witnesses only
        return {"data": witnesses, "n_samples": 0, "search_steps": 0, "lp": False}
    full = args.witnesses == "all"
    return {"data": witnesses, "n_samples": 1000 if full else 0, "search_steps": 100 if full else 0,
            "lp": not args.no_lp}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",") if w.strip()]
    settings = [s for s in args.settings.split(",") if s.strip()]
    labels = [m for m in args.methods.split(",") if m.strip()]
    if args.checkpoint and len(widths) != 1:
        print("--checkpoint needs exactly one --widths value", file=sys.stderr)
        return 2
    if any(s not in ("paper", "data", "ours") for s in settings):
        print("--settings takes paper, data and/or ours", file=sys.stderr)
        return 2
    known = {m[0] for m in METHODS}
    if any(m not in known for m in labels):
        print(f"--methods takes {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    methods = [m for m in METHODS if m[0] in labels]
    if not callback_milp.scip_available():
        print("pyscipopt not installed: cb-scip skipped (pip install pyscipopt)", file=sys.stderr)
        methods = [m for m in methods if m[2] != "scip"]
    data = load("mnist", root=args.data_root, normalize=False)
    witnesses = torch.cat([data.x_train, data.x_test])
    head = " ".join(f"{label + ' s':>11}" for label, _, _ in methods)
    ratios = " ".join(f"{'pu/' + label:>11}" for label, _, _ in methods if label != "per-unit")
    print(f"{'net':>6} {'acc':>6} {'setting':>7} {'bounds%':>7} {'lp':>3} {'cands':>5} {head}  {ratios}  runs  "
          "stable active/inactive/unstable/unresolved", flush=True)
    cross = []
    for width in widths:
        model = trained_model(args, data, width).eval()
        acc = evaluate(model, data.x_test, data.y_test).accuracy
        by_setting = {}
        for setting in settings:
            runs = by_setting[setting] = {}
            for label, method, solver in methods:
                runs[label] = find_stable_neurons(
                    model, (0.0, 1.0), time_limit=args.time_limit, method=method, solver=solver,
                    threads=args.threads, **setting_options(args, setting, witnesses),
                )
            done = [r for r in runs.values() if r.complete]
            for r in done[1:]:
                assert [lay.status for lay in r.layers] == [lay.status for lay in done[0].layers], "methods disagree"
            first = done[0] if done else next(iter(runs.values()))  # counts of a finished run if any
            units = sum(lay.width for lay in first.layers)
            by_bounds = sum(row["by_interval"] + row["by_symbolic"] for row in first.to_rows())
            by_lp = sum(row["by_lp"] for row in first.to_rows())
            secs = " ".join(
                f"{r.timings['milp']:10.2f}{' ' if r.complete else '*'}" for r in runs.values()
            )
            base = runs.get("per-unit")
            cells = []
            for label, r in runs.items():
                if label == "per-unit":
                    continue
                # a time limit makes a ratio a bound: '<' if X stopped, '>' if the baseline did
                ok = base is not None and r.milp_candidates and r.timings["milp"] > 0
                ok = ok and (base.complete or r.complete)
                value = base.timings["milp"] / r.timings["milp"] if ok else float("nan")
                mark = "" if not ok or (base.complete and r.complete) else ("<" if base.complete else ">")
                cells.append(f"{mark}{value:.2f}".rjust(11))
            solves = "|".join(str(r.milp_solves) for r in runs.values())
            counts = "/".join(str(first.totals()[k]) for k in ("active", "inactive", "unstable", "unresolved"))
            unresolved = "|".join(str(r.totals()["unresolved"]) for r in runs.values())
            print(f"{'2x' + str(width):>6} {acc:6.4f} {setting:>7} {100 * by_bounds / units:6.1f}% {by_lp:3d} "
                  f"{first.milp_candidates:5d} {secs}  {' '.join(cells)}  {solves}  {counts} "
                  f"(unresolved per method {unresolved})", flush=True)
        base, pre = by_setting.get("paper", {}).get("per-unit"), by_setting.get("data", {})
        if base is not None and pre:
            cells = []
            for label, r in pre.items():
                if label == "per-unit" or not r.complete:
                    continue
                bound = "" if base.complete else ">"
                cells.append(f"{label} {bound}{base.timings['milp'] / max(r.timings['milp'], 1e-9):.1f}x "
                             f"({r.timings['milp']:.2f} s)")
            cross.append(f"2x{width}: per-unit on all units {base.timings['milp']:.2f} s"
                         f"{'' if base.complete else ' (time limit)'} / with data preprocessing: " + ", ".join(cells))
    for line in cross:
        print(line)
    print("pu/X = per-unit MILP seconds / X's (> 1: X faster than the per-unit baseline); '*': time limit hit "
          "(units left unresolved); '<'/'>': the ratio is at most/at least this; runs = solver runs per method")
    return 0


if __name__ == "__main__":
    sys.exit(main())
