"""The README's Python tour runs as written (on the embedded digits data instead of MNIST)."""

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_python_tour_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README has no Python tour"
    code = blocks[0].replace('data.load("mnist")', 'data.load("digits")')
    assert 'data.load("digits")' in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    masks = namespace["masks"]
    assert (tmp_path / "masks.safetensors").exists()
    assert 0.0 < masks.sparsity() < 1.0


def test_transformers_tour_runs():
    import pytest

    pytest.importorskip("transformers")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2, "README has no transformers example"
    namespace: dict = {}
    exec(compile("import prunelab\nfrom prunelab.pruning import sparsity_report\n" + blocks[1], "README.md",
                 "exec"), namespace)
    masks = namespace["gpt_masks"]
    assert abs(masks.sparsity() - 0.9) < 1e-3
    assert all(".h." in name for name in masks)  # only the block projections are pruned by default
    # the fine-tuning step ran through the adapter and kept the pruned weights at 0
    params = dict(namespace["gpt"].named_parameters())
    for name, mask in masks.items():
        assert int((params[name].detach()[~mask] != 0).sum()) == 0, name
        assert int((params[name].detach()[mask] != 0).sum()) == int(mask.sum()), name


def test_readme_names_the_two_setup_commands_used_by_ci():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
