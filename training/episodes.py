"""ProtoCLIP's episodes (Chen et al. 2023, "Prototypical Contrastive Language Image Pretraining"): the steps of a
run with "protoclip" are fed in episodes, each episode's batches drawn ahead, encoded without gradients,
clustered into prototypes (training.objectives.protoclip) and then trained on."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from training.config import TrainConfig
from training.distributed import gather_numpy
from training.objectives.protoclip import (
    Prototypes,
    episode_seed,
    fit_prototypes,
    share_prototypes,
    teacher_text_features,
)
from training.run import Run
from training.step import autocast, to_device


def episode_steps(cfg: TrainConfig, world_size: int) -> int:
    """Optimiser steps per ProtoCLIP episode: protoclip.episode_size samples over all ranks (at least one step)."""
    return max(1, cfg.protoclip.episode_size // (cfg.data.batch_size * world_size * cfg.distribution.accum_freq))


@torch.no_grad()
def episode_prototypes(run: Run, batches: list[dict], episode: int) -> Prototypes:
    """ProtoCLIP's feature extraction: this rank's episode batches encoded without gradients (model in eval
    mode), every rank's prototype-space features (and teacher features) clustered on rank 0 and shared."""
    core, cfg = run.core, run.cfg
    term = core.objectives.terms["protoclip"]
    was_training, features = core.model.training, []
    core.model.eval()
    try:
        for batch in batches:
            with autocast(cfg, run.device):
                out = core.encode(to_device({"image": batch["image"], "text": batch["text"]}, run.device))
            features.append(term.episode_features(out["image_features"], out["text_features"]))
    finally:
        core.model.train(was_training)
    collective = run.device if run.device.type == "cuda" else torch.device("cpu")
    image, text = (gather_numpy(np.concatenate(part), run.dist, collective) for part in zip(*features, strict=True))
    teacher = teacher_text_features(cfg.protoclip, [c for b in batches for c in b["caption"]], device=str(run.device))
    teacher = None if teacher is None else gather_numpy(teacher, run.dist, collective)
    fitted = fit_prototypes(image, text, cfg.protoclip, episode_seed(cfg.protoclip, episode), teacher) \
        if run.dist.rank == 0 else None
    return share_prototypes(fitted, run.dist, run.device if run.device.type == "cuda" else None)


class EpisodeFeed:
    """ProtoCLIP's episodes (Chen et al. 2023) over the stream, in place of training.loop.BatchFeed: at an
    episode's first step this rank's micro-batches of the whole episode are drawn and clustered
    (episode_prototypes); the episode's steps then train on them, each sample carrying `episode_index`, its
    position in the episode (rank-major across ranks).

    A resumed stream replays the batches of an undisturbed run (training.loop.batch_stream, tables and shards
    alike), so a run resumed mid-episode keeps the checkpoint's prototypes and finishes the episode exactly.
    Episode batches wait in host memory."""

    def __init__(self, stream: Iterator[dict], run: Run) -> None:
        self.stream, self.run = stream, run
        self.batch_size, self.accum_freq = run.cfg.data.batch_size, run.cfg.distribution.accum_freq
        self.length = episode_steps(run.cfg, run.dist.world_size)
        self.queue: list[dict] = []

    def take(self, step: int) -> list[dict]:
        if not self.queue:
            self.queue = self.start(step)
        taken, self.queue = self.queue[:self.accum_freq], self.queue[self.accum_freq:]
        return taken

    def start(self, step: int) -> list[dict]:
        """The micro-batches from `step` to the episode's end, with episode_index, prototypes set."""
        dist, term = self.run.dist, self.run.core.objectives.terms["protoclip"]
        first = step - step % self.length
        stop = min(first + self.length, self.run.total_steps)
        per_step = self.accum_freq * self.batch_size  # this rank's samples per step
        saved = term.prototypes
        keep = step > first and saved is not None \
            and saved.num_samples == (stop - first) * per_step * dist.world_size
        first = first if keep else step
        batches = [next(self.stream) for _ in range((stop - step) * self.accum_freq)]
        if not keep:
            term.set_prototypes(episode_prototypes(self.run, batches, step // self.length))
        offset = dist.rank * (stop - first) * per_step + (step - first) * per_step
        for j, batch in enumerate(batches):
            batch["episode_index"] = torch.arange(self.batch_size) + offset + j * self.batch_size  # (B,)
        return batches
