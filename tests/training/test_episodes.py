"""training.episodes: ProtoCLIP's runs train in episodes, each sample knows its place in its episode, and a run
resumed mid-episode finishes it with the checkpoint's prototypes."""

import pytest
import torch

from training.config import TrainConfig
from training.loop import train
from training.objectives.protoclip import ProtoCLIPConfig

from .conftest import tiny_cfg, train_killed_at


def protoclip_cfg(micro_model, **kw) -> TrainConfig:
    proto = ProtoCLIPConfig(num_prototypes=4, episode_size=kw.pop("episode_size", 32), projection_dim=16,
                            projection_hidden_dim=32)
    return tiny_cfg(micro_model, objectives=("clip", "protoclip"), protoclip=proto, **kw)


def spy_episodes(monkeypatch) -> list[tuple[int, int]]:
    """(episode number, clustered samples) of each episode_prototypes call."""
    import training.episodes as episodes

    calls = []
    real = episodes.episode_prototypes

    def spy(run, batches, episode):
        calls.append((episode, sum(len(b["uid"]) for b in batches)))
        return real(run, batches, episode)

    monkeypatch.setattr(episodes, "episode_prototypes", spy)
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

    train_killed_at(cfg, colour_table, str(tmp_path / "killed"), step=6)
    state = torch.load(tmp_path / "killed" / "checkpoints" / "epoch_1.pt", weights_only=True)
    assert state["step"] == 4 and "terms.protoclip._extra_state" in state["objectives"]  # mid-episode [3, 6)
    episodes = spy_episodes(monkeypatch)
    resumed = train(cfg, colour_table, str(tmp_path / "killed"))
    assert episodes == [(2, 48), (3, 48)]  # the checkpoint's prototypes finish episode 1
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["step"] == b["step"], (a, b)
