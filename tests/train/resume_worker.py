"""A small training run in its own process, for the SIGKILL test of ``test_train_resume.py``.

``python resume_worker.py OUT [CHECKPOINT_DIR] [--delay SECONDS]`` (or :func:`run` in-process) trains a tiny MLP on ``digits``
(12 epochs, checkpointing every epoch when a checkpoint folder is given), writes the final weights to
``OUT.safetensors`` and ``{"history", "epochs_run", "resumed_from"}`` to ``OUT.json``. ``--delay``
sleeps at every epoch end (pacing only: it does not change the result), so the test can kill the
process mid-training. Not a test module (pytest collects ``test_*.py`` only).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from prunelab import data, models
from prunelab.train import Callback, TrainConfig, fit, save_state_dict

EPOCHS = 12


class Pace(Callback):
    """Sleeps ``delay`` seconds after every epoch and counts the epochs this process ran."""

    def __init__(self, delay: float) -> None:
        self.delay, self.epochs_run = delay, 0

    def on_epoch_end(self, state) -> None:
        self.epochs_run += 1
        time.sleep(self.delay)


def run(out: str, checkpoint: str | None = None, delay: float = 0.0) -> dict:
    """Train, write ``out.safetensors`` and ``out.json``, return what went into the JSON."""
    ds = data.load("digits")
    torch.manual_seed(0)
    model = models.create("mlp", num_classes=ds.num_classes, input_shape=ds.input_shape, widths=[32, 16])
    cfg = TrainConfig(epochs=EPOCHS, batch_size=64, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4,
                      lr_schedule="cosine", warmup_epochs=1, seed=3, device="cpu")
    pace = Pace(delay)
    res = fit(model, ds, cfg, callbacks=[pace], progress=False, checkpoint=checkpoint)
    save_state_dict(out + ".safetensors", model.state_dict())
    history = [{k: v for k, v in row.items() if k != "time"} for row in res.history]
    info = {"history": history, "epochs_run": pace.epochs_run, "resumed_from": res.resumed_from}
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump(info, f)
    return info


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the test suite (tests/conftest.py): the same reductions everywhere
    run(args.out, args.checkpoint, args.delay)


if __name__ == "__main__":
    main()
