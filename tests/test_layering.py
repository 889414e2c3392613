"""The package obeys its layer order: imports only go down, never up, and no module cycle exists.

Layers, lowest first (docs/architecture.md draws them):

    0  errors, utils, registry, callbacks, progress, version   (no prunelab imports but each other)
    1  data, models, masks, report                       (datasets, the zoo, masks, tables/plots)
    2  analysis                                          (pure functions of model + masks + data)
    3  pruning                                           (criteria, allocations, schedules, callbacks)
    4  train                                             (fit; knows nothing of pruning)
    5  experiments                                       (configs, engine, reproductions)
    6  cli                                               (one module per command)

Every import counts, also one inside a function (a lazy import would only hide an upward edge). The
root package ``prunelab`` is the public facade (``prunelab.prune``) above all layers: no module
imports it, except ``from prunelab import <subpackage>``, which is an import of that subpackage.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"

LAYERS: dict[str, int] = {
    "errors": 0, "utils": 0, "registry": 0, "callbacks": 0, "version": 0, "progress": 0,
    "data": 1, "models": 1, "masks": 1, "report": 1,
    "analysis": 2,
    "pruning": 3,
    "train": 4,
    "experiments": 5,
    "cli": 6,
}
ROOT = "prunelab"


def package_sources(src: Path = SRC) -> dict[str, str]:
    """Module name -> source text for every module of ``src/prunelab``."""
    out = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path.read_text()
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges(sources: Mapping[str, str]) -> dict[str, set[str]]:
    """Module -> the prunelab modules it imports (anywhere in its body), resolved to known modules."""
    known = set(sources)
    packages = {m for m in known if any(k.startswith(m + ".") for k in known)}
    edges: dict[str, set[str]] = {m: set() for m in sources}
    for module, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, module in packages, node)
                for alias in node.names:  # `from pkg import sub` imports the submodule pkg.sub
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in known else base)
            for t in targets:
                while t and t not in known:  # `import prunelab.a.b` where only prunelab.a is a module
                    t = t.rpartition(".")[0]
                if t.startswith(ROOT) and t != module:
                    edges[module].add(t)
    return edges


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the root facade
    if parts[1] not in LAYERS:
        raise AssertionError(f"module {module} is in no layer; add its package to LAYERS and the docs")
    return LAYERS[parts[1]]


def violations(sources: Mapping[str, str]) -> list[str]:
    """Every upward import, import of the root facade, and module cycle, as readable lines."""
    edges = import_edges(sources)
    bad = []
    for a, targets in sorted(edges.items()):
        la = layer_of(a)
        for b in sorted(targets):
            lb = layer_of(b)
            if lb is None and la is not None:
                bad.append(f"{a} imports the root facade {b!r}; import the subpackage instead")
            elif la is not None and lb is not None and lb > la:
                bad.append(f"{a} (layer {la}) imports {b} (layer {lb}): upward")
    # cycles: Tarjan's strongly connected components over the module graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package importing its own submodules (its __init__) is not a cycle of ideas
            real = [m for m in comp if not any(o != m and o.startswith(m + ".") for o in comp)]
            if len(comp) > 1 and len(real) > 1:
                bad.append("import cycle: " + " -> ".join(sorted(comp)))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return bad


def test_package_obeys_the_layer_order():
    assert violations(package_sources()) == []


def test_every_package_is_in_a_layer():
    top = {m.split(".")[1] for m in package_sources() if "." in m}
    assert top <= set(LAYERS), f"packages without a layer: {sorted(top - set(LAYERS))}"


def test_checker_catches_an_upward_import_a_lazy_one_and_a_cycle():
    sources = dict(package_sources())
    # a deliberate bad import at module level ...
    sources["prunelab.analysis.bad_top"] = "from prunelab.train import fit\n"
    # ... one hidden inside a function ...
    sources["prunelab.pruning.bad_lazy"] = "def f():\n    from prunelab.experiments import runner\n"
    # ... the root facade ...
    sources["prunelab.models.bad_root"] = "import prunelab\n"
    # ... and a cycle inside one layer
    sources["prunelab.analysis.cyc_a"] = "from prunelab.analysis import cyc_b\n"
    sources["prunelab.analysis.cyc_b"] = "from . import cyc_a\n"
    found = violations(sources)
    assert "prunelab.analysis.bad_top (layer 2) imports prunelab.train (layer 4): upward" in found
    assert "prunelab.pruning.bad_lazy (layer 3) imports prunelab.experiments.runner (layer 5): upward" in found
    assert any(line.startswith("prunelab.models.bad_root imports the root facade") for line in found)
    assert "import cycle: prunelab.analysis.cyc_a -> prunelab.analysis.cyc_b" in found
    assert len(found) == 4, found


@pytest.mark.parametrize("forbidden", ["prunelab.train.loop", "prunelab.data.cifar", "prunelab.experiments"])
def test_importing_pruning_loads_no_training_loop_and_no_dataset_reader(forbidden):
    code = f"import sys, prunelab.pruning; print({forbidden!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
