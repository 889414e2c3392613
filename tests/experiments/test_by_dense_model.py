"""Executors run one dense model's runs consecutively (so a worker's kept Fisher is reused)."""

from prunelab.experiments.config import SweepConfig, build
from prunelab.experiments.executors import by_dense_model


def test_runs_grouped_by_dense_model_in_first_appearance_order():
    sweep = build(SweepConfig, {"criteria": ["magnitude", "random"], "sparsities": [0.5, 0.9], "seeds": [0, 1]})
    runs = sweep.expand()
    hashes = [r.dense_hash() for r in runs]
    assert hashes != sorted(hashes, key=hashes.index)  # the grid interleaves seeds (else nothing to test)
    out = by_dense_model(runs)
    out_h = [r.dense_hash() for r in out]
    assert out_h == sorted(out_h, key=out_h.index)  # each dense model's runs are contiguous
    assert sorted(map(id, out)) == sorted(map(id, runs))
    for h in set(hashes):  # within a group, the sweep's order is kept
        assert [r for r in out if r.dense_hash() == h] == [r for r in runs if r.dense_hash() == h]
