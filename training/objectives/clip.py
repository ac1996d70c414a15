"""CLIP's symmetric InfoNCE (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision"), computed as open_clip's `ClipLoss` does across ranks: each rank scores its own rows against the
features of the global batch, gathered with gradients flowing back through the gather, so DDP's gradient average
equals the gradient of the single-process loss over the global batch. Every other objective follows that rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.distributed import (
    DistContext,
    gather_features,
    local_rows,
)
from training.objectives.common import Objective, fp32, own_columns


def clip_loss_gathered(image_features: torch.Tensor, text_features: torch.Tensor, all_image: torch.Tensor,
                       all_text: torch.Tensor, logit_scale: torch.Tensor, offset: int) -> torch.Tensor:
    """InfoNCE of the local rows (B, D) against global columns (N, D); row i's positive is column offset + i."""
    labels = torch.arange(image_features.shape[0], device=image_features.device) + offset
    # Softmax in at least fp32: under bf16 autocast the logits arrive in bf16.
    logits_per_image = fp32(logit_scale * image_features @ all_text.T)  # (B, N)
    logits_per_text = fp32(logit_scale * text_features @ all_image.T)  # (B, N)
    return (nn.functional.cross_entropy(logits_per_image, labels)
            + nn.functional.cross_entropy(logits_per_text, labels)) / 2


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over one batch of L2-normalised features (B, D); logit_scale is exp(t)."""
    return clip_loss_gathered(image_features, text_features, image_features, text_features, logit_scale, 0)


def clip_loss_per_sample(image_features: torch.Tensor, text_features: torch.Tensor, all_image: torch.Tensor,
                         all_text: torch.Tensor, logit_scale: torch.Tensor, offset: int) -> torch.Tensor:
    """(B,) symmetric CLIP loss of each local pair (rows (B, D) against global columns (N, D))."""
    labels = own_columns(image_features.shape[0], offset, image_features.device)
    logits_per_image = fp32(logit_scale * image_features @ all_text.T)  # (B, N)
    logits_per_text = fp32(logit_scale * text_features @ all_image.T)  # (B, N)
    return (F.cross_entropy(logits_per_image, labels, reduction="none")
            + F.cross_entropy(logits_per_text, labels, reduction="none")) / 2


@torch.no_grad()
def raw_caption_clip_loss(out: dict[str, torch.Tensor], dist: DistContext) -> torch.Tensor:
    """The plain, unweighted CLIP loss of the images and their raw captions over the global batch, without a
    gradient: logged beside every objective's terms, so a run shows learning on one scale even when gates,
    weights or other losses change the objective's own (issue 8)."""
    image, text = out["image_features"].detach(), out["text_features"].detach()
    all_image, offset = local_rows(image, dist)
    return clip_loss_gathered(image, text, all_image, gather_features(text, dist), out["logit_scale"].detach(),
                              offset)


class ClipObjective(Objective):
    """CLIP InfoNCE over the global batch (features gathered across ranks)."""

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        image, text = out["image_features"], out["text_features"]
        return clip_loss_gathered(image, text, gather_features(image, dist), gather_features(text, dist),
                                  out["logit_scale"], dist.rank * image.shape[0])
