"""Datasets as tensors: ``load(name)`` returns a :class:`Dataset` (see ``docs/data.md``).

Registered datasets: ``mnist``, ``fashion_mnist`` (official IDX files), ``cifar10``, ``cifar100``
(official binary version), ``digits`` (shipped with scikit-learn, no download) and ``synthetic``
(seeded Gaussian blobs). ``TensorLoader`` (batches drawn by index) lives in ``prunelab.data.loader``.
"""

from __future__ import annotations

from typing import Any

from prunelab.data import cifar, embedded, idx  # noqa: F401  (registers the loaders)
from prunelab.data.cifar import CIFAR_SPECS, parse_cifar, read_cifar_bin
from prunelab.data.dataset import DATASETS, Dataset, RawSplits, channel_stats, load
from prunelab.data.files import Checksum, data_root
from prunelab.data.idx import IDX_SPECS, MNIST_SHA256, parse_idx, read_idx

__all__ = [
    "CIFAR_SPECS",
    "DATASETS",
    "IDX_SPECS",
    "MNIST_SHA256",
    "Checksum",
    "Dataset",
    "RawSplits",
    "TensorLoader",
    "channel_stats",
    "data_root",
    "load",
    "parse_cifar",
    "parse_idx",
    "read_cifar_bin",
    "read_idx",
]


def __getattr__(name: str) -> Any:
    # Lazy: the loader module is optional at import time and pulls in nothing we need here.
    if name == "TensorLoader":
        from prunelab.data.loader import TensorLoader

        return TensorLoader
    raise AttributeError(f"module 'prunelab.data' has no attribute {name!r}")
