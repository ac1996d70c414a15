import json
from pathlib import Path

import open_clip
import pytest
import torch

from training import losses
from training.config import TrainConfig
from training.loop import NonFiniteLossError, TrainModule, train, train_step
from training.losses import DistContext, WeightedObjectives
from training.models import create_model
from training.optim import make_optimizer


def tiny_cfg(micro_model, **kw) -> TrainConfig:
    base = dict(model=micro_model, epochs=6, batch_size=16, lr=2e-3, warmup_steps=3, log_every=4,
                checkpoint_every=0, context_length=16, workers=0)
    return TrainConfig(**{**base, **kw})


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


def test_a_non_finite_loss_skips_the_step_and_leaves_the_weights(micro_model, colour_table):
    from training.data import table_loader
    from training.models import image_transform

    cfg = tiny_cfg(micro_model)
    model, _, tokenizer = create_model(micro_model)
    module = TrainModule(model, WeightedObjectives(cfg, 32), DistContext())
    optimizer = make_optimizer(module, cfg)
    batch = next(iter(table_loader(colour_table, 8, tokenizer, True, 0, transform=image_transform(model, True))))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch["image"][0, 0, 0, 0] = float("nan")
    assert train_step(module, optimizer, batch, cfg, DistContext()) is None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    batch["image"] = torch.nan_to_num(batch["image"])
    assert train_step(module, optimizer, batch, cfg, DistContext()) is not None
    assert not torch.equal(model.visual.conv1.weight, before["visual.conv1.weight"])


def test_non_finite_steps_are_counted_then_abort(micro_model, colour_table, tmp_path, monkeypatch):
    real = losses.ClipObjective.forward
    calls = {"n": 0}

    def sometimes_nan(self, out, batch, dist):
        calls["n"] += 1
        value = real(self, out, batch, dist)
        return value * float("nan") if calls["n"] % 3 == 0 else value

    monkeypatch.setattr(losses.ClipObjective, "forward", sometimes_nan)
    result = train(tiny_cfg(micro_model, epochs=3), colour_table, str(tmp_path / "a"))
    assert result.steps == 12 and result.skipped_steps == 4
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in result.history)
    with pytest.raises(NonFiniteLossError, match="max_nonfinite_steps=1"):
        train(tiny_cfg(micro_model, epochs=3, max_nonfinite_steps=1), colour_table, str(tmp_path / "b"))


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
