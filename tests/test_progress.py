"""Progress bars appear only on a terminal (``tqdm(disable=None)``): pipes, CI logs and
``make bench`` get no carriage-return frames."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from torch import nn

import tfx


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)).eval()


def _factorize() -> nn.Module:
    return tfx.factorize(_model(), 0.5, example_inputs=(torch.randn(4, 32),), progress=True)


def _distill(student: nn.Module, teacher: nn.Module) -> None:
    data = [(torch.randn(4, 32),)]
    tfx.distill(student, teacher, data, steps=2, progress=True)


def test_factorize_progress_writes_nothing_to_a_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    _factorize()
    err = capsys.readouterr().err
    assert "\r" not in err and "tfx:" not in err


def test_distill_progress_writes_nothing_to_a_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    teacher = _model()
    student = tfx.factorize(teacher, 0.5, example_inputs=(torch.randn(4, 32),), progress=False)
    _distill(student, teacher)
    err = capsys.readouterr().err
    assert "\r" not in err and "tfx:" not in err


def test_progress_is_shown_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    # The other side of the switch: the same calls draw bars on a tty, so the tests above
    # check the terminal detection rather than a bar that never existed.
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    teacher = _model()
    student = _factorize()
    _distill(student, teacher)
    out = terminal.getvalue()
    assert "\r" in out and "tfx: decompose" in out and "tfx: distill" in out
