"""training.loop, the driver: tiny trainings end to end, resumes on the same curve, every objective in a run."""

import json
from pathlib import Path

import open_clip
import pytest
import torch

from training.config import TrainConfig
from training.loop import train
from training.objectives.mlcd import MLCDConfig

from .conftest import tiny_cfg, train_killed_at


def test_tiny_training_lowers_the_loss_and_writes_open_clip_checkpoints(micro_model, colour_table, tmp_path):
    lines = []
    result = train(tiny_cfg(micro_model), colour_table, str(tmp_path), log=lines.append)
    assert result.steps == 24 and result.samples_seen == 24 * 16 and result.skipped_steps == 0
    losses_ = [m["loss"] for m in result.history]
    assert losses_[-1] < 0.7 * losses_[0], losses_
    assert result.final_loss == losses_[-1] and result.samples_per_second > 0
    assert lines == result.history
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == result.history and [m["step"] for m in logged] == [4, 8, 12, 16, 20, 24]
    assert {"loss", "loss_clip", "lr", "epoch", "samples_per_second", "grad_norm"} <= set(logged[0])
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch_*.pt"))
    assert checkpoints == ["epoch_5.pt", "epoch_6.pt"]  # keep_epoch_checkpoints=2
    state = torch.load(tmp_path / "checkpoints" / "epoch_6.pt", weights_only=True)
    assert state["epoch"] == 6 and state["step"] == 24 and "optimizer" in state
    assert not any(k.startswith("module.") for k in state["state_dict"])
    open_clip.add_model_config(Path(micro_model))
    plain, _, _ = open_clip.create_model_and_transforms(Path(micro_model).stem, pretrained=result.checkpoint)
    assert plain.logit_scale.item() <= torch.log(torch.tensor(100.0)).item() + 1e-6


def test_a_killed_run_resumes_from_its_last_checkpoint_on_the_same_curve(micro_model, colour_table, tmp_path):
    cfg = tiny_cfg(micro_model, epochs=4, log_every=2, checkpoint_every=6)
    whole = train(cfg, colour_table, str(tmp_path / "whole"))

    def kill_at_step_10(line):
        if line["step"] == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, colour_table, str(tmp_path / "killed"), log=kill_at_step_10)
    marker = json.loads((tmp_path / "killed" / "checkpoints" / "latest.json").read_text())
    assert marker == {"path": "epoch_2.pt", "step": 8, "epoch": 2}
    resumed = train(cfg, colour_table, str(tmp_path / "killed"))
    assert [m["step"] for m in resumed.history] == [2, 4, 6, 8, 10, 12, 14, 16]
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a, b)
    assert resumed.steps == 16 and resumed.final_loss == pytest.approx(whole.final_loss, rel=1e-4)


# --- objectives in the loop ----------------------------------------------------------------------------

ALL_OBJECTIVES = ("clip", "siglip", "dcl", "negclip", "alip", "dreamlip", "mlcd")
COMBINED = ("siglip", "dcl", "dreamlip", "mlcd")
"""Objectives that may be combined: clip, negclip, alip and dreamlip each hold the raw caption's CLIP loss."""


def objective_cfg(micro_model, objectives, **kw) -> TrainConfig:
    return tiny_cfg(micro_model, objectives=objectives, mlcd=MLCDConfig(num_centers=4, negative_ratio=1.0), **kw)


@pytest.mark.parametrize("objectives", [(name,) for name in ALL_OBJECTIVES] + [COMBINED],
                         ids=[*ALL_OBJECTIVES, "combined"])
def test_each_objective_and_all_together_lower_their_loss(micro_model, colour_table, tmp_path, objectives):
    result = train(objective_cfg(micro_model, objectives, epochs=4), colour_table, str(tmp_path))
    first, last = result.history[0], result.history[-1]
    # ALIP's gated loss rises while its running means fall from 1 towards the similarities; the ungated
    # losses of both paths show the fit.
    keys = ["alip_ungated_raw", "alip_ungated_caption"] if objectives == ("alip",) else ["loss"]
    for key in keys:
        assert last[key] < 0.85 * first[key], (key, [m[key] for m in result.history])
    assert all(f"loss_{name}" in last for name in objectives)
    if "alip" in objectives:
        assert 0 < last["alip_gate_sample"] <= 1 and last["alip_mu_raw"] < 1.0


def test_mlcd_without_its_number_of_centers_is_a_clear_error(micro_model, colour_table, tmp_path):
    with pytest.raises(ValueError, match="mlcd.num_centers"):
        train(tiny_cfg(micro_model, objectives=("clip", "mlcd")), colour_table, str(tmp_path))


@pytest.mark.parametrize(("objectives", "state_keys", "curves"), [
    (("siglip", "alip", "mlcd"), {"terms.alip.mu", "terms.mlcd.weight", "terms.siglip.logit_bias"},
     ("loss", "loss_mlcd", "alip_mu_raw")),
    (("dreamlip", "mlcd"),
     {"terms.mlcd.weight", "terms.dreamlip.token_proj.weight", "terms.dreamlip.group_logit_scale"},
     ("loss", "loss_mlcd", "loss_dreamlip"))], ids=["alip", "dreamlip"])
def test_a_killed_run_with_stateful_objectives_resumes_on_the_same_curve(micro_model, colour_table, tmp_path,
                                                                         objectives, state_keys, curves):
    """ALIP's running means, MLCD's classifier and sampling step, DreamLIP's projection and temperature and
    SigLIP's bias are all in the checkpoint: the resumed run repeats the uninterrupted one."""
    cfg = tiny_cfg(micro_model, epochs=3, log_every=2, checkpoint_every=6, objectives=objectives,
                   mlcd=MLCDConfig(num_centers=6, negative_ratio=0.5))
    whole = train(cfg, colour_table, str(tmp_path / "whole"))

    train_killed_at(cfg, colour_table, str(tmp_path / "killed"), step=8)
    state = torch.load(tmp_path / "killed" / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 6 and state["objectives"]["terms.mlcd._extra_state"] == {"steps_done": 6}
    assert state_keys <= set(state["objectives"])
    resumed = train(cfg, colour_table, str(tmp_path / "killed"))
    assert [m["step"] for m in resumed.history] == [2, 4, 6, 8, 10, 12]
    for a, b in zip(whole.history, resumed.history, strict=True):
        for key in curves:
            assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)


# --- optimisation: Lion, accumulation ----------------------------------------------------------------------


def test_lion_trains(micro_model, colour_table, tmp_path):
    result = train(tiny_cfg(micro_model, optimizer="lion", lr=3e-4, weight_decay=0.5, epochs=4), colour_table,
                   str(tmp_path))
    assert result.history[-1]["loss"] < 0.8 * result.history[0]["loss"]
    state = torch.load(tmp_path / "checkpoints" / "epoch_4.pt", weights_only=True)
    assert all(set(s) == {"exp_avg"} for s in state["optimizer"]["state"].values())


def test_training_with_accumulation_counts_samples_per_step(micro_model, colour_table, tmp_path):
    result = train(tiny_cfg(micro_model, batch_size=8, accum_freq=2, epochs=4), colour_table, str(tmp_path))
    assert result.steps == 16 and result.samples_seen == 16 * 16
    assert result.history[-1]["loss"] < 0.8 * result.history[0]["loss"]
