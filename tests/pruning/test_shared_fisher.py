"""shared_fisher(): one Fisher between prune calls on identical content, never a stale one."""

import torch
from torch import nn

import prunelab
from prunelab.pruning.second_order import fisher as fisher_mod
from prunelab.pruning.second_order import shared_fisher


def _net_and_data():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False))
    x = torch.randn(12, 6)
    y = torch.randint(0, 3, (12,))
    return net, [(x, y)]


def _count_builds(monkeypatch):
    calls = []
    real = fisher_mod.build_fisher

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(fisher_mod, "build_fisher", counting)
    return calls


OPTS = {"fisher_samples": 12, "full": True}


def test_shared_reuses_on_identical_content_and_gives_identical_results(monkeypatch):
    net, data = _net_and_data()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    plain = []
    for sp in (0.5, 0.7):
        net.load_state_dict(state)
        masks = prunelab.prune(net, sp, "woodfisher", data=data, options=OPTS)
        plain.append(({k: v.clone() for k, v in masks.items()}, [p.detach().clone() for p in net.parameters()]))
    calls = _count_builds(monkeypatch)
    with shared_fisher():
        for sp, (ref_masks, ref_params) in zip((0.5, 0.7), plain):
            net.load_state_dict(state)  # same content, new call
            masks = prunelab.prune(net, sp, "woodfisher", data=[(data[0][0].clone(), data[0][1].clone())], options=OPTS)
            assert all(torch.equal(masks[k], ref_masks[k]) for k in ref_masks)
            assert all(torch.equal(p, q) for p, q in zip(net.parameters(), ref_params))
    assert len(calls) == 1
    assert fisher_mod._Shared.entry is None and not fisher_mod._Shared.enabled  # dropped at the end


def test_shared_misses_when_a_weight_or_the_data_or_seed_changes(monkeypatch):
    net, data = _net_and_data()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    calls = _count_builds(monkeypatch)
    with shared_fisher():
        net.load_state_dict(state)
        prunelab.prune(net, 0.5, "woodfisher", data=data, options=OPTS)
        changed = {k: v.clone() for k, v in state.items()}
        changed["0.weight"][0, 0] += 1e-6
        net.load_state_dict(changed)
        prunelab.prune(net, 0.5, "woodfisher", data=data, options=OPTS)
        net.load_state_dict(state)
        x, y = data[0]
        x2 = x.clone()
        x2[0, 0] += 1e-6
        prunelab.prune(net, 0.5, "woodfisher", data=[(x2, y)], options=OPTS)
        net.load_state_dict(state)
        prunelab.prune(net, 0.5, "woodfisher", data=data, options=OPTS, seed=1)
        net.load_state_dict(state)
        prunelab.prune(net, 0.5, "woodfisher", data=data, options={**OPTS, "damping": 1e-2})
    assert len(calls) == 5


def test_nothing_is_shared_outside_the_block(monkeypatch):
    net, data = _net_and_data()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    calls = _count_builds(monkeypatch)
    for _ in range(2):
        net.load_state_dict(state)
        prunelab.prune(net, 0.5, "woodfisher", data=data, options=OPTS)
    assert len(calls) == 2


def test_lowrank_diag_matches_the_dense_inverse():
    torch.manual_seed(1)
    g = torch.randn(7, 20)
    f = torch.eye(20, dtype=torch.float64) * 1e-2 + g.double().T @ g.double() / 7
    ref = torch.linalg.inv(f).diagonal()
    chol = torch.linalg.cholesky(1e-2 * 7 * torch.eye(7, dtype=torch.float64) + g.double() @ g.double().T)
    inv = fisher_mod.LowRankInverse(None, g, 1e-2, chol)
    assert torch.allclose(inv.diag(), ref, rtol=1e-9, atol=1e-9)
    assert inv.diag() is inv.diag()  # computed once
