"""Resumable fit: checkpoints every N epochs, a crashed or SIGKILLed run resumes bitwise identical."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from prunelab.callbacks import Callback as BaseCallback
from prunelab.errors import PrunelabError
from prunelab.train import (
    CHECKPOINT_NAME,
    Callback,
    TrainConfig,
    TrainState,
    checkpoint_file,
    fit,
    load_train_state,
    save_checkpoint,
)
from prunelab.train.checkpoint import pack, remove_stale_tmp, unpack

WORKER = Path(__file__).with_name("resume_worker.py")


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None


def blobs(n: int = 200, dim: int = 8, classes: int = 3, images: bool = False) -> Data:
    g = torch.Generator().manual_seed(0)
    shape = (1, 4, 4) if images else (dim,)
    centres = 2.0 * torch.randn(classes, *shape, generator=g)

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (m,), generator=g)
        return centres[y] + torch.randn(m, *shape, generator=g), y

    (xtr, ytr), (xte, yte), (xv, yv) = draw(n), draw(60), draw(40)
    return Data(xtr, ytr, xte, yte, xv, yv)


def net(images: bool = False) -> nn.Sequential:
    torch.manual_seed(0)  # the same initial weights in every run
    d = 16 if images else 8
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 24), nn.ReLU(), nn.Dropout(0.2), nn.Linear(24, 3))


class Crash(Callback):
    """Raises at the start of 0-based epoch ``at`` (a crash after ``at`` finished epochs); counts epochs."""

    def __init__(self, at: int | None = None) -> None:
        self.at, self.begun = at, []

    def on_epoch_begin(self, state: TrainState) -> None:
        if state.epoch == self.at:
            raise RuntimeError("simulated crash")
        self.begun.append(state.epoch)


class Tracker(Callback):
    """State that carries across epochs (a count, a running tensor, a tuple) plus its own RNG draw."""

    def __init__(self) -> None:
        self.steps = 0
        self.ema: torch.Tensor | None = None
        self.marks: tuple[int, ...] = ()

    def on_train_begin(self, state: TrainState) -> None:  # a reset, as real callbacks do
        self.steps, self.ema, self.marks = 0, None, ()

    def after_step(self, state: TrainState) -> None:
        self.steps += 1
        w = state.model[1].weight.detach()
        self.ema = w.clone() if self.ema is None else 0.9 * self.ema + 0.1 * w

    def on_epoch_end(self, state: TrainState) -> None:
        self.marks = (*self.marks, int(torch.randint(0, 1000, ())))  # the global torch RNG
        state.metrics.update(tracker_steps=self.steps, tracker_ema=float(self.ema.abs().sum()),
                             tracker_marks=self.marks, np_draw=float(np.random.rand()))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "ema": self.ema, "marks": self.marks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.ema, self.marks = state["steps"], state["ema"], state["marks"]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _strip(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "time"} for row in history]


def _assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


CONFIGS = {
    "sgd-nesterov-cosine-warmup": dict(epochs=6, batch_size=32, lr=0.05, nesterov=True, weight_decay=1e-3,
                                       lr_schedule="cosine", warmup_epochs=1),
    "adam-step-l1-smoothing": dict(epochs=6, batch_size=32, optimizer="adam", lr=3e-3, lr_schedule="step",
                                   milestones=[2, 4], gamma=0.5, l1=1e-4, label_smoothing=0.1),
    "iterations-partial-last-epoch": dict(iterations=40, batch_size=32, lr=0.05, eval_every=2),
    "augment-images": dict(epochs=5, batch_size=40, lr=0.05, augment=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_crashed_run_resumes_bitwise_identical(tmp_path: Path, name: str) -> None:
    images = name == "augment-images"
    data = blobs(images=images)
    cfg = TrainConfig(device="cpu", seed=5, **CONFIGS[name])
    ref_model, ref_tracker = net(images), Tracker()
    ref = fit(ref_model, data, cfg, callbacks=[Crash(), ref_tracker], progress=False)
    total_epochs = len(ref.history)

    crash_at = 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(net(images), data, cfg, callbacks=[Crash(crash_at), Tracker()], progress=False,
            checkpoint=tmp_path, checkpoint_every=1)
    ckpt = tmp_path / CHECKPOINT_NAME
    assert ckpt.is_file()
    saved = load_train_state(ckpt)
    assert saved["loop"]["next_epoch"] == crash_at and len(saved["history"]) == crash_at

    model, crash, tracker = net(images), Crash(), Tracker()
    res = fit(model, data, cfg, callbacks=[crash, tracker], progress=False, checkpoint=tmp_path)
    assert res.resumed_from == crash_at
    assert crash.begun == list(range(crash_at, total_epochs))  # only the missing epochs ran
    _assert_bitwise(_weights(model), _weights(ref_model))
    assert _strip(res.history) == _strip(ref.history)
    assert (res.iterations, res.epochs, res.final, res.final_val) == (ref.iterations, ref.epochs, ref.final,
                                                                      ref.final_val)
    assert tracker.steps == ref_tracker.steps and torch.equal(tracker.ema, ref_tracker.ema)
    assert not ckpt.exists() and not list(tmp_path.iterdir())  # removed after success


def test_checkpoint_every_n_epochs_and_what_the_file_holds(tmp_path: Path) -> None:
    data = blobs()
    cfg = TrainConfig(epochs=7, batch_size=50, lr=0.05, device="cpu")
    ref_model = net()
    ref = fit(ref_model, data, cfg, callbacks=[Crash(), Tracker()], progress=False)
    ckpt = tmp_path / "deep" / "run.safetensors"  # a file path; its folder is created
    with pytest.raises(RuntimeError):
        fit(net(), data, cfg, callbacks=[Crash(5), Tracker()], progress=False, checkpoint=ckpt,
            checkpoint_every=2)
    saved = load_train_state(ckpt)
    assert saved["loop"]["next_epoch"] == 4 and saved["loop"]["iteration"] == 16  # written after epochs 2, 4
    assert saved["identity"]["config"] == cfg.model_dump(mode="json")
    assert set(saved["model"]) == set(net().state_dict())
    assert saved["callbacks"][0] == {} and saved["callbacks"][1]["steps"] == 16
    assert set(saved["rng"]) >= {"python", "numpy", "torch"}
    with safe_open(str(ckpt), "pt") as f:  # a plain safetensors file: tensors plus a JSON header entry
        assert "model.1.weight" in set(f.keys())
        assert json.loads(f.metadata()["prunelab_train_state"])["format"] == "prunelab-train-state"
    model = net()
    res = fit(model, data, cfg, callbacks=[Crash(), Tracker()], progress=False, checkpoint=ckpt,
              checkpoint_every=3)  # the period may change between sessions: it is not part of the result
    assert res.resumed_from == 4
    _assert_bitwise(_weights(model), _weights(ref_model))
    assert _strip(res.history) == _strip(ref.history)
    assert res.time >= saved["loop"]["elapsed"]  # the sessions' training times add up


def test_a_checkpoint_of_another_training_is_refused(tmp_path: Path) -> None:
    data = blobs()
    cfg = TrainConfig(epochs=4, batch_size=50, lr=0.05, device="cpu")
    with pytest.raises(RuntimeError):
        fit(net(), data, cfg, callbacks=[Crash(2)], progress=False, checkpoint=tmp_path)
    ckpt = tmp_path / CHECKPOINT_NAME
    before = ckpt.read_bytes()
    with pytest.raises(PrunelabError, match=r"another training config: lr=0\.05 in the checkpoint, 0\.1 now"):
        fit(net(), data, cfg.model_copy(update={"lr": 0.1}), callbacks=[Crash()], progress=False,
            checkpoint=tmp_path)
    other = net()
    with torch.no_grad():
        other[1].weight[0, 0] += 1.0
    with pytest.raises(PrunelabError, match="other initial weights"):
        fit(other, data, cfg, callbacks=[Crash()], progress=False, checkpoint=tmp_path)
    shuffled = Data(data.x_train.flip(0), data.y_train.flip(0), data.x_test, data.y_test, data.x_val, data.y_val)
    with pytest.raises(PrunelabError, match="other data"):
        fit(net(), shuffled, cfg, callbacks=[Crash()], progress=False, checkpoint=tmp_path)
    with pytest.raises(PrunelabError, match="other callbacks"):
        fit(net(), data, cfg, callbacks=[Crash(), Tracker()], progress=False, checkpoint=tmp_path)
    assert ckpt.read_bytes() == before  # refused, not overwritten
    # the right call still resumes from it
    assert fit(net(), data, cfg, callbacks=[Crash()], progress=False, checkpoint=tmp_path).resumed_from == 2


def test_files_that_are_not_training_checkpoints_are_refused_not_overwritten(tmp_path: Path) -> None:
    data, cfg = blobs(), TrainConfig(epochs=1, device="cpu")
    model_ckpt = tmp_path / "model.safetensors"
    save_checkpoint(model_ckpt, net(), {"note": "a model, not a training state"})
    with pytest.raises(PrunelabError, match="is not a prunelab training checkpoint"):
        fit(net(), data, cfg, progress=False, checkpoint=model_ckpt)
    junk = tmp_path / "junk" / CHECKPOINT_NAME
    junk.parent.mkdir()
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(PrunelabError, match="not a readable safetensors file.*delete it"):
        fit(net(), data, cfg, progress=False, checkpoint=junk.parent)
    assert junk.read_bytes() == b"not safetensors at all"


def test_stale_tmp_files_of_a_crashed_write_are_removed(tmp_path: Path) -> None:
    data = blobs()
    cfg = TrainConfig(epochs=4, batch_size=50, lr=0.05, device="cpu")
    with pytest.raises(RuntimeError):
        fit(net(), data, cfg, callbacks=[Crash(2)], progress=False, checkpoint=tmp_path)
    # what a SIGKILL inside atomic_write_bytes leaves: a half-written ".<name>.<random>.tmp"
    stale = [tmp_path / f".{CHECKPOINT_NAME}.k3j_x9.tmp", tmp_path / f".{CHECKPOINT_NAME}.a1b2c3.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    other = tmp_path / ".metrics.jsonl.q1w2e3.tmp"  # another file's temporary: not ours to delete
    other.write_bytes(b"someone else's")
    res = fit(net(), data, cfg, callbacks=[Crash()], progress=False, checkpoint=tmp_path)
    assert res.resumed_from == 2
    assert not any(p.exists() for p in stale) and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name]
    # also on a fresh start (no checkpoint, only debris)
    stale[0].write_bytes(b"x")
    fit(net(), data, TrainConfig(epochs=1, device="cpu"), progress=False, checkpoint=tmp_path)
    assert not stale[0].exists()
    assert remove_stale_tmp(tmp_path / "missing-folder" / CHECKPOINT_NAME) == []


def test_checkpoint_arguments_are_checked() -> None:
    data, cfg = blobs(), TrainConfig(epochs=1, device="cpu")
    with pytest.raises(PrunelabError, match="checkpoint_every=2 needs a checkpoint path"):
        fit(net(), data, cfg, progress=False, checkpoint_every=2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(PrunelabError, match="checkpoint_every must be a positive number of epochs"):
            fit(net(), data, cfg, progress=False, checkpoint="unused", checkpoint_every=bad)
    with pytest.raises(PrunelabError, match=r"must be a folder or a file ending in \.safetensors, not '\.pt'"):
        fit(net(), data, cfg, progress=False, checkpoint="run/ckpt.pt")
    with pytest.raises(PrunelabError, match="checkpoint must be a folder or a .safetensors path"):
        fit(net(), data, cfg, progress=False, checkpoint=3)
    assert checkpoint_file("runs/abc") == Path("runs/abc") / CHECKPOINT_NAME
    assert checkpoint_file("runs/abc/state.safetensors") == Path("runs/abc/state.safetensors")


def test_callback_state_hooks_default_to_nothing_and_must_return_dicts(tmp_path: Path) -> None:
    cb = BaseCallback()
    assert cb.state_dict() == {} and cb.load_state_dict({"anything": 1}) is None

    class Bad(Callback):
        def state_dict(self):
            return [1, 2]

    with pytest.raises(PrunelabError, match=r"Bad.state_dict\(\) must return a dict, got list"):
        fit(net(), blobs(), TrainConfig(epochs=2, device="cpu"), callbacks=[Bad()], progress=False,
            checkpoint=tmp_path)

    class Unstorable(Callback):
        def state_dict(self):
            return {"fn": print}

    with pytest.raises(PrunelabError, match=r"'callbacks.0.fn' is a builtin_function_or_method"):
        fit(net(), blobs(), TrainConfig(epochs=2, device="cpu"), callbacks=[Unstorable()], progress=False,
            checkpoint=tmp_path)


def test_pack_round_trips_nested_state_exactly() -> None:
    state = {
        "t": torch.arange(6, dtype=torch.int16).reshape(2, 3), "b": torch.tensor([True, False]),
        "ints": {0: {"step": torch.tensor(3.0)}, 7: "x"}, "tup": (1, (2.5, None), [True]),
        "np": np.arange(4, dtype=np.uint32), "scalar": np.float64(0.25), "inf": float("inf"),
        "__tensor__": "a key that looks like a marker", "nested": [{"a": torch.ones(2)}],
        "a.b": torch.zeros(1), "a": {"b": torch.full((1,), 7.0)},  # the same flattened path
    }
    tensors: dict[str, torch.Tensor] = {}
    doc = json.loads(json.dumps(pack(state, tensors)))
    back = unpack(doc, tensors)
    assert torch.equal(back["t"], state["t"]) and back["t"].dtype == torch.int16
    assert torch.equal(back["b"], state["b"]) and torch.equal(back["nested"][0]["a"], torch.ones(2))
    assert back["ints"].keys() == {0, 7} and torch.equal(back["ints"][0]["step"], torch.tensor(3.0))
    assert back["tup"] == (1, (2.5, None), [True]) and back["__tensor__"] == state["__tensor__"]
    assert back["np"].dtype == np.uint32 and back["np"].tolist() == [0, 1, 2, 3]
    assert back["scalar"] == 0.25 and back["inf"] == float("inf")
    assert back["a.b"].tolist() == [0.0] and back["a"]["b"].tolist() == [7.0] and len(tensors) == 6
    with pytest.raises(PrunelabError, match=r"'s' is a set"):
        pack({"s": {1, 2}}, {})
    with pytest.raises(PrunelabError, match="keys must be str or int"):
        pack({(1, 2): 3}, {})


def _worker_module() -> Any:
    spec = importlib.util.spec_from_file_location("resume_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sigkilled_training_resumes_bitwise_identical(tmp_path: Path) -> None:
    """A training process killed with SIGKILL after its first checkpoint, then rerun (here, in this
    process, to save a second interpreter start-up), ends with the weights and history of an
    uninterrupted run."""
    worker = _worker_module()
    ckpt_dir = tmp_path / "ckpt"
    ckpt = ckpt_dir / CHECKPOINT_NAME
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    victim = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "victim"), str(ckpt_dir),
                               "--delay", "0.15"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert torch.get_num_threads() == 1  # as in the worker (tests/conftest.py)
        ref_info = worker.run(str(tmp_path / "reference"))  # uninterrupted, meanwhile
        deadline = time.monotonic() + 120
        while not ckpt.exists():  # the first checkpoint: after epoch 1
            assert victim.poll() is None, victim.communicate()[1].decode()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        assert victim.poll() is None  # still training (11 more epochs of >= 0.15 s each)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "victim.json").exists() and ckpt.exists()
    info = worker.run(str(tmp_path / "victim"), str(ckpt_dir))  # the rerun

    assert info["resumed_from"] is not None and info["resumed_from"] >= 1
    assert info["epochs_run"] == worker.EPOCHS - info["resumed_from"]
    assert ref_info["resumed_from"] is None and ref_info["epochs_run"] == worker.EPOCHS
    _assert_bitwise(load_file(str(tmp_path / "victim.safetensors")),
                    load_file(str(tmp_path / "reference.safetensors")))
    assert info["history"] == ref_info["history"]
    assert not ckpt.exists() and not list(ckpt_dir.iterdir())  # no checkpoint, no stale .tmp left
