"""DCL: Yeh et al. 2022, "Decoupled Contrastive Learning". InfoNCE whose denominator leaves out the positive:
L_i = -s_ii + log sum_{j != i} exp(s_ij), symmetric over image->text and text->image.
"""

from __future__ import annotations

import torch

from training.distributed import (
    DistContext,
    gather_features,
)
from training.objectives.common import Objective, fp32, own_columns


def _decoupled_nce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -s_i,label + logsumexp_{j != label} s_ij for logits (B, N)."""
    own = torch.zeros_like(logits, dtype=torch.bool)
    own[torch.arange(logits.shape[0], device=logits.device), labels] = True
    negatives = logits.masked_fill(own, float("-inf"))
    return (torch.logsumexp(negatives, dim=1) - logits[own]).mean()


def dcl_loss_gathered(image_features: torch.Tensor, text_features: torch.Tensor, all_image: torch.Tensor,
                      all_text: torch.Tensor, logit_scale: torch.Tensor, offset: int) -> torch.Tensor:
    """DCL of local rows (B, D) against global columns (N, D), both directions averaged."""
    labels = own_columns(image_features.shape[0], offset, image_features.device)
    logits_per_image = fp32(logit_scale * image_features @ all_text.T)  # (B, N)
    logits_per_text = fp32(logit_scale * text_features @ all_image.T)  # (B, N)
    return (_decoupled_nce(logits_per_image, labels) + _decoupled_nce(logits_per_text, labels)) / 2


def dcl_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """DCL: decoupled InfoNCE (positive out of the denominator), averaged over both directions."""
    return dcl_loss_gathered(image_features, text_features, image_features, text_features, logit_scale, 0)


class DCLObjective(Objective):
    """Decoupled contrastive loss over the global batch."""

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        image, text = out["image_features"], out["text_features"]
        return dcl_loss_gathered(image, text, gather_features(image, dist), gather_features(text, dist),
                                 out["logit_scale"], dist.rank * image.shape[0])
