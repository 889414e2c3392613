"""The support matrix of docs/models.md: which feature works on which model (issue 14).

Every cell is ``ok``, or the one-line :class:`~prunelab.errors.PrunelabError` a user gets, or (for an
optional package that does not import) ``not installed``. Any other exception, and any result that is
wrong (a sparsity that is not the one requested, a compacted or sparse model whose outputs differ from
the masked model's), is a ``BUG: ...`` cell, and the script exits 1.

    python benchmarks/support_matrix.py            # print the table
    python benchmarks/support_matrix.py --write    # and replace the generated section of docs/models.md

:func:`build_matrix` takes a subset of models and features, so a test can run a cheap corner of it.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import prunelab
from prunelab.analysis.sparsity import model_effective_masks, sparsity_report
from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.models import create
from prunelab.models.adapters import adapter_for, logits_of
from prunelab.models.tiny_hf import FF, HIDDEN, SEQ, VOCAB, tiny_hf_batch, tiny_hf_model
from prunelab.pruning import CRITERIA
from prunelab.pruning.compact import attention_modules, compact, head_masks, unit_masks
from prunelab.pruning.sparse_export import sparse_layers, to_sparse
from prunelab.pruning.structured import channel_groups, expand_unit_masks

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "models.md"
BEGIN, END = "<!-- support-matrix:begin -->", "<!-- support-matrix:end -->"
SPARSITY = 0.9
N = 8  # samples per data batch

# --- models ------------------------------------------------------------------------------------------


@dataclass
class Spec:
    """A model of the matrix: how to build it, its data, fresh inputs, and its structured masks."""

    build: Callable[[], nn.Module]
    data: Callable[[], Any]  # a batch for prune(data=...)
    inputs: Callable[[int], Any]  # fresh inputs (seed) for output comparisons: a tensor or a kwargs dict
    units: Callable[[nn.Module], Masks]  # structured (unit / head) masks for compact
    kind: str = "tensor"  # "tensor" | "hf"


def _images(shape: tuple[int, ...], classes: int = 10) -> Callable[[], Any]:
    def data():
        g = torch.Generator().manual_seed(1)
        return torch.randn(N, *shape, generator=g), torch.randint(0, classes, (N,), generator=g)

    return data


def _fresh_images(shape: tuple[int, ...]) -> Callable[[int], Any]:
    return lambda seed: torch.randn(4, *shape, generator=torch.Generator().manual_seed(seed))


def _zoo_units(model: nn.Module) -> Masks:
    """Half the units of every layer outside a residual stream and before the classifier."""
    groups = channel_groups(model)
    coupled = {r for g in groups.values() for r in g.residual}
    names = [k for k, g in groups.items() if not g.residual and k not in coupled][:-1]
    g = torch.Generator().manual_seed(1)
    keep = {}
    for name in names:
        n = groups[name].num_units
        k = torch.ones(n, dtype=torch.bool)
        k[torch.randperm(n, generator=g)[: n // 2]] = False
        keep[name] = k
    return expand_unit_masks(model, keep, groups)


def _zoo(name: str, shape: tuple[int, ...], **kw: Any) -> Spec:
    def build():
        torch.manual_seed(0)
        return create(name, input_shape=shape, **kw)

    return Spec(build, _images(shape), _fresh_images(shape), _zoo_units)


def _hf_inputs(name: str, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    if name == "vit":
        return {"pixel_values": torch.randn(4, 3, 8, 8, generator=g)}
    ids = torch.randint(2, VOCAB, (4, SEQ), generator=g)
    out: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if name == "t5":
        out["decoder_input_ids"] = torch.randint(2, VOCAB, (4, 6), generator=g)
    if name in ("gpt2", "llama", "t5"):
        out["use_cache"] = False
    return out


#: name endings of the MLP layer(s) whose channels the structured masks prune (those of the first block),
#: with head 0 of the first attention module (gated MLPs: gate and up projection together)
_HF_MLP = (("intermediate.dense",), ("mlp.fc1",), ("mlp.c_fc",), ("mlp.gate_proj", "mlp.up_proj"),
           ("DenseReluDense.wi",))


def _hf_units(name: str) -> Callable[[nn.Module], Masks]:
    def units(model: nn.Module) -> Masks:
        names = [n for n, _ in model.named_modules()]
        layers = next(([next(n for n in names if n.endswith(end)) for end in ends] for ends in _HF_MLP
                       if all(any(n.endswith(end) for n in names) for end in ends)), None)
        if layers is None:
            raise Bug(f"no MLP layer found in {type(model).__name__} (update _HF_MLP)")
        keep = torch.ones(FF if name != "gpt2" else 4 * HIDDEN, dtype=torch.bool)
        keep[::4] = False
        att = attention_modules(model)
        base = head_masks(model, {next(iter(att)): [0]}) if att else None
        return unit_masks(model, {layer: keep for layer in layers}, base)

    return units


def _hf(name: str) -> Spec:
    return Spec(lambda: tiny_hf_model(name, seed=0), lambda: tiny_hf_batch(name, n=N),
                lambda seed: _hf_inputs(name, seed), _hf_units(name), kind="hf")


def _torchvision(name: str) -> Spec:
    def build():
        import torchvision

        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(num_classes=10)
        model.input_shape = (3, 32, 32)
        return model

    shape = (3, 32, 32)
    return Spec(build, _images(shape), _fresh_images(shape), _zoo_units)


def _timm_vit() -> Spec:
    def build():
        import timm

        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32,
                                  patch_size=8, depth=2)
        model.input_shape = (3, 32, 32)
        return model

    shape = (3, 32, 32)
    return Spec(build, _images(shape), _fresh_images(shape), _zoo_units)


SPECS: dict[str, Callable[[], Spec]] = {
    "mlp": lambda: _zoo("mlp", (64,), widths=[32, 16]),
    "lenet5": lambda: _zoo("lenet5", (1, 28, 28)),
    "resnet20": lambda: _zoo("resnet20", (3, 32, 32)),
    "vgg11": lambda: _zoo("vgg11", (3, 32, 32)),
    **{n: (lambda n=n: _hf(n)) for n in ("bert", "gpt2", "llama", "t5", "vit")},
    "torchvision resnet18": lambda: _torchvision("resnet18"),
    "torchvision mobilenet_v3_small": lambda: _torchvision("mobilenet_v3_small"),
    "timm vit": _timm_vit,
}
#: the package each row needs, besides prunelab
PACKAGE = {**{n: "transformers" for n in ("bert", "gpt2", "llama", "t5", "vit")},
           "torchvision resnet18": "torchvision", "torchvision mobilenet_v3_small": "torchvision", "timm vit": "timm"}


def _importable(package: str) -> bool:
    try:
        __import__(package)
    except Exception:  # noqa: BLE001  (a broken install fails with anything)
        return False
    return True


# --- checks --------------------------------------------------------------------------------------------
class Bug(Exception):
    """A wrong result (not an exception of prunelab's)."""


def _options(criterion: str) -> dict | None:
    return {
        "woodfisher": {"fisher_samples": 8, "block_size": 64},
        "cbs": {"fisher_samples": 8, "block_size": 64},
        "synflow": {"iterations": 4},
    }.get(criterion)


def _check_sparsity(model: nn.Module, masks: Masks, sparsity: float, exact: bool) -> None:
    total, zeros = masks.num_total(), masks.num_total() - masks.num_kept()
    target = round(sparsity * total)
    if exact and zeros != target:
        raise Bug(f"{zeros} of {total} weights pruned, requested exactly round({sparsity} * {total}) = {target}")
    if not exact and abs(zeros - target) > len(masks):  # per-layer rounding: at most one weight a layer
        raise Bug(f"{zeros} of {total} weights pruned, requested {target} (+- {len(masks)} for rounding)")
    params = dict(model.named_parameters())
    for key, mask in masks.items():
        if torch.count_nonzero(params[key].detach()[~mask.to(torch.bool)]):
            raise Bug(f"pruned weights of {key} are not 0")


def _run(model: nn.Module, inputs: Any) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return logits_of(out)


def _same_outputs(ref: nn.Module, other: nn.Module, spec: Spec, what: str) -> None:
    for seed in (11, 12):
        x = spec.inputs(seed)
        a, b = _run(ref, x), _run(other, x)
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(a.abs().max()))):
            diff = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
            raise Bug(f"{what} outputs differ from the masked model's on fresh inputs (max |diff| {diff:.3g})")


def _input_shape(model: nn.Module) -> tuple[int, ...] | None:
    return adapter_for(model).default_input_shape(model)


def _prune_cell(criterion: str, allocation: str, sparsity: float) -> Callable[[nn.Module, Spec], None]:
    def cell(model: nn.Module, spec: Spec) -> None:
        opts = _options(criterion) if allocation == "global" else None
        masks = prunelab.prune(model, sparsity, criterion, allocation, data=spec.data(), options=opts)
        _check_sparsity(model, masks, sparsity, exact=allocation in ("global", "nm"))

    return cell


def _magnitude(model: nn.Module) -> Masks:
    return prunelab.prune(model, SPARSITY, "magnitude", "global")


def _effective(model: nn.Module, spec: Spec) -> None:
    masks = _magnitude(model)
    eff = model_effective_masks(model, masks, _input_shape(model))
    if set(eff) != set(masks) or eff.num_kept() > masks.num_kept():
        raise Bug(f"effective masks keep {eff.num_kept()} weights, more than the {masks.num_kept()} the masks keep")


def _flops(model: nn.Module, spec: Spec) -> None:
    masks = _magnitude(model)
    report = sparsity_report(model, masks, effective=False)
    if report.flops_dense is None:
        raise PrunelabError(f"FLOPs not reported for {type(model).__name__}: no input shape known")
    if not 0 < report.flops_sparse < report.flops_dense:
        raise Bug(f"sparse MACs {report.flops_sparse} not in (0, dense MACs {report.flops_dense}) at sparsity 0.9")


def _compact(model: nn.Module, spec: Spec) -> None:
    masks = spec.units(model)
    model.eval()
    res = compact(model, masks)  # compares the compact model with the masked one itself
    if not res.removed and not res.heads_removed:
        first = next((r for reasons in res.kept.values() for r in reasons.values()), "no reason given")
        raise PrunelabError(f"no pruned unit could be removed: {first}")
    if res.params_after >= res.params_before:
        raise Bug(f"units removed but parameters {res.params_before} -> {res.params_after}")
    ref = copy.deepcopy(model)
    masks.apply(ref)
    _same_outputs(ref.eval(), res.model.eval(), spec, "compacted model's")


def _sparse(model: nn.Module, spec: Spec) -> None:
    masks = _magnitude(model)
    model.eval()
    sparse = to_sparse(model, masks, strict=True)
    if not sparse_layers(sparse):
        raise Bug("to_sparse converted no layer")
    _same_outputs(model, sparse, spec, "sparse model's")


def _save_load(model: nn.Module, spec: Spec) -> None:
    masks = prunelab.prune(model, SPARSITY, "random", "global")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "masks.safetensors"
        masks.save(path)
        loaded = Masks.load(path)
    if loaded != masks or list(loaded) != list(masks):
        raise Bug("loaded masks differ from the saved ones")
    loaded.validate(model)


def _fine_tune(model: nn.Module, spec: Spec) -> None:
    """Magnitude pruning at 0.5, then one epoch of ``fit`` (Adam, batch 4) on the data batch with the
    masks enforced: ok only when the loss is finite, every pruned weight is still 0 and kept ones moved."""
    from types import SimpleNamespace

    from prunelab.pruning import MaskEnforcer
    from prunelab.train import fit

    masks = prunelab.prune(model, 0.5, "magnitude")
    batch = spec.data()
    if isinstance(batch, (tuple, list)):
        data = SimpleNamespace(x_train=batch[0], y_train=batch[1], x_test=batch[0], y_test=batch[1])
    else:
        data = SimpleNamespace(x_train=batch, x_test=batch)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    res = fit(model, data, {"epochs": 1, "optimizer": "adam", "lr": 1e-3, "batch_size": 4, "device": "cpu"},
              callbacks=[MaskEnforcer(masks)], progress=False)
    if not torch.isfinite(torch.tensor(res.final.loss)):
        raise Bug(f"fine-tuning gave a non-finite test loss {res.final.loss}")
    params = dict(model.named_parameters())
    for key, mask in masks.items():
        if torch.count_nonzero(params[key].detach()[~mask]):
            raise Bug(f"a pruned weight of {key} is non-zero after fine-tuning")
    if all(torch.equal(params[k].detach(), v) for k, v in before.items()):
        raise Bug("fine-tuning changed no weight")


FEATURES: dict[str, Callable[[nn.Module, Spec], None]] = {
    **{c: _prune_cell(c, "global", SPARSITY) for c in sorted(CRITERIA)},
    **{a: _prune_cell("magnitude", a, SPARSITY) for a in ("uniform", "erk", "igq")},
    "nm 2:4": _prune_cell("magnitude", "nm", 0.5),
    "effective": _effective,
    "flops": _flops,
    "compact": _compact,
    "sparse export": _sparse,
    "masks save/load": _save_load,
    "fine-tune": _fine_tune,
}
MODELS = list(SPECS)


@dataclass(frozen=True)
class Cell:
    status: str  # "ok" | "error" | "BUG" | "not installed"
    message: str = ""

    def __str__(self) -> str:
        return self.status if not self.message else f"{self.status}: {self.message}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_cell(spec: Spec, base: nn.Module, feature: str) -> Cell:
    model = copy.deepcopy(base)
    try:
        FEATURES[feature](model, spec)
    except Bug as exc:
        return Cell("BUG", str(exc))
    except PrunelabError as exc:
        msg = str(exc)
        if not msg or "\n" in msg:
            return Cell("BUG", f"PrunelabError that is not one line: {_one_line(msg)[:200]}")
        return Cell("error", msg)
    except Exception as exc:  # noqa: BLE001  (any other exception is a bug: a traceback for the user)
        frames = traceback.extract_tb(exc.__traceback__)
        frame = next((f for f in reversed(frames) if "/torch/" not in f.filename), frames[-1])
        where = f" (at {Path(frame.filename).name}:{frame.lineno})"
        return Cell("BUG", f"{type(exc).__name__}: {_one_line(str(exc))[:300]}{where}")
    return Cell("ok")


def build_matrix(models: list[str] | None = None, features: list[str] | None = None,
                 verbose: bool = False) -> dict[str, dict[str, Cell]]:
    """``{model: {feature: Cell}}`` for the given models and features (default: all)."""
    models = MODELS if models is None else list(models)
    features = list(FEATURES) if features is None else list(features)
    unknown = [m for m in models if m not in SPECS] + [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown model(s)/feature(s) {unknown}; models: {MODELS}; features: {list(FEATURES)}")
    out: dict[str, dict[str, Cell]] = {}
    for name in models:
        package = PACKAGE.get(name)
        if package and not _importable(package):
            out[name] = {f: Cell("not installed", package) for f in features}
            continue
        spec = SPECS[name]()
        try:
            base = spec.build()
        except Exception as exc:  # noqa: BLE001
            out[name] = {f: Cell("BUG", f"building the model: {type(exc).__name__}: {_one_line(str(exc))[:200]}")
                         for f in features}
            continue
        row = out[name] = {}
        for feature in features:
            start = time.perf_counter()
            row[feature] = run_cell(spec, base, feature)
            if verbose:
                print(f"{name:>32} {feature:>16} {time.perf_counter() - start:6.1f}s {row[feature]}"[:200],
                      file=sys.stderr, flush=True)
    return out


# --- the table -------------------------------------------------------------------------------------------
def _short(cell: Cell, notes: dict[str, int]) -> str:
    if cell.status == "ok":
        return "ok"
    if cell.status == "not installed":
        return "not installed"
    key = str(cell)
    if key not in notes:
        notes[key] = len(notes) + 1
    text = cell.message if len(cell.message) <= 60 else cell.message[:60].rstrip() + "..."
    label = "error" if cell.status == "error" else "BUG"
    return f"{label}: {text} [{notes[key]}]".replace("|", "\\|")


def markdown(matrix: dict[str, dict[str, Cell]]) -> str:
    features = list(next(iter(matrix.values()))) if matrix else []
    notes: dict[str, int] = {}
    lines = ["| model | " + " | ".join(features) + " |", "|---" * (len(features) + 1) + "|"]
    for name, row in matrix.items():
        lines.append(f"| {name} | " + " | ".join(_short(row[f], notes) for f in features) + " |")
    if notes:
        lines += ["", "Messages:", ""]
        lines += [f"{i}. {text}".replace("|", "\\|") for text, i in notes.items()]
    return "\n".join(lines)


LEGEND = (
    "Columns: each criterion with allocation `global` at sparsity 0.9 (SynFlow with 4 iterations, WoodFisher/CBS "
    "with `fisher_samples=8, block_size=64`); allocations `uniform` / `erk` / `igq` (magnitude, 0.9) and `nm` "
    "(2:4, magnitude, 0.5); effective sparsity (`model_effective_masks`); FLOPs of `sparsity_report`; `compact` "
    "(physical removal of structured masks: unit masks, and for transformers attention head 0 plus MLP channels); "
    "`to_sparse(strict=True)`; masks save/load; fine-tune (magnitude 0.5, one epoch of `fit` with the masks enforced). A pruning cell is ok only when the achieved sparsity is the "
    "requested one; `compact` and sparse export only when their outputs equal the masked model's on fresh inputs."
)


def section(matrix: dict[str, dict[str, Cell]]) -> str:
    return "\n\n".join([
        BEGIN,
        "Generated by `python benchmarks/support_matrix.py --write`; cells: ok, or the error a user gets.",
        LEGEND,
        markdown(matrix),
        END,
    ])


def write_doc(matrix: dict[str, dict[str, Cell]], path: Path = DOC) -> None:
    text = path.read_text()
    new = section(matrix)
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: new, text, flags=re.DOTALL)
    else:
        text = text.rstrip("\n") + "\n\n## Support matrix\n\n" + new + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"replace the generated section of {DOC}")
    parser.add_argument("--models", nargs="*", help=f"subset of {MODELS}")
    parser.add_argument("--features", nargs="*", help=f"subset of {list(FEATURES)}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-cell progress on stderr")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    matrix = build_matrix(args.models, args.features, verbose=not args.quiet)
    print(markdown(matrix))
    if args.write:
        write_doc(matrix)
    bugs = [(m, f, c) for m, row in matrix.items() for f, c in row.items() if c.status == "BUG"]
    for m, f, c in bugs:
        print(f"BUG {m} x {f}: {c.message}", file=sys.stderr)
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
