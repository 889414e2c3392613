"""Training progress: plain periodic lines when stderr is not a terminal, a live bar when it is."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

from prunelab.train import Callback, TrainConfig, fit
from prunelab.train import progress as progress_mod
from prunelab.train.progress import ProgressBar

LINE = re.compile(
    r"^train epoch (\d+)/(\d+) step (\d+)/(\d+) loss \d+\.\d{4} acc \d\.\d{3}( val_acc \d\.\d{3})?"
    r" test_acc \d\.\d{3} elapsed \d+:\d\d:\d\d eta (\d+:\d\d:\d\d|\?)$"
)


def _data(n: int = 120) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 4, generator=g) + 2.0 * y[:, None]
    return x, y


class Data:
    def __init__(self) -> None:
        self.x_train, self.y_train = _data()
        self.x_test, self.y_test = _data(40)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_fit_writes_plain_lines_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture) -> None:
    cfg = TrainConfig(epochs=4, batch_size=30, lr=0.05, device="cpu")  # 4 steps per epoch
    fit(_model(), Data(), cfg, progress=True)  # stderr is pytest's capture: not a terminal
    err = capsys.readouterr().err
    assert "\x1b" not in err  # no escape codes in a log file
    lines = err.splitlines()
    assert lines and all(LINE.match(line) for line in lines), err
    epochs = [int(LINE.match(line).group(1)) for line in lines]
    # the first epoch, then every PLAIN_INTERVAL_S (10 s: not reached here), and the last epoch
    assert epochs == [1, 4]
    assert [LINE.match(line).group(3) for line in lines] == ["4", "16"]
    assert lines[-1].endswith("eta 0:00:00")
    fit(_model(), Data(), cfg, progress=False)
    assert capsys.readouterr().err == ""


def test_plain_lines_follow_the_interval(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_mod, "PLAIN_INTERVAL_S", 0.0)
    fit(_model(), Data(), TrainConfig(epochs=3, batch_size=30, device="cpu"), progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert [int(LINE.match(line).group(1)) for line in lines if LINE.match(line)] == [1, 2, 3]


def test_long_epochs_get_step_lines_in_between(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_mod, "_FLUSH_S", 0.0)
    out = io.StringIO()
    bar = ProgressBar(True, 8, total_epochs=2, interval=0.0, console=Console(file=out, width=40))
    assert bar.mode == "plain"
    bar.begin_epoch(1)
    bar.advance()
    bar.advance()
    bar.show({"epoch": 1, "train_loss": 0.5, "train_acc": 0.75, "test_acc": None})
    bar.note("a note that is much longer than the forty columns of this console, on one line")
    bar.close()
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"train epoch 1/2 step 1/8 elapsed 0:00:00 eta .+", lines[0])
    assert re.fullmatch(r"train epoch 1/2 step 2/8 elapsed 0:00:00 eta .+", lines[1])
    assert re.fullmatch(r"train epoch 1/2 step 2/8 loss 0\.5000 acc 0\.750 elapsed 0:00:00 eta .+", lines[2])
    assert lines[3] == "a note that is much longer than the forty columns of this console, on one line"
    assert len(lines) == 4


def test_a_terminal_gets_the_live_bar() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    bar = ProgressBar(True, 6, total_epochs=3, console=console)
    assert bar.mode == "live"
    bar.begin_epoch(1)
    for _ in range(2):
        bar.advance()
    bar.show({"epoch": 1, "train_loss": 0.25, "train_acc": 0.5, "test_acc": 0.625})
    bar.close()
    text = out.getvalue()
    assert "\x1b" in text and "epoch 1/3 loss 0.2500 acc 0.500 test_acc 0.625" in text and "2/6" in text
    dumb = ProgressBar(True, 6, console=Console(file=io.StringIO(), force_terminal=True, _environ={"TERM": "dumb"}))
    assert dumb.mode == "plain"  # a dumb terminal cannot redraw a bar
    dumb.close()
    assert ProgressBar(False, 6).mode is None


def test_resuming_is_announced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    class Crash(Callback):
        def __init__(self, at=None):
            self.at = at

        def on_epoch_begin(self, state):
            if state.epoch == self.at:
                raise RuntimeError("crash")

    cfg = TrainConfig(epochs=3, batch_size=30, device="cpu")
    with pytest.raises(RuntimeError):
        fit(_model(), Data(), cfg, callbacks=[Crash(2)], progress=False, checkpoint=tmp_path)
    fit(_model(), Data(), cfg, callbacks=[Crash()], progress=True, checkpoint=tmp_path)
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"train: resuming from .*train_checkpoint\.safetensors after epoch 2/3 \(iteration 8/12\)",
                        lines[0])
    assert LINE.match(lines[1]).group(1, 3) == ("3", "12")
