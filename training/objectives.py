"""Alternative and additional contrastive objectives, as plain functions over torch tensors.

Every function takes L2-normalised features (`logit_scale` already exponentiated, as in `training.losses`)
and returns a scalar loss. The `*_gathered` forms score this rank's B rows against the N columns of the
global batch (row i's own column is offset + i), as open_clip's local loss does; the plain forms are the
single-process case. `training.losses` wraps them as the objectives of the LOSSES registry.

- SigLIP: Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training". Each pair is a binary
  problem, z_ij = +1 on the diagonal and -1 elsewhere: L = -1/|B| sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b)).
- DCL: Yeh et al. 2022, "Decoupled Contrastive Learning". InfoNCE whose denominator leaves out the
  positive: L_i = -s_ii + log sum_{j != i} exp(s_ij), symmetric over image->text and text->image.
- NegCLIP: Yuksekgonul et al. 2023, "When and Why Vision-Language Models Behave like Bags-of-Words, and
  What to Do About It" (ARO). Word-order-shuffled and attribute-swapped captions join the image->text
  denominator as hard negatives; text->image stays plain CLIP.
- ALIP: Yang et al. 2023, "ALIP: Adaptive Language-Image Pre-training with Synthetic Caption"; as
  deepglint/ALIP's train.py and src/open_alip/loss.py compute it. Language Consistency Gate
  g = exp(2 (s_tc - mu_tc)), sample weight min(g, 1); Description Consistency Gate pair weights
  exp(2 (s - mu)) where g < 1 and 1 elsewhere; mu running means (start 1, mu <- 0.99 mu + 0.01 mean(s), updated
  before the gates), weighting the per-sample symmetric CLIP losses of the raw text and the caption, summed.
- DreamLIP: Zheng et al. 2024, "DreamLIP: Language-Image Pre-training with Long Captions"; as
  zyf0619sjtu/DreamLIP's open_clip/loss.py `ClipLoss.forward` computes it. Sentences of the long captions are
  sampled as sub-captions; an image's raw caption and sub-captions are all its positives in a pairwise circle
  loss (gamma 32, margin 0.25, divided by 10); a grouping loss pools the image's patch tokens by their min-max
  normalised similarity to each of its texts into regions and contrasts all B*T regions with all B*T texts.
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


def fp32(logits: torch.Tensor) -> torch.Tensor:
    """Softmax/sigmoid maths in at least fp32: under bf16 autocast the logits arrive in bf16."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _own_columns(rows: int, offset: int, device: torch.device) -> torch.Tensor:
    """(B,) column of each local row's positive in the global batch."""
    return torch.arange(rows, device=device) + offset


def siglip_loss_gathered(image_features: torch.Tensor, all_text: torch.Tensor, logit_scale: torch.Tensor,
                         logit_bias: torch.Tensor, offset: int) -> torch.Tensor:
    """SigLIP over local image rows (B, D) x global texts (N, D): -sum log sigmoid(z_ij (t x_i.y_j + b)) / B.

    Averaged over ranks this is the paper's loss over the global batch (each pair is counted once)."""
    logits = fp32(logit_scale * image_features @ all_text.T + logit_bias)  # (B, N)
    signs = -torch.ones_like(logits)  # z_ij: +1 on each row's own pair, -1 elsewhere
    rows = torch.arange(logits.shape[0], device=logits.device)
    signs[rows, rows + offset] = 1.0
    return -F.logsigmoid(signs * logits).sum() / logits.shape[0]


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP: -sum of log sigmoid(z_ij (t x_i.y_j + b)) over all (B, B) pairs, divided by the batch size B."""
    return siglip_loss_gathered(image_features, text_features, logit_scale, logit_bias, 0)


def _decoupled_nce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -s_i,label + logsumexp_{j != label} s_ij for logits (B, N)."""
    own = torch.zeros_like(logits, dtype=torch.bool)
    own[torch.arange(logits.shape[0], device=logits.device), labels] = True
    negatives = logits.masked_fill(own, float("-inf"))
    return (torch.logsumexp(negatives, dim=1) - logits[own]).mean()


def dcl_loss_gathered(image_features: torch.Tensor, text_features: torch.Tensor, all_image: torch.Tensor,
                      all_text: torch.Tensor, logit_scale: torch.Tensor, offset: int) -> torch.Tensor:
    """DCL of local rows (B, D) against global columns (N, D), both directions averaged."""
    labels = _own_columns(image_features.shape[0], offset, image_features.device)
    logits_per_image = fp32(logit_scale * image_features @ all_text.T)  # (B, N)
    logits_per_text = fp32(logit_scale * text_features @ all_image.T)  # (B, N)
    return (_decoupled_nce(logits_per_image, labels) + _decoupled_nce(logits_per_text, labels)) / 2


def dcl_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """DCL: decoupled InfoNCE (positive out of the denominator), averaged over both directions."""
    return dcl_loss_gathered(image_features, text_features, image_features, text_features, logit_scale, 0)


def negclip_loss_gathered(image_features: torch.Tensor, text_features: torch.Tensor, all_image: torch.Tensor,
                          all_text: torch.Tensor, hard_negatives: torch.Tensor, logit_scale: torch.Tensor,
                          offset: int) -> torch.Tensor:
    """NegCLIP of local rows: image->text over [N texts; M hard negatives (M, D)], text->image over N images."""
    labels = _own_columns(image_features.shape[0], offset, image_features.device)
    candidates = torch.cat([all_text, hard_negatives], dim=0)  # (N + M, D)
    logits_per_image = fp32(logit_scale * image_features @ candidates.T)  # (B, N + M)
    logits_per_text = fp32(logit_scale * text_features @ all_image.T)  # (B, N)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def negclip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                 hard_negative_text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """NegCLIP: image->text softmax over [B texts; M hard negatives] (M, D), text->image over the B images."""
    return negclip_loss_gathered(image_features, text_features, image_features, text_features,
                                 hard_negative_text_features, logit_scale, 0)


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


def clip_loss_per_sample(image_features: torch.Tensor, text_features: torch.Tensor, all_image: torch.Tensor,
                         all_text: torch.Tensor, logit_scale: torch.Tensor, offset: int) -> torch.Tensor:
    """(B,) symmetric CLIP loss of each local pair (rows (B, D) against global columns (N, D))."""
    labels = _own_columns(image_features.shape[0], offset, image_features.device)
    logits_per_image = fp32(logit_scale * image_features @ all_text.T)  # (B, N)
    logits_per_text = fp32(logit_scale * text_features @ all_image.T)  # (B, N)
    return (F.cross_entropy(logits_per_image, labels, reduction="none")
            + F.cross_entropy(logits_per_text, labels, reduction="none")) / 2


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
    positive = owner[None, :] == _own_columns(b, offset, image_features.device)[:, None]  # (B, N*T)
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
    labels = _own_columns(texts.shape[0], offset, texts.device)
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


def sample_centers(labels: torch.Tensor, num_centers: int, negative_ratio: float,
                   generator: torch.Generator | None) -> torch.Tensor:
    """(S,) sorted ids of the centers scored this step: every positive in `labels` (N, P; -1 pads), plus
    round(ratio x the rest) random others (Partial FC's class sampling)."""
    in_batch = torch.zeros(num_centers, dtype=torch.bool, device=labels.device)
    in_batch[labels[labels >= 0]] = True
    others = (~in_batch).nonzero().squeeze(1)
    keep = round(min(max(negative_ratio, 0.0), 1.0) * others.numel())
    order = torch.randperm(others.numel(), generator=generator).to(others.device)
    sampled = in_batch.clone()
    sampled[others[order[:keep]]] = True
    return sampled.nonzero().squeeze(1)


def mlcd_logits(embeddings: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, scale: float, margin: float,
                negative_ratio: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, positive), both (N, S) over the sampled centers: s = scale (cos - margin [positive]); labels (N, P)
    index `centers` (C, D), -1 pads. Only the sampled rows of `centers` are read, so C can be a million."""
    ids = sample_centers(labels, centers.shape[0], negative_ratio, generator)  # (S,)
    column = torch.full((centers.shape[0],), -1, dtype=torch.long, device=ids.device)
    column[ids] = torch.arange(ids.numel(), device=ids.device)
    cos = fp32(F.normalize(embeddings, dim=-1) @ F.normalize(centers[ids], dim=-1).T)  # (N, S)
    valid = labels >= 0
    positive = torch.zeros_like(cos, dtype=torch.bool)
    rows = torch.arange(cos.shape[0], device=cos.device)[:, None].expand_as(labels)
    positive[rows[valid], column[labels[valid]]] = True
    return scale * (cos - margin * positive.to(cos.dtype)), positive


def log1p_sum_exp(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log(1 + sum_{j in mask} exp(v_j)) per row of (N, S); 0 for an empty mask, with finite gradients."""
    # The leading zero column is the "1 +": it keeps logsumexp finite (and its gradient defined) for empty masks.
    padded = torch.cat([values.new_zeros(values.shape[0], 1), values.masked_fill(~mask, float("-inf"))], dim=1)
    return torch.logsumexp(padded, dim=1)


def mlcd_loss(embeddings: torch.Tensor, centers: torch.Tensor, positive_labels: torch.Tensor, scale: float,
              margin: float, negative_ratio: float = 1.0, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """MLCD multi-label loss of embeddings (B, D) over centers (C, D); positive_labels (B, P), -1 pads."""
    s, positive = mlcd_logits(embeddings, centers, positive_labels, scale, margin, negative_ratio, generator)
    return (log1p_sum_exp(s, ~positive) + log1p_sum_exp(-s, positive)).mean()


LOSS_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "siglip": siglip_loss,
    "dcl": dcl_loss,
    "negclip": negclip_loss,
    "alip": weighted_clip_loss,
    "dreamlip": dreamlip_multi_positive_gathered,
    "mlcd": mlcd_loss,
}
"""Plain loss functions by objective name (signatures differ; the objective modules adapt `out`/`batch`)."""
