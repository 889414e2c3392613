"""Small shared helpers: device choice, seeding, module modes, compression ratios, atomic file writes."""

from __future__ import annotations

import json
import os
import random
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelab.errors import PrunelabError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU. ``cuda`` without a GPU is a clear error."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str) or device.split(":")[0] not in DEVICES:
        raise PrunelabError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PrunelabError(f"device {device!r} requested but no CUDA GPU is available; use 'cpu' or 'auto'")
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch CPU generator seeded with ``seed``."""
    if not isinstance(seed, int) or seed < 0:
        raise PrunelabError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def compression_ratio(total: int, kept: int) -> float:
    """``total / kept`` (compression = 1 / density), ``inf`` when nothing is kept."""
    return total / kept if kept else float("inf")


@contextmanager
def eval_mode(model: torch.nn.Module, training: bool = False, restore_buffers: bool = False) -> Iterator[None]:
    """Put ``model`` in eval mode (train mode with ``training=True``) for the block, then give every
    submodule back its own ``training`` flag. ``restore_buffers=True`` also restores the buffers
    (e.g. BatchNorm running statistics that a train-mode forward updates)."""
    modes = [(m, m.training) for m in model.modules()]
    saved = {k: b.clone() for k, b in model.named_buffers()} if restore_buffers else {}
    model.train(training)
    try:
        yield
    finally:
        for m, flag in modes:
            m.training = flag
        if saved:
            with torch.no_grad():
                for k, b in model.named_buffers():
                    b.copy_(saved[k])


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    Linux reports it in ``/proc/self/status`` (``Umask:`` line, kernel 4.7+); elsewhere it is read
    by setting and restoring it under a lock (``os.umask`` can only be read by setting it).
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    A crash leaves either the old file or the new one, never a half-written file. The file gets the
    mode a plain ``open(path, "w")`` of a new file would give it, ``0o666 & ~umask`` (``mkstemp``
    alone would leave it ``0o600``); the mode is set on the temporary file, before the replace.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            mode = 0o666 & ~current_umask()
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            else:  # pragma: no cover  (Windows: only the read-only bit is honoured)
                os.chmod(tmp, mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
