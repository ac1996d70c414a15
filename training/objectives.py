"""Alternative and additional contrastive objectives, as plain functions over torch tensors.

Every function takes L2-normalised features (`logit_scale` already exponentiated, as in `training.losses`)
and returns a scalar loss; wiring them into `training.losses.LOSSES` as objectives comes later.

- SigLIP: Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training". Each pair is a binary
  problem, z_ij = +1 on the diagonal and -1 elsewhere: L = -1/|B| sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b)).
- DCL: Yeh et al. 2022, "Decoupled Contrastive Learning". InfoNCE whose denominator leaves out the
  positive: L_i = -s_ii + log sum_{j != i} exp(s_ij), symmetric over image->text and text->image.
- NegCLIP: Yuksekgonul et al. 2023, "When and Why Vision-Language Models Behave like Bags-of-Words, and
  What to Do About It" (ARO). Word-order-shuffled and attribute-swapped captions join the image->text
  denominator as hard negatives; text->image stays plain CLIP.
- ALIP: Yang et al. 2023, "ALIP: Adaptive Language-Image Pre-training with Synthetic Caption". Language
  Consistency Gate w_s = min(exp(2 (s_tc - mu_tc)), 1) and Description Consistency Gate pair weights
  exp(2 (s - mu)), mu running means (start 1, mu <- 0.99 mu + 0.01 mean(s)), weighting per-sample losses.
- DreamLIP: Zheng et al. 2024, "DreamLIP: Language-Image Pre-training with Long Captions". Sentences of a
  long caption are sampled as sub-captions, each an extra positive of its image in a multi-positive loss.
- MLCD: An et al. 2024, "Multi-label Cluster Discrimination for Visual Representation Learning". A sample
  is scored against cluster centers, s_j = scale cos(x, c_j) (margin taken off positives):
  L = log(1 + sum_neg exp(s_j)) + log(1 + sum_pos exp(-s_i)); negatives are a random fraction of the
  centers, as Partial FC (An et al. 2022) samples its classifier.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


def _fp32(logits: torch.Tensor) -> torch.Tensor:
    """Softmax/sigmoid maths in at least fp32: under bf16 autocast the logits arrive in bf16."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP: -sum of log sigmoid(z_ij (t x_i.y_j + b)) over all (B, B) pairs, divided by the batch size B."""
    logits = _fp32(logit_scale * image_features @ text_features.T + logit_bias)  # (B, B)
    n = logits.shape[0]
    signs = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1  # z_ij: +1 diagonal, -1 elsewhere
    return -F.logsigmoid(signs * logits).sum() / n


def _decoupled_nce(logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -s_ii + logsumexp_{j != i} s_ij for square logits (B, B)."""
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    negatives = logits.masked_fill(eye, float("-inf"))
    return (torch.logsumexp(negatives, dim=1) - logits.diagonal()).mean()


def dcl_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """DCL: decoupled InfoNCE (positive out of the denominator), averaged over both directions."""
    logits = _fp32(logit_scale * image_features @ text_features.T)  # (B, B)
    return (_decoupled_nce(logits) + _decoupled_nce(logits.T)) / 2


def negclip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                 hard_negative_text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """NegCLIP: image->text softmax over [B texts; M hard negatives] (M, D), text->image over the B images."""
    all_text = torch.cat([text_features, hard_negative_text_features], dim=0)  # (B + M, D)
    logits_per_image = _fp32(logit_scale * image_features @ all_text.T)  # (B, B + M)
    logits_per_text = _fp32(logit_scale * text_features @ image_features.T)  # (B, B)
    labels = torch.arange(image_features.shape[0], device=image_features.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def shuffle_words(text: str, rng: np.random.Generator) -> str | None:
    """The caption's words in a different random order; None when no reordering changes it (< 2 distinct words)."""
    words = text.split()
    if len(set(words)) < 2:
        return None
    shuffled = [words[k] for k in rng.permutation(len(words))]
    if shuffled == words:
        # A permutation can return the original order; swapping two different words guarantees a negative.
        other = next(k for k, word in enumerate(shuffled) if word != shuffled[0])
        shuffled[0], shuffled[other] = shuffled[other], shuffled[0]
    return " ".join(shuffled)


def swap_attributes(text: str, attributes: set[str], rng: np.random.Generator) -> str | None:
    """Swap two distinct attribute words ("a red car, a blue cup" -> "a blue car, a red cup"); None if < 2 distinct."""
    tokens = text.split(" ")
    cores = [token.strip(string.punctuation) for token in tokens]
    found = [k for k, core in enumerate(cores) if core.lower() in attributes]
    pairs = [(a, b) for i, a in enumerate(found) for b in found[i + 1:] if cores[a].lower() != cores[b].lower()]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    # Replace only the word inside its token so punctuation ("red," / "blue.") stays where it was.
    tokens[a], tokens[b] = tokens[a].replace(cores[a], cores[b], 1), tokens[b].replace(cores[b], cores[a], 1)
    return " ".join(tokens)


ALIP_MEAN_KEYS = ("raw", "cap", "tc")
"""Running means ALIP keeps: image/raw-text, image/caption and raw-text/caption similarity."""


def alip_gates(s_raw: torch.Tensor, s_cap: torch.Tensor, s_tc: torch.Tensor, mu: dict[str, float]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
    """ALIP gates from per-sample cosine similarities (B,): (sample_weight, raw_pair_weight, cap_pair_weight, new_mu).

    `mu` maps "raw", "cap", "tc" to running means (missing keys start at 1, as in the paper). The means are
    updated with this batch first, then the gates use the updated means. No gradient reaches the gates.
    """
    with torch.no_grad():
        sims = {"raw": s_raw.float(), "cap": s_cap.float(), "tc": s_tc.float()}
        new_mu = {key: 0.99 * float(mu.get(key, 1.0)) + 0.01 * float(sims[key].mean()) for key in ALIP_MEAN_KEYS}
        sample_weight = torch.exp(2 * (sims["tc"] - new_mu["tc"])).clamp(max=1.0)  # language consistency gate
        raw_pair_weight = torch.exp(2 * (sims["raw"] - new_mu["raw"]))  # description consistency gate
        cap_pair_weight = torch.exp(2 * (sims["cap"] - new_mu["cap"]))
    return sample_weight, raw_pair_weight, cap_pair_weight, new_mu


def weighted_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                       sample_weight: torch.Tensor, pair_weight: torch.Tensor) -> torch.Tensor:
    """ALIP: mean over samples of sample_weight_i * pair_weight_i * (symmetric CLIP loss of pair i)."""
    logits = _fp32(logit_scale * image_features @ text_features.T)  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    per_sample = (F.cross_entropy(logits, labels, reduction="none")
                  + F.cross_entropy(logits.T, labels, reduction="none")) / 2  # (B,)
    return (sample_weight.detach() * pair_weight.detach() * per_sample).mean()


def multi_positive_loss(image_features: torch.Tensor, text_features_groups: torch.Tensor,
                        logit_scale: torch.Tensor) -> torch.Tensor:
    """DreamLIP: image i against all B*K texts with its K sub-captions (B, K, D) positive; text->image plain CE."""
    b, k, d = text_features_groups.shape
    texts = text_features_groups.reshape(b * k, d)  # (B*K, D), rows of image i at i*K .. i*K + K - 1
    owner = torch.arange(b, device=texts.device).repeat_interleave(k)  # (B*K,) image index of each text
    logits = _fp32(logit_scale * image_features @ texts.T)  # (B, B*K)
    positive = owner[None, :] == torch.arange(b, device=texts.device)[:, None]  # (B, B*K)
    image_to_text = (torch.logsumexp(logits, dim=1)
                     - torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)).mean()
    text_to_image = F.cross_entropy(logits.T, owner)
    return (image_to_text + text_to_image) / 2


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(long_caption: str) -> list[str]:
    """Sentences of a long caption (split after . ! or ? followed by space), stripped, empties dropped."""
    return [s.strip() for s in _SENTENCE_END.split(long_caption or "") if s.strip()]


def sample_subcaptions(sentences: list[str], num_text: int, rng: np.random.Generator) -> list[str]:
    """DreamLIP: num_text sentences, without replacement when there are enough, with replacement otherwise."""
    if not sentences or num_text <= 0:
        return []
    picks = rng.choice(len(sentences), size=num_text, replace=len(sentences) < num_text)
    return [sentences[int(k)] for k in picks]


def _sampled_centers(positive: torch.Tensor, negative_ratio: float, generator: torch.Generator | None
                     ) -> torch.Tensor:
    """(C,) mask of centers scored: every batch positive, plus round(ratio * rest) random others (Partial FC)."""
    in_batch = positive.any(dim=0)  # (C,)
    others = (~in_batch).nonzero().squeeze(1)
    keep = round(min(max(negative_ratio, 0.0), 1.0) * others.numel())
    order = torch.randperm(others.numel(), generator=generator).to(others.device)
    sampled = in_batch.clone()
    sampled[others[order[:keep]]] = True
    return sampled


def mlcd_loss(embeddings: torch.Tensor, centers: torch.Tensor, positive_labels: torch.Tensor, scale: float,
              margin: float, negative_ratio: float = 1.0, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """MLCD multi-label loss of embeddings (B, D) over centers (C, D); positive_labels (B, P), -1 pads."""
    cos = _fp32(F.normalize(embeddings, dim=-1) @ F.normalize(centers, dim=-1).T)  # (B, C)
    valid = positive_labels >= 0
    positive = torch.zeros_like(cos, dtype=torch.bool)
    positive[torch.arange(cos.shape[0], device=cos.device)[:, None].expand_as(positive_labels)[valid],
             positive_labels[valid]] = True
    negative = _sampled_centers(positive, negative_ratio, generator)[None, :] & ~positive  # (B, C)
    s = scale * (cos - margin * positive.to(cos.dtype))
    # log(1 + sum exp(v)) = softplus(logsumexp(v)); an empty set gives logsumexp = -inf, softplus 0.
    neg_term = F.softplus(torch.logsumexp(s.masked_fill(~negative, float("-inf")), dim=1))
    pos_term = F.softplus(torch.logsumexp((-s).masked_fill(~positive, float("-inf")), dim=1))
    return (neg_term + pos_term).mean()


LOSS_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "siglip": siglip_loss,
    "dcl": dcl_loss,
    "negclip": negclip_loss,
    "alip": weighted_clip_loss,
    "dreamlip": multi_positive_loss,
    "mlcd": mlcd_loss,
}
"""Plain loss functions by objective name (signatures differ; the objective modules adapt `out`/`batch`)."""
