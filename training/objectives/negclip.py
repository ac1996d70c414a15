"""NegCLIP: Yuksekgonul et al. 2023, "When and Why Vision-Language Models Behave like Bags-of-Words, and What to
Do About It" (ARO), as vinid/neg_clip's `ClipLoss.forward` computes it: each sample's hard negative caption
(training.objectives.negatives) joins the image->text softmax only; text->image stays plain CLIP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.distributed import (
    DistContext,
    gather_detached,
    gather_features,
)
from training.objectives.common import CONTRASTIVE_READS, Objective, fp32, own_columns
from training.objectives.negatives import KINDS, NegativeKind


def negclip_loss_gathered(image_features: torch.Tensor, text_features: torch.Tensor, all_image: torch.Tensor,
                          all_text: torch.Tensor, hard_negatives: torch.Tensor, logit_scale: torch.Tensor,
                          offset: int) -> torch.Tensor:
    """NegCLIP of local rows: image->text over [N texts; M hard negatives (M, D)], text->image over N images."""
    labels = own_columns(image_features.shape[0], offset, image_features.device)
    candidates = torch.cat([all_text, hard_negatives], dim=0)  # (N + M, D)
    logits_per_image = fp32(logit_scale * image_features @ candidates.T)  # (B, N + M)
    logits_per_text = fp32(logit_scale * text_features @ all_image.T)  # (B, N)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def negclip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                 hard_negative_text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """NegCLIP: image->text softmax over [B texts; M hard negatives] (M, D), text->image over the B images."""
    return negclip_loss_gathered(image_features, text_features, image_features, text_features,
                                 hard_negative_text_features, logit_scale, 0)


@dataclass(frozen=True)
class NegCLIPConfig:
    """NegCLIP's hard negative captions (Yuksekgonul et al. 2023, ARO; training.negatives)."""

    kinds: tuple[NegativeKind, ...] = KINDS
    """negative kinds a caption may get (keys of training.negatives.NEGATIVE_KINDS); each step draws one of those
    its caption allows, as NegCLIP draws one of its precomputed negatives per sample."""
    attribute_words: tuple[str, ...] = ()
    """attribute words added to training.negatives.DEFAULT_ATTRIBUTES (what the attribute swap exchanges)."""
    noun_words: tuple[str, ...] = ()
    """nouns added to training.negatives.DEFAULT_NOUNS (what the noun and noun-phrase swaps exchange)."""
    use_metadata: bool = True
    """add the pool's MetaCLIP metadata entries (the curate artifact's metadata.json) to the vocabulary."""
    metadata_file: str | None = None
    """the metadata.json read when use_metadata holds; the train stage points it at the curate artifact's."""


class NegCLIPObjective(Objective):
    """CLIP with every rank's word-order-shuffled and attribute-swapped captions as extra image->text negatives."""

    reads = CONTRASTIVE_READS | {"negative_features"}

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        image, text, negatives = out["image_features"], out["text_features"], out["negative_features"]  # (B, M, D)
        all_negatives = gather_features(negatives.flatten(0, 1), dist)  # (N*M, D)
        real = gather_detached(batch["negative_mask"].flatten(), dist)  # (N*M,)
        return negclip_loss_gathered(image, text, gather_features(image, dist), gather_features(text, dist),
                                     all_negatives[real], out["logit_scale"], dist.rank * image.shape[0])
