"""Reference MLCD loss (An et al. 2024, "Multi-label Cluster Discrimination for Visual Representation Learning",
ECCV 2024, arXiv:2407.17331), written independently of training/objectives/mlcd.py for agreement tests.

Source search (no authors' loss code exists publicly):
  * github.com/deepglint/unicom, newest snapshot commit ae7141123532a471f082753b993e8d504104a6fb (2025-09-28).
    Its `mlcd/` folder holds only inference/conversion code (vit_rope2d.py, vit_rope2d_hf.py,
    convert_vit_*_to_hf.py, README.md); `mlcd_vl/` is LLaVA downstream code. The only margin/Partial-FC code in
    the whole history is `unicom/partial_fc.py` (`CombinedMarginLoss`, `PartialFC_V2`, `DistCrossEntropy`), which
    is UNICOM's *single-label* softmax (one label per row, `labels != -1` selects rows) -- not MLCD's loss.
    No file anywhere in the repository history contains a multi-label / MLCD loss.
  * github.com/deepglint/MLCD: not present in the index.
So this follows the paper, Sec. 3 (Method), "multi-label classification" loss: with sigma_j = cos(x, w_j) between the
l2-normalised embedding and l2-normalised class (cluster) center j, Omega_p the sample's positive clusters (its
nearest centers) and Omega_n the negative ones,

    L = log(1 + sum_{j in Omega_n} exp(s * sigma_j)) + log(1 + sum_{i in Omega_p} exp(-s * (sigma_i - m)))

i.e. the Circle-loss-style "unified" multi-label form with the positive and negative terms separated, scale s and an
additive margin m on positive similarities; negatives are a random fraction r of the centers (Partial FC sampling,
r = 0.1 in the paper). Here every non-positive center is a negative (r = 1) so the result is deterministic.

Ambiguities (the paper text could not be re-read in this session; stated from the paper as recalled):
  * the margin is taken to apply to the positives only (not also added to negatives);
  * reduction is the mean over samples; -1 label padding and duplicate labels in a row count once;
  * no defaults are given for s and m (the paper's values could not be verified here), so both are required.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mlcd_loss_reference(embeddings: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, scale: float,
                        margin: float) -> torch.Tensor:
    """embeddings (N, D), centers (C, D), labels (N, k) int64 cluster ids with -1 padding -> scalar loss."""
    n, c = embeddings.shape[0], centers.shape[0]
    sigma = F.normalize(embeddings, dim=1) @ F.normalize(centers, dim=1).t()  # (N, C) cosines
    # (N, C) boolean positive mask built from one-hot rows; the -1 pads go to an extra dropped column
    idx = torch.where(labels >= 0, labels, torch.full_like(labels, c))
    pos = torch.zeros(n, c + 1, dtype=torch.bool, device=labels.device)
    pos.scatter_(1, idx, True)
    pos = pos[:, :c]
    neg_inf = torch.tensor(float("-inf"), dtype=sigma.dtype, device=sigma.device)
    # log(1 + sum exp(v)) == logaddexp(0, logsumexp(v)); an empty set gives logsumexp = -inf -> 0.
    # (F.softplus is not used: above its threshold=20 it returns x itself, off by ~exp(-20).)
    zero = torch.zeros((), dtype=sigma.dtype, device=sigma.device)
    neg_term = torch.logaddexp(zero, torch.logsumexp(torch.where(pos, neg_inf, scale * sigma), dim=1))
    pos_term = torch.logaddexp(zero, torch.logsumexp(torch.where(pos, -scale * (sigma - margin), neg_inf),
                                                   dim=1))
    return (neg_term + pos_term).mean()
