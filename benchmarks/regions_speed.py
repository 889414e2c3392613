"""Speed of the linear-region tools (one CPU thread).

1. Exact region counting along segments on LeNet-300-100 (He-initialised, inputs uniform in [0, 1]^784
   like MNIST pixels): segments/s and regions/s.
2. Cai et al.'s expected bound for the 784-400-400 MLP with analytic and Monte Carlo ranks (the paper
   reports about 20 s and 10-20 min for these). The rank caches are cleared first, so Monte Carlo
   pays for its sampling.
3. Exact enumeration (HiGHS) of all regions of small 2-D-input nets in a box, two ways, checked
   against each other (same patterns) and against the exact polygon count: Serra et al.'s loop of one
   MILP per region with a no-good cut after each (``method="nogood"``) and the single LP
   branch-and-bound tree over the unit signs (``method="tree"``, the default), with the ratio of
   their times. A solution pool would enumerate in one tree too, but HiGHS 1.16 has none
   (``mip_improving_solution_save`` / ``getSavedMipSolutions`` keep improving solutions only, and
   highspy's callback input has no lazy-constraint fields), so the tree is written with LPs.

    python benchmarks/regions_speed.py --quick     # under a minute
    python benchmarks/regions_speed.py             # more segments, all densities, bigger enumerations
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from threadpoolctl import threadpool_limits

from prunelab.analysis.regions import count_box, count_line, count_regions_milp, expected_bound
from prunelab.analysis.regions import rank as rank_module
from prunelab.analysis.regions.patterns import pattern_keys
from prunelab.models import create


def bench_line(segments: int) -> None:
    torch.manual_seed(0)
    model = create("lenet300", num_classes=10, input_shape=(1, 28, 28))
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(2 * segments, 784, generator=g, dtype=torch.float64)
    count_line(model, pts[0], pts[1])  # warm-up
    start = time.perf_counter()
    regions = sum(count_line(model, pts[2 * i], pts[2 * i + 1]).num_regions for i in range(segments))
    dt = time.perf_counter() - start
    print(
        f"line counting, LeNet-300-100 (784-300-100-10), {segments} segments: {dt:.3f} s, "
        f"{segments / dt:.1f} segments/s, {regions / dt:.0f} regions/s, {regions / segments:.1f} regions/segment"
    )


def bench_bound(densities: list[float], mc_densities: list[float]) -> None:
    for method, ds in (("analytic", densities), ("montecarlo", mc_densities)):
        rank_module._analytic.cache_clear()
        rank_module._monte_carlo.cache_clear()
        start = time.perf_counter()
        values = [expected_bound(784, [400, 400], [d, d], rank=method).log2 for d in ds]
        dt = time.perf_counter() - start
        shown = ", ".join(f"{d:g}: 2^{v:.1f}" for d, v in zip(ds, values))
        print(f"expected bound 784-400-400, {method} ranks, {len(ds)} densities: {dt:.2f} s total ({shown})")


def bench_milp(hidden: list[int], box: float) -> None:
    torch.manual_seed(0)
    mods: list[torch.nn.Module] = []
    widths = [2, *hidden]
    for a, b in itertools.pairwise(widths):
        mods += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*mods, torch.nn.Linear(widths[-1], 1))
    exact = count_box(model, (-box, -box), (box, box))
    res, secs = {}, {}
    for method in ("nogood", "tree"):
        start = time.perf_counter()
        res[method] = count_regions_milp(model, lower=-box, upper=box, time_limit=600.0, method=method)
        secs[method] = time.perf_counter() - start
    same = set(pattern_keys(res["tree"].patterns).tolist()) == set(pattern_keys(res["nogood"].patterns).tolist())
    same_plane = set(pattern_keys(res["tree"].patterns).tolist()) == set(pattern_keys(exact.patterns).tolist())
    net = f"2-{'-'.join(map(str, hidden))}-1 in [-{box:g}, {box:g}]^2"
    for method in ("nogood", "tree"):
        r = res[method]
        what = "MILPs" if method == "nogood" else "LPs"
        print(
            f"region enumeration ({method}), net {net}: {r.num_regions} regions (polygon count "
            f"{exact.num_regions}, complete={r.complete}, {r.num_unstable} unstable units, {r.solves} {what}) "
            f"in {secs[method]:.3f} s, {r.num_regions / secs[method]:.1f} regions/s"
        )
    print(
        f"  one MILP per region / one tree: {secs['nogood'] / secs['tree']:.1f}x slower; same patterns: {same}, "
        f"equal to the polygon count's: {same_plane}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smaller run that finishes in under a minute")
    args = p.parse_args()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        if args.quick:
            bench_line(20)
            bench_bound([0.01, 0.001, 0.0001], [0.01])
            bench_milp([6, 6], 2.0)
            bench_milp([10, 10], 2.0)
        else:
            dens = [0.01, 0.005, 0.0025, 0.001, 0.00075, 0.0005, 0.0001]
            bench_line(500)
            bench_bound(dens, dens)
            bench_milp([6, 6], 2.0)
            bench_milp([10, 10], 2.0)
            bench_milp([8, 8, 8], 2.0)
            bench_milp([12, 12], 2.0)


if __name__ == "__main__":
    main()
