"""training.progress: the skipped-step budget and the progress bar, through training.loop.train."""

import io

import pytest
import torch

from training.loop import train
from training.objectives import clip as clip_objective
from training.progress import NonFiniteLossError

from .conftest import tiny_cfg


def test_non_finite_steps_are_counted_then_abort(micro_model, colour_table, tmp_path, monkeypatch, reliability):
    real = clip_objective.ClipObjective.forward
    calls = {"n": 0}

    def sometimes_nan(self, out, batch, dist):
        calls["n"] += 1
        value = real(self, out, batch, dist)
        return value * float("nan") if calls["n"] % 3 == 0 else value

    monkeypatch.setattr(clip_objective.ClipObjective, "forward", sometimes_nan)
    result = train(tiny_cfg(micro_model, epochs=3), colour_table, str(tmp_path / "a"))
    assert result.steps == 12 and result.skipped_steps == 4
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in result.history)
    with pytest.raises(NonFiniteLossError, match="max_nonfinite_steps=1"):
        train(tiny_cfg(micro_model, epochs=3, max_nonfinite_steps=1), colour_table, str(tmp_path / "b"))
    reliability.fault("non-finite loss", "train", times=result.skipped_steps)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_bar_on_a_terminal_only(micro_model, colour_table, tmp_path, monkeypatch):
    import training.progress as progress

    terminal = Terminal()
    monkeypatch.setattr(progress.sys, "stderr", terminal)
    train(tiny_cfg(micro_model, epochs=1), colour_table, str(tmp_path / "tty"))
    assert "4/4" in terminal.getvalue() and "loss=" in terminal.getvalue()
    plain = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", plain)
    train(tiny_cfg(micro_model, epochs=1), colour_table, str(tmp_path / "pipe"))
    assert plain.getvalue() == ""
