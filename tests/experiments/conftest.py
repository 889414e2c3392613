"""Fixtures the reproduction tests share: where the shared real data is, and an unpacked CIFAR-10."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """As tests/data/conftest.py: env PRUNELAB_SHARED_DATA, default <repo>/../shared/data."""
    return Path(os.environ.get("PRUNELAB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory, shared_data) -> Path:
    """A data root holding ``cifar-10-batches-bin/``: ``PRUNELAB_CIFAR`` if it is a folder, the shared
    copy unpacked once per session if it is ``1``; skipped when it is unset (unpacking takes ~20 s)."""
    value = os.environ.get("PRUNELAB_CIFAR")
    if not value:
        pytest.skip("set PRUNELAB_CIFAR (a data root with cifar-10-batches-bin/, or 1 to unpack the shared copy)")
    if Path(value).is_dir():
        return Path(value)
    dest = tmp_path_factory.mktemp("cifar")
    subprocess.run([str(shared_data / "unpack.sh"), str(dest)], check=True, capture_output=True)
    return dest
