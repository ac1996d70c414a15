"""Checkpoints load with ``weights_only=True``: a checkpoint whose pickle would run code is refused, by the
trainer's resume (training.checkpoints.load_checkpoint), by model loading (training.models.create_model, through
open_clip) and by ``curaclip eval --checkpoint``, and the code never runs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from flows.cli import main
from training.checkpoints import load_checkpoint
from training.models import create_model

CODE_IN_PICKLE = "a checkpoint whose pickle runs code (loaded with weights_only)"
"""The reliability ledger's check (tests/conftest.py) each refusal below counts under."""


class RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: code a checkpoint file chooses, run by a plain ``torch.load``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def hostile(tmp_path, micro_model):
    model, _, _ = create_model(micro_model)
    marker = tmp_path / "code-ran"
    path = tmp_path / "hostile.pt"
    torch.save({"state_dict": model.state_dict(), "step": 1, "payload": RunsCode(marker)}, path)
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_resume_refuses_a_checkpoint_that_would_run_code(hostile, reliability):
    path, marker = hostile
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(path)
    assert not marker.exists()
    reliability.check(CODE_IN_PICKLE)


def test_model_loading_refuses_it(hostile, micro_model, reliability):
    path, marker = hostile
    with pytest.raises(pickle.UnpicklingError):
        create_model(micro_model, checkpoint=str(path))
    assert not marker.exists()
    reliability.check(CODE_IN_PICKLE)


def test_curaclip_eval_refuses_it_in_one_line(hostile, micro_model, capsys, reliability):
    path, marker = hostile
    assert main(["eval", "--checkpoint", str(path), "--model", micro_model, "--dataset", "synthetic",
                 "--task", "zeroshot_classification", "--output", str(path.parent / "out.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("curaclip eval: error: ") and err.count("\n") == 1 and "weights_only" in err
    assert not marker.exists()
    reliability.check(CODE_IN_PICKLE)
