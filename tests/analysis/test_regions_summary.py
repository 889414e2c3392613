"""regions_summary: repeated segments are counted once, and long counts report progress."""

import torch

from prunelab.analysis.regions import count_line, regions_summary, summary
from prunelab.models import create


def _mlp():
    torch.manual_seed(0)
    return create("mlp", num_classes=10, input_shape=(64,), widths=[16, 16])


def test_a_segment_drawn_many_times_is_counted_once(monkeypatch):
    model, x = _mlp(), torch.randn(2, 64)
    truth = count_line(model, x[0], x[1]).num_regions
    calls = []
    real = summary.count_line
    monkeypatch.setattr(summary, "count_line", lambda *a, **k: calls.append(1) or real(*a, **k))
    row = regions_summary(model, x, None, "line", samples=5000)
    assert len(calls) == 1  # 2 inputs: one distinct segment, whatever `samples` says
    assert row["regions_samples"] == 5000 and row["regions_mean"] == row["regions_min"] == truth


def test_distinct_segments_are_all_counted_and_repeats_weigh_in(monkeypatch):
    model, x = _mlp(), torch.randn(3, 64)
    per_pair = {(i, j): count_line(model, x[i], x[j]).num_regions for i in range(3) for j in range(i + 1, 3)}
    row = regions_summary(model, x, None, "line", samples=200, seed=4)
    # the mean over the 200 draws is a weighted mean of the 3 exact pair counts
    assert min(per_pair.values()) <= row["regions_mean"] <= max(per_pair.values())
    assert {row["regions_min"], row["regions_max"]} <= set(per_pair.values())


def test_progress_lines_when_not_a_terminal(capsys):
    model, x = _mlp(), torch.randn(4, 64)
    regions_summary(model, x, None, "line", samples=20, progress=True)
    err = capsys.readouterr().err
    assert "regions (lines): 6/6 (100%)" in err and "\x1b[" not in err


def test_exact_reports_progress_of_its_proofs_when_asked(capsys):
    from prunelab.analysis.exact import find_stable_neurons

    torch.manual_seed(1)
    model = create("mlp", num_classes=3, input_shape=(4,), widths=[6, 6])
    quiet = find_stable_neurons(model, (0.0, 1.0), method="per_unit")
    assert capsys.readouterr().err == ""
    loud = find_stable_neurons(model, (0.0, 1.0), method="per_unit", progress=True)
    err = capsys.readouterr().err
    assert quiet.totals() == loud.totals()  # reporting changes nothing
    assert "exact: LP proofs" in err or "exact: per-unit MILPs" in err or loud.milp_candidates == 0


def test_masks_of_another_model_are_a_one_line_error():
    import pytest

    from prunelab.errors import PrunelabError
    from prunelab.masks import Masks

    a = create("mlp", num_classes=3, input_shape=(4,), widths=[6])
    b = create("mlp", num_classes=3, input_shape=(4,), widths=[7, 5])
    with pytest.raises(PrunelabError, match="mask '5.weight' names no parameter of the model"):
        count_line(a, torch.zeros(4), torch.ones(4), Masks.ones(b))
    wrong = {"1.weight": torch.ones(7, 4, dtype=torch.bool)}
    with pytest.raises(PrunelabError, match=r"mask '1.weight' has shape \(7, 4\) but the parameter has shape \(6, 4\)"):
        count_line(a, torch.zeros(4), torch.ones(4), wrong)
    extra = {**Masks.ones(a), "bogus.weight": torch.ones(3, dtype=torch.bool)}
    with pytest.raises(PrunelabError, match="mask 'bogus.weight' names no parameter of the model"):
        count_line(a, torch.zeros(4), torch.ones(4), extra)
