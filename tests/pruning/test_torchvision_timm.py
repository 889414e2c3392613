"""The zoo test for torchvision and timm models (built without weights), run where those packages import.

torchvision's PyPI wheel does not load beside the CPU build of torch (``operator torchvision::nms does
not exist``), so on such a machine this module is skipped. To run it, use a venv where they import, e.g.::

    python -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    /tmp/tvenv/bin/pip install -e ".[test]"
    /tmp/tvenv/bin/python -m pytest tests/pruning/test_torchvision_timm.py
"""

from __future__ import annotations

import copy

import pytest
import torch

import prunelab
from prunelab.analysis.sparsity import sparsity_report
from prunelab.masks import Masks
from prunelab.pruning import MaskEnforcer

try:  # a broken install raises RuntimeError, not ImportError
    import torchvision  # noqa: F401
    from torchvision import models as tvm
except Exception as exc:  # pragma: no cover - depends on the machine
    tvm = None
    TV_WHY = f"torchvision does not import here: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
try:
    import timm
except Exception:  # pragma: no cover
    timm = None


def _builders():
    out = {}
    if tvm is not None:
        out["tv_resnet18"] = lambda: tvm.resnet18(weights=None, num_classes=10)
        out["tv_mobilenet_v3_small"] = lambda: tvm.mobilenet_v3_small(weights=None, num_classes=10)
    if timm is not None:
        out["timm_vit_tiny"] = lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                                                         img_size=32, patch_size=8)
    return out


BUILDERS = _builders()
pytestmark = pytest.mark.skipif(not BUILDERS, reason="neither torchvision nor timm imports here (see the docstring)")
CRITERIA = ("random", "magnitude", "lamp", "snip", "grasp", "synflow", "upa", "woodfisher")


def _model(name):
    torch.manual_seed(0)
    m = BUILDERS[name]()
    m.input_shape = (3, 32, 32)
    return m.eval()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_reaches_the_requested_sparsity(name, criterion):
    model = _model(name)
    if criterion == "grasp" and "mobilenet" in name:  # Hardsigmoid/Hardswish have no double backward in torch
        with pytest.raises(prunelab.PrunelabError, match="criterion 'grasp' needs second derivatives"):
            prunelab.prune(model, 0.9, criterion, "global", data=_data())
        return
    options = {"fisher_samples": 8, "block_size": 64} if criterion == "woodfisher" else None
    masks = prunelab.prune(model, 0.9, criterion, "global", data=_data(), options=options,
                           iterations=2 if criterion == "synflow" else None)
    total = masks.num_total()
    assert total - masks.num_kept() == round(0.9 * total)  # counted by hand: global prunes exactly round(s N)
    weights = dict(model.named_parameters())
    for k, m in masks.items():
        assert torch.count_nonzero(weights[k].detach()[~m]) == 0


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("allocation", ("uniform", "erk", "igq"))
def test_allocations_report_and_enforcer(name, allocation, tmp_path):
    model = _model(name)
    masks = prunelab.prune(model, 0.5, "magnitude", allocation)
    assert abs(masks.sparsity() - 0.5) < 0.01
    report = sparsity_report(model, masks, (3, 32, 32)).summary()
    assert report["flops_sparse"] < report["flops_dense"] and report["effective_sparsity"] >= masks.sparsity() - 1e-9
    masks.save(tmp_path / "m.safetensors")
    assert dict(Masks.load(tmp_path / "m.safetensors")).keys() == dict(masks).keys()
    # pruned weights stay exactly 0 under AdamW with weight decay
    trained = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(trained.parameters(), lr=1e-3, weight_decay=0.1)
    enforcer = MaskEnforcer(masks)
    state = type("S", (), {"model": trained, "optimizer": opt})()
    enforcer.on_train_begin(state)
    x, y = _data()
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(trained(x), y).backward()
        enforcer.after_backward(state)
        opt.step()
        enforcer.after_step(state)
    weights = dict(trained.named_parameters())
    for k, m in masks.items():
        assert torch.count_nonzero(weights[k].detach()[~m]) == 0
