"""ALIP: Yang et al. 2023, "ALIP: Adaptive Language-Image Pre-training with Synthetic Caption"; as deepglint/ALIP's
train.py and src/open_alip/loss.py compute it. Language Consistency Gate g = exp(2 (s_tc - mu_tc)), sample
weight min(g, 1); Description Consistency Gate pair weights exp(2 (s - mu)) where g < 1 and 1 elsewhere; mu
running means (start 1, mu <- 0.99 mu + 0.01 mean(s), updated before the gates), weighting the per-sample
symmetric CLIP losses of the raw text and the caption, summed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.distributed import (
    DistContext,
    gather_features,
    local_rows,
)
from training.objectives.clip import clip_loss_per_sample
from training.objectives.common import CONTRASTIVE_READS, Objective


@dataclass(frozen=True)
class ALIPConfig:
    """ALIP's gates (Yang et al. 2023, "ALIP: Adaptive Language-Image Pre-training with Synthetic Caption")."""

    momentum: float = 0.99
    """running-mean momentum of the gate similarities: mu <- momentum x mu + (1 - momentum) x mean(s) (paper: 0.99)."""
    init_mean: float = 1.0
    """starting value of every running mean mu (paper and reference code: 1)."""


ALIP_MEAN_KEYS = ("raw", "cap", "tc")
"""Running means ALIP keeps, in this order: image/raw-text, image/caption and raw-text/caption similarity."""


def alip_gates(s_raw: torch.Tensor, s_cap: torch.Tensor, s_tc: torch.Tensor, mu: torch.Tensor,
               momentum: float = 0.99) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ALIP gates from per-sample cosine similarities (N,): (sample_weight, raw_pair_weight, cap_pair_weight, new_mu).

    As deepglint/ALIP's `train.py` computes them: `mu` (3,) holds the running means in ALIP_MEAN_KEYS order
    (started at 1), updated with this batch first, mu <- momentum mu + (1 - momentum) mean(s), then the gates use
    the updated means. The Language Consistency Gate is g = exp(2 (s_tc - mu_tc)), and a sample's weight
    min(g, 1). The Description Consistency Gate's pair weights exp(2 (s - mu)) (unclamped) apply only where
    g < 1; elsewhere a pair's weight is 1 (their `torch.where(weight_sample < 1, weight_pair, 1)`, on the
    raw-text and the caption path alike). No gradient reaches the gates.
    """
    with torch.no_grad():
        sims = torch.stack([s_raw, s_cap, s_tc]).float()  # (3, N)
        new_mu = momentum * mu.float() + (1 - momentum) * sims.mean(dim=1)  # (3,)
        language_gate = torch.exp(2 * (sims[2] - new_mu[2]))  # (N,)
        gated = language_gate < 1
        sample_weight = torch.where(gated, language_gate, torch.ones_like(language_gate))
        ones = torch.ones_like(language_gate)
        raw_pair_weight = torch.where(gated, torch.exp(2 * (sims[0] - new_mu[0])), ones)
        cap_pair_weight = torch.where(gated, torch.exp(2 * (sims[1] - new_mu[1])), ones)
    return sample_weight, raw_pair_weight, cap_pair_weight, new_mu


def weighted_clip_loss_gathered(image_features: torch.Tensor, text_features: torch.Tensor, all_image: torch.Tensor,
                                all_text: torch.Tensor, logit_scale: torch.Tensor, offset: int,
                                sample_weight: torch.Tensor, pair_weight: torch.Tensor) -> torch.Tensor:
    """ALIP of local rows (B, D) against global columns (N, D): mean of sample_weight_i * pair_weight_i * the
    symmetric CLIP loss of pair i; the weights (B,) are this rank's rows of the global gates."""
    per_sample = clip_loss_per_sample(image_features, text_features, all_image, all_text, logit_scale, offset)
    return (sample_weight.detach() * pair_weight.detach() * per_sample).mean()


def weighted_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                       sample_weight: torch.Tensor, pair_weight: torch.Tensor) -> torch.Tensor:
    """ALIP: mean over samples of sample_weight_i * pair_weight_i * (symmetric CLIP loss of pair i)."""
    return weighted_clip_loss_gathered(image_features, text_features, image_features, text_features, logit_scale,
                                       0, sample_weight, pair_weight)


class ALIPObjective(Objective):
    """ALIP: gated CLIP losses on the raw text and on the synthetic caption, summed.

    The gates come from similarities of the gathered features (no gradient); the running means are committed
    once per optimiser step (`end_step`), so accumulated micro-batches all see the same gates."""

    reads = CONTRASTIVE_READS | {"synthetic_features"}

    def __init__(self, cfg: ALIPConfig) -> None:
        super().__init__()
        self.momentum = cfg.momentum
        self.register_buffer("mu", torch.full((3,), cfg.init_mean))  # raw, cap, tc (ALIP_MEAN_KEYS)
        self._pending: torch.Tensor | None = None

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        image, text, caption = out["image_features"], out["text_features"], out["synthetic_features"]
        all_image, offset = local_rows(image, dist)
        all_text, all_caption = gather_features(text, dist), gather_features(caption, dist)
        with torch.no_grad():
            sample_w, raw_w, cap_w, self._pending = alip_gates(
                (all_image * all_text).sum(1), (all_image * all_caption).sum(1), (all_text * all_caption).sum(1),
                self.mu, self.momentum)
        mine, scale = slice(offset, offset + image.shape[0]), out["logit_scale"]
        raw = clip_loss_per_sample(image, text, all_image, all_text, scale, offset)  # (B,)
        cap = clip_loss_per_sample(image, caption, all_image, all_caption, scale, offset)  # (B,)
        raw_loss = (sample_w[mine] * raw_w[mine] * raw).mean()
        cap_loss = (sample_w[mine] * cap_w[mine] * cap).mean()
        # The gated losses move with the gates as the means settle; the ungated ones show the fit itself.
        self._metrics = {"alip_loss_raw": raw_loss.detach(), "alip_loss_caption": cap_loss.detach(),
                         "alip_ungated_raw": raw.detach().mean(), "alip_ungated_caption": cap.detach().mean(),
                         "alip_gate_sample": sample_w.mean(), "alip_gate_raw": raw_w.mean(),
                         "alip_gate_caption": cap_w.mean(), "alip_mu_raw": self._pending[0],
                         "alip_mu_caption": self._pending[1], "alip_mu_text_caption": self._pending[2]}
        return raw_loss + cap_loss

    @torch.no_grad()
    def end_step(self) -> None:
        if self._pending is not None:
            self.mu.copy_(self._pending)
            self._pending = None
