"""Sparse export (prunelab.pruning.sparse_export): CSR/BSR layers with the masked model's outputs."""

from __future__ import annotations

import copy

import pytest
import safetensors.torch
import torch
from torch import nn

import prunelab
from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.models import create
from prunelab.pruning.sparse_export import SparseConv2d, SparseLinear, model_bytes, sparse_layers, to_sparse


def masked(model, masks):
    out = copy.deepcopy(model)
    Masks(masks).apply(out)
    return out.eval()


def close(a, b):
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,shape", [("lenet5", (1, 28, 28)), ("resnet20", (3, 8, 8)), ("mlp", (12,))])
def test_csr_outputs_equal_the_masked_model(name, shape):
    torch.manual_seed(0)
    model = create(name, input_shape=shape, **({"widths": [16, 8]} if name == "mlp" else {}))
    masks = prunelab.prune(model, 0.9, "magnitude", "global")
    sparse = to_sparse(model, masks)
    layers = sparse_layers(sparse)
    assert set(layers) == {k.rpartition(".")[0] for k in masks}  # every masked layer converted
    for key, mask in masks.items():
        assert layers[key.rpartition(".")[0]].nnz == int(mask.sum())  # CSR stores the kept weights only
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        close(masked(model, masks)(x), sparse(x))
    # size: the dense model minus its masked weights plus, per layer, values + column indices + row pointers
    rows = {k: mask.shape[0] for k, mask in masks.items()}
    expected = model_bytes(model) - 4 * masks.num_total() + sum(8 * int(m.sum()) + 4 * (rows[k] + 1)
                                                                for k, m in masks.items())
    assert model_bytes(sparse) == expected


def test_strided_dilated_conv2d_and_conv1d():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2), nn.ReLU(),
                          nn.Conv2d(8, 4, (3, 1), padding=(1, 0), bias=False))
    model1d = nn.Sequential(nn.Conv1d(4, 6, 5, stride=2, padding=1), nn.ReLU(), nn.Conv1d(6, 2, 1))
    for m, x in ((model, torch.randn(2, 3, 9, 7)), (model1d, torch.randn(3, 4, 17))):
        masks = prunelab.prune(m, 0.7, "random", "uniform")
        sparse = to_sparse(m, masks)
        assert all(isinstance(layer, SparseConv2d) for layer in sparse_layers(sparse).values())
        with torch.no_grad():
            close(masked(m, masks)(x), sparse(x))


def test_bsr_blocks_and_fallbacks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Conv3d(1, 2, 1))
    keep = torch.ones(8, 16, dtype=torch.bool)
    keep[:4, 4:] = False  # 3 of the eight 4x4 blocks are empty
    masks = {"0.weight": keep, "2.weight": torch.ones(6, 8, dtype=torch.bool)}
    sparse = to_sparse(model, masks, "bsr", 4)
    layers = sparse_layers(sparse)
    assert list(layers) == ["0"] and layers["0"].nnz == 5 * 16  # layer 2 (6 rows) is not 4x4-divisible
    x = torch.randn(3, 16)
    with torch.no_grad():
        close(masked(model, masks)[:4](x), sparse[:4](x))
    with pytest.raises(PrunelabError, match=r"cannot export 1 layer\(s\) as bsr: '2' \(its weight \(6 x 8 as a matrix\)"):
        to_sparse(model, masks, "bsr", (4, 4), strict=True)
    with pytest.raises(PrunelabError, match="'4' \\(Conv3d has no im2col"):
        to_sparse(model, {"4.weight": torch.ones(2, 1, 1, 1, 1, dtype=torch.bool)}, strict=True)
    with pytest.raises(PrunelabError, match="unknown sparse layout 'coo'; valid: csr, bsr"):
        to_sparse(model, masks, "coo")
    with pytest.raises(PrunelabError, match="layout='bsr' needs blocksize"):
        to_sparse(model, masks, "bsr")


def test_state_dict_round_trip_through_safetensors():
    torch.manual_seed(0)
    model = create("lenet5", input_shape=(1, 28, 28))
    masks = prunelab.prune(model, 0.9, "magnitude", "global")
    sparse = to_sparse(model, masks)
    state = sparse.state_dict()
    assert not any(t.is_sparse or t.layout != torch.strided for t in state.values())  # plain tensors only
    blob = safetensors.torch.save({k: v.contiguous() for k, v in state.items()})
    other = to_sparse(create("lenet5", input_shape=(1, 28, 28)))  # same architecture, other weights and nnz
    other.load_state_dict(safetensors.torch.load(blob))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(other(x), sparse(x))


def test_bytes_are_values_plus_int32_indices():
    lin = nn.Linear(10, 4)
    keep = torch.zeros(4, 10, dtype=torch.bool)
    keep[0, :3] = keep[2, 5:] = True  # 8 kept
    sparse = to_sparse(nn.Sequential(lin), {"0.weight": keep})
    assert isinstance(sparse[0], SparseLinear)
    assert model_bytes(sparse) == 8 * 4 + 8 * 4 + 5 * 4 + 4 * 4  # values, col indices, row pointers, bias
    assert model_bytes(nn.Sequential(lin)) == (40 + 4) * 4


def test_transformers_conv1d():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, n_positions=16, vocab_size=50, bos_token_id=0,
                                  eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    names = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    g = torch.Generator().manual_seed(0)
    masks = {f"{n}.weight": torch.rand(model.get_submodule(n).weight.shape, generator=g) > 0.8 for n in names}
    sparse = to_sparse(model, masks)
    assert set(sparse_layers(sparse)) == set(names)
    ids = torch.randint(0, 50, (2, 7), generator=g)
    with torch.no_grad():
        close(masked(model, masks)(input_ids=ids, use_cache=False).logits, sparse(input_ids=ids, use_cache=False).logits)
