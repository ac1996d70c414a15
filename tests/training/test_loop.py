import io
import json
from pathlib import Path

import open_clip
import pytest
import torch

from training.config import TrainConfig
from training.distributed import DistContext
from training.loop import NonFiniteLossError, TrainModule, train, train_step
from training.models import create_model
from training.objectives import WeightedObjectives
from training.objectives import clip as clip_objective
from training.objectives.mlcd import MLCDConfig
from training.objectives.protoclip import ProtoCLIPConfig
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


def count_text_rows(model) -> list[int]:
    """Rows of every text-tower forward (trimmed or not: both run `model.transformer`, the text one)."""
    calls: list[int] = []
    model.transformer.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    return calls


@pytest.mark.parametrize(("objectives", "rows_per_image", "patch_tokens", "kinds"), [
    (("clip",), [1], False, 1), (("alip",), [2], False, 2), (("siglip", "dreamlip"), [7], True, 2),
    (("dreamlip",), [7], True, 2), (("negclip",), [2], False, 2),
    (("mlcd",), [1], False, 1)])  # MLCD alone: the raw caption only for the logged CLIP loss, without a gradient
def test_the_model_runs_only_the_passes_the_objectives_read(micro_model, colour_table, objectives, rows_per_image,
                                                            patch_tokens, kinds, monkeypatch):
    import training.loop
    from training.data import batch_fields, table_loader
    from training.models import image_transform

    cfg = objective_cfg(micro_model, objectives)
    model, _, tokenizer = create_model(micro_model)
    module = TrainModule(model, WeightedObjectives(cfg, 32), DistContext())
    batch = next(table_loader(colour_table, 8, tokenizer, True, 0, transform=image_transform(model, True),
                              fields=batch_fields(cfg)))
    calls = count_text_rows(model)
    out = module.encode(batch)
    # a causal text tower: one trimmed forward per kind of caption, every caption of the step encoded once
    assert sum(calls) == 8 * sum(rows_per_image) and len(calls) == kinds
    calls.clear()
    monkeypatch.setattr(training.loop, "trims_text", lambda model: False)
    out = module.encode(batch)
    assert calls == [8 * r for r in rows_per_image]  # any other text tower: every caption in ONE forward
    assert ("patch_tokens" in out) == patch_tokens
    if patch_tokens:
        assert out["patch_tokens"].shape == (8, 16, 64) and out["subcaption_features"].shape == (8, 6, 32)
        plain = model.encode_image(batch["image"], normalize=True)
        assert torch.allclose(out["image_features"], plain, atol=1e-6)


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

    def kill_at_step_8(line):
        if line["step"] == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, colour_table, str(tmp_path / "killed"), log=kill_at_step_8)
    state = torch.load(tmp_path / "killed" / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 6 and state["objectives"]["terms.mlcd._extra_state"] == {"steps_done": 6}
    assert state_keys <= set(state["objectives"])
    resumed = train(cfg, colour_table, str(tmp_path / "killed"))
    assert [m["step"] for m in resumed.history] == [2, 4, 6, 8, 10, 12]
    for a, b in zip(whole.history, resumed.history, strict=True):
        for key in curves:
            assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)


# --- optimisation: Lion, feature-cached accumulation, progress bar ------------------------------------------


def test_lion_trains(micro_model, colour_table, tmp_path):
    result = train(tiny_cfg(micro_model, optimizer="lion", lr=3e-4, weight_decay=0.5, epochs=4), colour_table,
                   str(tmp_path))
    assert result.history[-1]["loss"] < 0.8 * result.history[0]["loss"]
    state = torch.load(tmp_path / "checkpoints" / "epoch_4.pt", weights_only=True)
    assert all(set(s) == {"exp_avg"} for s in state["optimizer"]["state"].values())


def split_batch(batch: dict, parts: int) -> list[dict]:
    """`parts` micro-batches of a collated batch (per-image token groups split with their images)."""
    rows = batch["image"].shape[0]
    out = [{} for _ in range(parts)]
    for key, value in batch.items():
        size = len(value) // parts
        for j in range(parts):
            out[j][key] = value[j * size:(j + 1) * size]
    assert all(len(b["uid"]) == rows // parts for b in out)
    return out


@pytest.mark.parametrize("objectives", [("siglip", "dcl", "alip", "mlcd"), ("dreamlip", "mlcd"), ("negclip",)])
def test_accumulated_micro_batches_give_the_big_batch_gradient(micro_model, colour_table, objectives):
    """open_clip's feature-cached accumulation with every objective: 2 x 8 samples = one batch of 16."""
    import copy

    from training.data import batch_fields, table_loader
    from training.loop import forward_backward
    from training.models import image_transform

    cfg = tiny_cfg(micro_model, objectives=objectives, mlcd=MLCDConfig(num_centers=6, negative_ratio=0.5))
    model, _, tokenizer = create_model(micro_model)
    big = TrainModule(model, WeightedObjectives(cfg, 32), DistContext())
    accumulated = copy.deepcopy(big)
    batch = next(table_loader(colour_table, 16, tokenizer, True, 0, transform=image_transform(model, True),
                              fields=batch_fields(cfg)))
    total, terms = forward_backward(big, [batch], cfg, DistContext())
    total_acc, terms_acc = forward_backward(accumulated, split_batch(batch, 2), cfg, DistContext())
    assert total_acc.item() == pytest.approx(total.item(), rel=1e-5)
    assert all(terms_acc[k].item() == pytest.approx(v.item(), rel=1e-5) for k, v in terms.items())
    grads = dict(big.named_parameters())
    for name, p in accumulated.named_parameters():
        assert (p.grad is None) == (grads[name].grad is None), name
        if p.grad is not None:
            assert torch.allclose(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6), name


def test_training_with_accumulation_counts_samples_per_step(micro_model, colour_table, tmp_path):
    result = train(tiny_cfg(micro_model, batch_size=8, accum_freq=2, epochs=4), colour_table, str(tmp_path))
    assert result.steps == 16 and result.samples_seen == 16 * 16
    assert result.history[-1]["loss"] < 0.8 * result.history[0]["loss"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_bar_on_a_terminal_only(micro_model, colour_table, tmp_path, monkeypatch):
    import training.loop as loop

    terminal = Terminal()
    monkeypatch.setattr(loop.sys, "stderr", terminal)
    train(tiny_cfg(micro_model, epochs=1), colour_table, str(tmp_path / "tty"))
    assert "4/4" in terminal.getvalue() and "loss=" in terminal.getvalue()
    plain = io.StringIO()
    monkeypatch.setattr(loop.sys, "stderr", plain)
    train(tiny_cfg(micro_model, epochs=1), colour_table, str(tmp_path / "pipe"))
    assert plain.getvalue() == ""


# --- ProtoCLIP episodes -----------------------------------------------------------------------------------


def protoclip_cfg(micro_model, **kw) -> TrainConfig:
    proto = ProtoCLIPConfig(num_prototypes=4, episode_size=kw.pop("episode_size", 32), projection_dim=16,
                            projection_hidden_dim=32)
    return tiny_cfg(micro_model, objectives=("clip", "protoclip"), protoclip=proto, **kw)


def spy_episodes(monkeypatch) -> list[tuple[int, int]]:
    """(episode number, clustered samples) of each episode_prototypes call."""
    import training.loop as loop

    calls = []
    real = loop.episode_prototypes

    def spy(run, batches, episode):
        calls.append((episode, sum(len(b["uid"]) for b in batches)))
        return real(run, batches, episode)

    monkeypatch.setattr(loop, "episode_prototypes", spy)
    return calls


def test_protoclip_trains_in_episodes(micro_model, colour_table, tmp_path, monkeypatch):
    episodes = spy_episodes(monkeypatch)
    result = train(protoclip_cfg(micro_model, epochs=4), colour_table, str(tmp_path))
    assert episodes == [(e, 32) for e in range(8)]  # 32-sample episodes of 2 steps of 16
    losses = [m["loss_protoclip"] for m in result.history]
    assert losses[-1] < 0.5 * losses[0] and result.history[-1]["loss"] < 0.7 * result.history[0]["loss"]


def test_episode_index_is_each_samples_position_in_its_episode(micro_model, colour_table, tmp_path, monkeypatch):
    from training.objectives.protoclip import ProtoCLIPObjective

    seen = []
    real = ProtoCLIPObjective.forward

    def spy(self, out, batch, dist):
        seen.append(batch["episode_index"].tolist())
        return real(self, out, batch, dist)

    monkeypatch.setattr(ProtoCLIPObjective, "forward", spy)
    train(protoclip_cfg(micro_model, epochs=2, episode_size=48, batch_size=8, accum_freq=2), colour_table,
          str(tmp_path))
    # 48-sample episodes = 3 steps of 2 x 8; 8 steps in all, the last episode cut to 2 steps by the run's end.
    # Accumulated micro-batches are merged, so each step's loss sees positions of both micro-batches.
    assert seen[0] == list(range(16)) and seen[1] == list(range(16)) and seen[2] == list(range(16, 32))
    assert seen[4] == list(range(32, 48)) and seen[6] == list(range(16)) and seen[-1] == list(range(16, 32))


def test_protoclip_resumed_mid_episode_continues_the_same_curve(micro_model, colour_table, tmp_path, monkeypatch):
    cfg = protoclip_cfg(micro_model, epochs=3, log_every=2, checkpoint_every=0, episode_size=48)
    whole = train(cfg, colour_table, str(tmp_path / "whole"))

    def kill_at_step_6(line):
        if line["step"] == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, colour_table, str(tmp_path / "killed"), log=kill_at_step_6)
    state = torch.load(tmp_path / "killed" / "checkpoints" / "epoch_1.pt", weights_only=True)
    assert state["step"] == 4 and "terms.protoclip._extra_state" in state["objectives"]  # mid-episode [3, 6)
    episodes = spy_episodes(monkeypatch)
    resumed = train(cfg, colour_table, str(tmp_path / "killed"))
    assert episodes == [(2, 48), (3, 48)]  # the checkpoint's prototypes finish episode 1
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["step"] == b["step"], (a, b)
