"""sparsity_report: parameter counts, compression and FLOPs against hand counts."""

from __future__ import annotations

import math

import pytest
import torch
from rich.table import Table
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.pruning import Masks, count_flops, sparsity_report


class SmallNet(nn.Module):
    """conv (1->2, 3x3, no padding) on 1x5x5 -> 2x3x3; BN; grouped conv (2->4, 3x3, pad 1, groups 2); fc."""

    input_shape = (1, 5, 5)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.gconv = nn.Conv2d(2, 4, 3, padding=1, groups=2, bias=False)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.relu(self.gconv(h)).flatten(1))


def masks_for(model: nn.Module) -> Masks:
    m = Masks.ones(model)
    conv = m["conv.weight"].clone()
    conv[0, 0, 0, :] = False  # 3 of 18 pruned
    gconv = m["gconv.weight"].clone()
    gconv[1:3] = False  # 2 filters of 1x3x3: 18 of 36 pruned
    fc = m["fc.weight"].clone()
    fc[:, :30] = False  # 150 of 180 pruned
    return Masks({"conv.weight": conv, "gconv.weight": gconv, "fc.weight": fc})


def test_flops_match_a_hand_count():
    model = SmallNet()
    report = sparsity_report(model, masks_for(model), effective=False)
    rows = {r.name: r for r in report.layers}
    # conv: 18 weights x 9 output positions; gconv: 36 weights x 9 positions; fc: 36 x 5 MACs
    assert (rows["conv.weight"].flops_dense, rows["conv.weight"].flops_sparse) == (162, 15 * 9)
    assert (rows["gconv.weight"].flops_dense, rows["gconv.weight"].flops_sparse) == (324, 18 * 9)
    assert (rows["fc.weight"].flops_dense, rows["fc.weight"].flops_sparse) == (180, 30)
    assert (report.flops_dense, report.flops_sparse) == (162 + 324 + 180, 135 + 162 + 30)
    assert report.summary()["flops_speedup"] == pytest.approx(666 / 327)


def test_parameter_counts_and_compression():
    model = SmallNet()
    report = sparsity_report(model, masks_for(model), effective=False)
    # params: conv 18 + 2, bn 2 + 2, gconv 36, fc 180 + 5
    assert report.params == 245 and report.prunable == 234
    assert report.prunable_kept == 234 - (3 + 18 + 150)
    assert report.nonzero == 245 - 171
    assert report.compression == pytest.approx(245 / 74)
    assert report.sparsity == pytest.approx(171 / 234)
    fc = report.layers[2]
    assert (fc.params, fc.nonzero, fc.sparsity, fc.compression) == (180, 30, pytest.approx(150 / 180), 6.0)


def test_rows_table_and_summary():
    model = SmallNet()
    report = sparsity_report(model, masks_for(model), effective=False)
    rows = report.to_rows()
    assert [r["name"] for r in rows] == ["conv.weight", "gconv.weight", "fc.weight", "total"]
    assert rows[1]["shape"] == "4x1x3x3" and rows[1]["kind"] == "Conv2d"
    assert set(rows[0]) == set(rows[-1])  # one schema for layer and total rows
    assert rows[-1]["effective_sparsity"] is None and report.effective_note == "not requested"
    table = report.to_table()
    assert isinstance(table, Table) and table.row_count == 4
    summary = report.summary()
    assert summary["compression"] == report.compression and summary["params"] == 245


def test_fully_pruned_layer_has_infinite_compression():
    model = nn.Sequential(nn.Linear(3, 2))
    masks = Masks({"0.weight": torch.zeros(2, 3, dtype=torch.bool)})
    report = sparsity_report(model, masks, effective=False)
    assert math.isinf(report.layers[0].compression) and report.flops_sparse == 0


def test_without_input_shape_flops_are_none():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    report = sparsity_report(model, Masks.ones(model), effective=False)
    assert report.flops_dense is None and report.layers[0].flops_dense is None
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))  # an MLP's fan-in is its input shape
    assert sparsity_report(mlp, Masks.ones(mlp), effective=False).flops_dense == 12


def test_masks_default_to_nonzero_weights_and_bad_inputs_are_errors():
    model = SmallNet()
    with torch.no_grad():
        model.fc.weight[0, :4] = 0
    report = sparsity_report(model, effective=False)
    assert report.prunable_kept == 234 - 4
    with pytest.raises(PrunelabError, match="input_shape"):
        sparsity_report(model, input_shape=(1, -5, 5), effective=False)
    with pytest.raises(PrunelabError, match=r"dummy input of shape \(3, 5, 5\)"):
        count_flops(model, Masks.ones(model), (3, 5, 5))
    with pytest.raises(PrunelabError, match="'x.weight' names no parameter"):
        sparsity_report(model, {"x.weight": torch.ones(2, dtype=torch.bool)})


def test_effective_fields_are_filled_when_the_analysis_exists():
    pytest.importorskip("prunelab.analysis.effective")
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    masks = Masks.ones(model)
    first = masks["0.weight"].clone()
    first[0] = False  # hidden unit 0 has no input: its 2 outgoing weights are ineffective
    masks = Masks({"0.weight": first, "2.weight": masks["2.weight"]})
    report = sparsity_report(model, masks)
    assert report.layers[0].effective_sparsity == pytest.approx(3 / 12)
    assert report.layers[1].effective_sparsity == pytest.approx(2 / 8)
    assert report.effective_sparsity == pytest.approx(5 / 20) and report.sparsity == pytest.approx(3 / 20)
    assert report.effective_compression == pytest.approx(report.params / (report.params - 5))


# ------------------------------------------------------------------------------ the table people read
def render(table, width: int = 80) -> str:
    import io

    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def vgg16_report():
    """A VGG-16 (CIFAR, 14 masked layers) at ~90% sparsity, effective fields filled in by hand."""
    from prunelab import models

    torch.manual_seed(0)
    model = models.create("vgg16", num_classes=10, input_shape=(3, 32, 32))
    gen = torch.Generator().manual_seed(0)
    masks = Masks({k: torch.rand(v.shape, generator=gen) > 0.9 for k, v in Masks.ones(model).items()})
    report = sparsity_report(model, masks, effective=False)
    for layer in report.layers:  # as if 1% more were disconnected: the table must show the columns
        layer.effective_sparsity = min(1.0, layer.sparsity + 0.01)
        layer.effective_compression = 1 / (1 - layer.effective_sparsity)
    report.effective_kept = report.prunable_kept - report.prunable // 100
    report.effective_note = None
    return report


def test_vgg16_report_fits_80_columns_with_the_essential_columns():
    report = vgg16_report()
    assert len(report.layers) == 14
    text = render(report.to_table())
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "\x1b" not in text and "…" not in text  # plain text, no value cut off
    header = " ".join(lines[1:3])
    for name in ("layer", "params", "sparsity", "non-", "eff."):
        assert name in header
    body = {line.split()[0]: line.split() for line in lines if line[:1].isalpha() and "  " in line}
    for layer in report.layers:  # every layer, named by its module, with its exact sparsity
        row = body[layer.name.removesuffix(".weight")]
        assert f"{layer.sparsity:.4f}" in row and f"{layer.effective_sparsity:.4f}" in row
    assert body["features.27"][1:3] == ["512x512x3x3", "2.36M"]
    total = body["total"]
    assert "14.7M" in total and f"{report.sparsity:.4f}" in total and f"{report.effective_sparsity:.4f}" in total
    assert "not shown: type, MACs dense, eff. compr." in text  # the least essential, named


def test_full_table_and_csv_keep_every_column(tmp_path):
    report = vgg16_report()
    wide = render(report.to_table(width=None), width=200)
    assert "Conv2d" in wide and "313M" in wide and "not shown" not in wide
    from prunelab.report.tables import read_csv

    rows = read_csv(report.to_csv(tmp_path / "sparsity.csv"))
    assert len(rows) == 15 and [r["name"] for r in rows][-2:] == ["classifier.weight", "total"]
    assert rows[-1]["params"] == report.params and rows[-1]["flops_dense"] == report.flops_dense
    assert rows[0]["nonzero"] == report.layers[0].nonzero  # exact counts, not 1.73k


def test_table_says_why_columns_are_missing():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())  # no input shape: no MACs
    text = render(sparsity_report(model, Masks.ones(model), effective=False).to_table())
    table, caption = text.split("MACs: no")
    assert "MACs" not in table and "eff." not in table
    assert " ".join(caption.split()) == "input shape; effective sparsity: not requested"
