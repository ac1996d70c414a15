"""Training objectives: plain loss maths, and the registry of weighted terms the training loop sums.

CLIP's symmetric InfoNCE (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision"), computed as open_clip does across ranks: each rank scores its own rows against the
features of the global batch, gathered with gradients flowing back through the gather, so DDP's
gradient average equals the gradient of the single-process loss over the global batch.

An objective is a module `forward(out, batch, dist) -> scalar`, where `out` holds the model's outputs
("image_features", "text_features", both L2-normalised, and "logit_scale", already exponentiated) and
`batch` is the loader's batch dict (every caption field and label). Objectives with state (a classifier,
a memory bank, a temperature) keep it as parameters or buffers; the loop optimises and checkpoints them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from training.config import TrainConfig


@dataclass(frozen=True)
class DistContext:
    """This process's place in data-parallel training."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DistContext:
        """From torch.distributed when a process group is up (Ray Train / torchrun), else a single process."""
        if torch_dist.is_available() and torch_dist.is_initialized():
            return cls(torch_dist.get_rank(), torch_dist.get_world_size())
        return cls()


def gather_features(x: torch.Tensor, dist: DistContext) -> torch.Tensor:
    """(world_size * B, D) features of the global batch, rank-major; gradients flow back to each rank."""
    if dist.world_size == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def clip_loss_gathered(image_features: torch.Tensor, text_features: torch.Tensor, all_image: torch.Tensor,
                       all_text: torch.Tensor, logit_scale: torch.Tensor, offset: int) -> torch.Tensor:
    """InfoNCE of the local rows (B, D) against global columns (N, D); row i's positive is column offset + i."""
    # Softmax in at least fp32: under bf16 autocast the logits arrive in bf16.
    dtype = torch.promote_types(image_features.dtype, torch.float32)
    logits_per_image = (logit_scale * image_features @ all_text.T).to(dtype)  # (B, N)
    logits_per_text = (logit_scale * text_features @ all_image.T).to(dtype)  # (B, N)
    labels = torch.arange(image_features.shape[0], device=image_features.device) + offset
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over one batch of L2-normalised features (B, D); logit_scale is exp(t)."""
    return clip_loss_gathered(image_features, text_features, image_features, text_features, logit_scale, 0)


class ClipObjective(nn.Module):
    """CLIP InfoNCE over the global batch (features gathered across ranks)."""

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        image, text = out["image_features"], out["text_features"]
        return clip_loss_gathered(image, text, gather_features(image, dist), gather_features(text, dist),
                                  out["logit_scale"], dist.rank * image.shape[0])


LOSSES: dict[str, Callable[[TrainConfig, int], nn.Module]] = {
    "clip": lambda cfg, embed_dim: ClipObjective(),
}
"""Objective factories by config name: `factory(train_config, embed_dim) -> module`."""


def objective_weights(cfg: TrainConfig) -> dict[str, float]:
    """Each configured objective's weight (1.0 when `objective_weights` is empty)."""
    weights = cfg.objective_weights or (1.0,) * len(cfg.objectives)
    if len(weights) != len(cfg.objectives):
        raise ValueError(f"{len(cfg.objectives)} objectives but {len(weights)} objective_weights")
    unknown = [name for name in cfg.objectives if name not in LOSSES]
    if unknown or not cfg.objectives:
        raise ValueError(f"unknown or no objectives {unknown or '()'}; choose from {sorted(LOSSES)}")
    return dict(zip(cfg.objectives, map(float, weights), strict=True))


class WeightedObjectives(nn.Module):
    """The training loss: sum of weight x term over the configured objectives."""

    def __init__(self, cfg: TrainConfig, embed_dim: int) -> None:
        super().__init__()
        self.weights = objective_weights(cfg)
        self.terms = nn.ModuleDict({name: LOSSES[name](cfg, embed_dim) for name in self.weights})

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = {name: term(out, batch, dist) for name, term in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in terms.items())
        return total, terms
