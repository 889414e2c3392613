"""The reproduction framework: modes merge over the base sweep, overrides, the registry, the report."""

import pytest

from prunelab.errors import PrunelabError
from prunelab.experiments.reproductions import MODES, REPRODUCTIONS, Claim, load, sweep_dict

EIGHT = {"cbs", "earlybird", "effective-sparsity", "exact-compression", "jumpstart", "linear-regions", "recall",
         "stability"}


def test_the_eight_papers_are_registered_with_times_for_every_mode():
    assert set(REPRODUCTIONS.names()) == EIGHT
    for name in EIGHT:
        rep = REPRODUCTIONS.get(name)
        assert set(rep.time) == set(MODES), name
        for mode in MODES:  # every mode of every reproduction is a valid sweep
            assert load(name, mode).expand(), (name, mode)


def test_quick_mode_merges_its_table_over_the_base():
    base, quick = sweep_dict("effective-sparsity"), sweep_dict("effective-sparsity", "quick")
    assert base["seeds"] == [0, 1, 2] and quick["seeds"] == [0]
    assert base["train"]["lr"] == quick["train"]["lr"] == 0.1  # kept from the base
    assert base["train"]["epochs"] == 2 and quick["train"]["epochs"] == 1  # overridden


def test_overrides_reach_the_sweep():
    s = load("effective-sparsity", "quick", {"seeds": [3, 4], "data_root": "/somewhere", "device": None})
    assert s.seeds == [3, 4] and s.base.data_root == "/somewhere"
    assert {r.seed for r in s.expand()} == {3, 4}


def test_bad_mode_and_verdict():
    with pytest.raises(PrunelabError, match="unknown mode 'fast'; valid: quick, default, full"):
        sweep_dict("effective-sparsity", "fast")
    with pytest.raises(ValueError, match="verdict 'maybe'"):
        Claim("c", "p", "o", "maybe")
