"""The how-to pages run as written: every ```python block of a page, in order, in one namespace."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"


@pytest.mark.parametrize("page", ["adding_a_criterion.md", "adding_an_analysis.md"])
def test_how_to_page_runs(page, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2, f"{page} has no runnable example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        if code.lstrip().startswith("fn("):  # the contract's signature, not code to run
            continue
        exec(compile(code, f"{page} block {i + 1}", "exec"), namespace)  # noqa: S102 - our own documentation
