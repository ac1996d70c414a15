"""DreamLIP: Zheng et al. 2024, "DreamLIP: Language-Image Pre-training with Long Captions"; as
zyf0619sjtu/DreamLIP's open_clip/loss.py `ClipLoss.forward` computes it. Sentences of the long captions are
sampled as sub-captions; an image's raw caption and sub-captions are all its positives in a pairwise circle loss
(gamma 32, margin 0.25, divided by 10); a grouping loss pools the image's patch tokens by their min-max
normalised similarity to each of its texts into regions and contrasts all regions with all texts of the batch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.distributed import (
    DistContext,
    gather_features,
    local_rows,
)
from training.objectives.clip import clip_loss_gathered
from training.objectives.common import Objective, fp32, own_columns


@dataclass(frozen=True)
class DreamLIPConfig:
    """DreamLIP's sub-captions and losses (Zheng et al. 2024, "DreamLIP: Language-Image Pre-training with Long
    Captions"); defaults are the authors' (zyf0619sjtu/DreamLIP, training/params.py and open_clip/loss.py)."""

    num_text: int = 6
    """sub-captions (sentences of the long captions) sampled per image per step (params.py --num_text 6)."""
    clip_weight: float = 1.0
    """weight of the raw caption's CLIP loss (params.py --clip_lossweight), which is also divided by K + 1."""
    gamma: float = 32.0
    """circle-loss scale gamma of the multi-positive term (params.py --gamma)."""
    margin: float = 0.25
    """circle-loss margin m (params.py --margin)."""
    multi_positive_divisor: float = 10.0
    """the multi-positive term is divided by this (`/ 10.0` in their ClipLoss.forward)."""
    grouping_weight: float = 1.0
    """weight of the sub-caption grouping loss (params.py --sgl_lossweight); 0 skips it (and the patch tokens)."""
    grouping_threshold: float = 0.0
    """normalised patch weights below this are zeroed before renormalising (params.py --sgl_delta 0.0; their
    ClipLoss default is 0.1; negative means 1/P)."""
    grouping_norm: Literal["minmax", "softmax"] = "minmax"
    """how patch similarities are normalised over patches (params.py --sgl_norm)."""
    grouping_temperature: float = 0.07
    """initial temperature of the grouping loss (learned, clamped like CLIP's at 1/100); CLIP's initial value."""


def circle_multi_positive_loss(similarity: torch.Tensor, positive: torch.Tensor, gamma: float = 32.0,
                               margin: float = 0.25) -> torch.Tensor:
    """Mean over rows of DreamLIP's pairwise circle loss (zyf0619sjtu/DreamLIP, open_clip/loss.py,
    `pairwise_circleloss`; Sun et al. 2020's Circle Loss) on raw cosines `similarity` (B, N), `positive` (B, N):

        a_p = [1 + m - s_p]+,  a_n = [s_n + m]+  (no gradient through a_p, a_n)
        L_i = softplus(logsumexp_p(-gamma a_p (s_p - (1 - m))) + logsumexp_n(gamma a_n (s_n - m)))
    """
    s = fp32(similarity)
    alpha_p = (1 + margin - s.detach()).clamp_min(0)
    alpha_n = (s.detach() + margin).clamp_min(0)
    # The authors mask with a large finite negative (-99999999), which keeps a row without negatives finite.
    logit_p = (-gamma * alpha_p * (s - (1 - margin))).masked_fill(~positive, -1e8)
    logit_n = (gamma * alpha_n * (s - margin)).masked_fill(positive, -1e8)
    return F.softplus(torch.logsumexp(logit_p, dim=1) + torch.logsumexp(logit_n, dim=1)).mean()


def dreamlip_multi_positive_gathered(image_features: torch.Tensor, all_texts: torch.Tensor, texts_per_image: int,
                                     offset: int, gamma: float = 32.0, margin: float = 0.25,
                                     divisor: float = 10.0) -> torch.Tensor:
    """DreamLIP's image->multi-text term of local image rows (B, D) against every text of the global batch
    (N*T, D; global image j's T texts, its raw caption and sub-captions, at rows j*T .. j*T + T - 1): each of an
    image's T texts is a positive, every other text a negative; the circle loss divided by `divisor` (the
    authors' `/ 10.0` in `ClipLoss.forward`)."""
    b = image_features.shape[0]
    owner = torch.arange(all_texts.shape[0], device=all_texts.device) // texts_per_image  # (N*T,)
    positive = owner[None, :] == own_columns(b, offset, image_features.device)[:, None]  # (B, N*T)
    return circle_multi_positive_loss(image_features @ all_texts.T, positive, gamma, margin) / divisor


def dreamlip_regions(patch_features: torch.Tensor, text_features: torch.Tensor, threshold: float = 0.0,
                     norm: str = "minmax") -> torch.Tensor:
    """DreamLIP's text-conditioned regions (open_clip/loss.py, `ClipLoss.forward`'s fine-grained term): for patch
    tokens in the joint space (B, P, D) and each image's texts (B, T, D), the cosine of each text to each patch,
    normalised over patches (min-max, or softmax), weights below `threshold` zeroed (negative: 1/P) and the rest
    renormalised to sum 1; a text's region is the normalised weighted sum of its image's patches. (B, T, D)."""
    patches = F.normalize(patch_features, dim=-1)  # (B, P, D)
    sim = fp32(F.normalize(text_features, dim=-1) @ patches.transpose(1, 2))  # (B, T, P)
    if norm == "minmax":
        low, high = sim.amin(dim=-1, keepdim=True), sim.amax(dim=-1, keepdim=True)
        weights = (sim - low) / (high - low + 1e-10)
    elif norm == "softmax":
        weights = sim.softmax(dim=-1)
    else:
        raise ValueError(f"unknown grouping norm {norm!r}; choose 'minmax' or 'softmax'")
    cut = 1.0 / patches.shape[1] if threshold < 0 else threshold
    weights = weights.masked_fill(weights < cut, 0.0)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return F.normalize(weights.to(patches.dtype) @ patches, dim=-1)


def dreamlip_grouping_gathered(regions: torch.Tensor, texts: torch.Tensor, all_regions: torch.Tensor,
                               all_texts: torch.Tensor, logit_scale: torch.Tensor, offset: int) -> torch.Tensor:
    """DreamLIP's grouping contrast of this rank's B*T region/text pairs (B*T, D) against all N*T of the global
    batch (another image's regions and texts are negatives): symmetric InfoNCE, temperature 1/logit_scale.
    `offset` is this rank's first row among the N*T. Averaged over ranks it is the global batch's loss."""
    labels = own_columns(texts.shape[0], offset, texts.device)
    text_to_region = fp32(logit_scale * F.normalize(texts, dim=-1) @ all_regions.T)  # (B*T, N*T)
    region_to_text = fp32(logit_scale * regions @ F.normalize(all_texts, dim=-1).T)  # (B*T, N*T)
    return (F.cross_entropy(text_to_region, labels) + F.cross_entropy(region_to_text, labels)) / 2


def dreamlip_grouping_loss(patch_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                           threshold: float = 0.0, norm: str = "minmax") -> torch.Tensor:
    """DreamLIP's sub-caption grouping loss in one process: regions (dreamlip_regions) of patch tokens (B, P, D)
    for each image's texts (B, T, D), contrasted with the texts over all B*T pairs of the batch."""
    regions = dreamlip_regions(patch_features, text_features, threshold, norm).flatten(0, 1)  # (B*T, D)
    texts = text_features.flatten(0, 1)
    return dreamlip_grouping_gathered(regions, texts, regions, texts, logit_scale, 0)


_SENTENCE_SPLIT = re.compile(r"\n|</s>|\.")


def split_sentences(long_caption: str) -> list[str]:
    """Sentences of a long caption as DreamLIP's `split_caption` (training/data.py) cuts them: at newlines,
    '</s>' and full stops, stripped, empties dropped."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(long_caption or "") if s.strip()]


def sample_subcaption_ids(num_sentences: int, num_text: int, rng: np.random.Generator) -> list[int]:
    """DreamLIP (`draw_numbers` in its training/data.py): num_text sentence indices, without replacement when there
    are enough, with replacement otherwise. Theirs draws from range(n - 1), so a caption's last sentence is never
    drawn; ours draws from all n (we take that for an off-by-one, not a choice)."""
    if num_sentences <= 0 or num_text <= 0:
        return []
    return [int(k) for k in rng.choice(num_sentences, size=num_text, replace=num_sentences < num_text)]


class DreamLIPObjective(Objective):
    """DreamLIP as its authors' `ClipLoss.forward` (zyf0619sjtu/DreamLIP, open_clip/loss.py) sums it, with the
    raw caption at text position 0 and the K sub-captions after it (T = K + 1 texts per image):

    - the CLIP loss on the raw caption, divided by T as theirs is (`/ (2 * number_text)` of the two directions);
    - the multi-positive circle loss of each image against all N*T texts of the global batch, its own T texts
      positive, divided by 10;
    - the grouping loss of patch tokens against the image's T texts, over the N*T region/text pairs of the global
      batch, with a learned temperature of its own.

    Deliberate differences, each because the released code cannot run as written: the patch tokens go through a
    learned linear map into the joint space (theirs are ln_post's width-sized tokens, which only fits when the
    width equals the embedding size; ours starts as the tower's own output projection); each image's texts are
    grouped over that image's own patches (their `.view(bs, number_text, c)` of a text-major bank pairs texts
    with other images' patches); the grouping temperature is a learned scale started at 1/0.07 (theirs is
    `logit_scale_local = None`, which raises). As `alip`, `dreamlip` contains the raw caption's CLIP loss, so
    it replaces `clip` (`objective_weights` refuses both)."""

    def __init__(self, cfg: DreamLIPConfig, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.settings = cfg
        self.reads = frozenset({"image_features", "text_features", "subcaption_features", "logit_scale"})
        if self.settings.grouping_weight > 0:
            self.group_logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.grouping_temperature)))
            self.reads |= {"patch_tokens"}

    def attach(self, model: nn.Module) -> None:
        """The token projection, sized by the image tower and started as its own output projection (so pooled
        patches begin in the joint space, as dense CLIP methods use it)."""
        if self.settings.grouping_weight <= 0:
            return
        visual = model.visual
        if not hasattr(visual, "forward_intermediates") or getattr(visual, "proj", None) is None:
            raise ValueError("DreamLIP's grouping loss needs an open_clip ViT image tower (patch tokens and a "
                             "projection); set dreamlip.grouping_weight=0 for other towers")
        self.token_proj = nn.Linear(visual.proj.shape[0], self.embed_dim, bias=False)
        with torch.no_grad():
            self.token_proj.weight.copy_(visual.proj.T)

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        cfg = self.settings
        image, raw, subcaptions = out["image_features"], out["text_features"], out["subcaption_features"]
        texts = torch.cat([raw[:, None, :], subcaptions], dim=1)  # (B, T, D): raw caption first, as theirs
        t = texts.shape[1]
        all_image, offset = local_rows(image, dist)
        clip = clip_loss_gathered(image, raw, all_image, gather_features(raw, dist), out["logit_scale"], offset)
        clip = cfg.clip_weight * clip / t
        all_texts = gather_features(texts.flatten(0, 1), dist)  # (N*T, D), image-major
        multi = dreamlip_multi_positive_gathered(image, all_texts, t, offset, cfg.gamma, cfg.margin,
                                                 cfg.multi_positive_divisor)
        self._metrics = {"dreamlip_loss_clip": clip.detach(), "dreamlip_loss_multi_positive": multi.detach()}
        loss = clip + multi
        if cfg.grouping_weight > 0:
            regions = dreamlip_regions(self.token_proj(out["patch_tokens"]), texts, cfg.grouping_threshold,
                                       cfg.grouping_norm).flatten(0, 1)  # (B*T, D)
            flat = texts.flatten(0, 1)
            group = dreamlip_grouping_gathered(regions, flat, gather_features(regions, dist),
                                               gather_features(flat, dist), self.group_logit_scale.exp(), offset * t)
            self._metrics["dreamlip_loss_grouping"] = group.detach()
            loss = loss + cfg.grouping_weight * group
        return loss
