"""MLCD: An et al. 2024, "Multi-label Cluster Discrimination for Visual Representation Learning" (the authors
released no loss code; this follows the paper). A sample is scored against cluster centers, s_j = scale cos(x, c_j)
(margin taken off positives): L = log(1 + sum_neg exp(s_j)) + log(1 + sum_pos exp(-s_i)); negatives are a random
fraction of the centers, as Partial FC (An et al. 2022) samples its classifier, whose rows are sharded across
ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from training.distributed import (
    DistContext,
    RowShard,
    ScaleGrad,
    gather_detached,
    gather_features,
    init_rows,
    shard_range,
)
from training.objectives.common import Objective, fp32


@dataclass(frozen=True)
class MLCDConfig:
    """MLCD's cluster classifier (An et al. 2024, "Multi-label Cluster Discrimination for Visual Representation
    Learning")."""

    num_centers: int | None = None
    """classifier rows, one per cluster center: not a config key; the train stage sets it from the cluster
    artifact's centers.npy (the one source of the class count)."""
    top_k: int = 3
    """positive labels per sample: the first top_k of its `cluster_labels` (the cluster stage keeps top_k too)."""
    scale: float = 32.0
    """scale s on the cosine logits s x cos(x, c_j), as in normalised-softmax classifiers (ArcFace uses 64 at 85k
    classes; fewer centers need less)."""
    margin: float = 0.2
    """additive margin taken off the positives' cosines before scaling (CosFace-style)."""
    negative_ratio: float = 0.1
    """fraction of the non-positive centers scored each step (Partial FC's sample rate 0.1); 1.0 scores all."""


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


def distributed_log1p_sum_exp(values: torch.Tensor, mask: torch.Tensor, dist: DistContext) -> torch.Tensor:
    """log(1 + sum over every rank's masked columns of exp(v)) per row; each rank holds some columns (N, S_r)."""
    if dist.world_size == 1:
        return log1p_sum_exp(values, mask)
    import torch.distributed.nn.functional as dist_fn

    masked = values.masked_fill(~mask, float("-inf"))
    with torch.no_grad():  # a shared shift m >= 0 keeps every exp finite; it cancels exactly
        shift = masked.amax(dim=1).clamp_min(0.0)
        torch_dist.all_reduce(shift, op=torch_dist.ReduceOp.MAX)
    partial = torch.exp(masked - shift[:, None]).sum(dim=1)  # (N,)
    total = dist_fn.all_reduce(partial, op=torch_dist.ReduceOp.SUM)
    return shift + torch.log(torch.exp(-shift) + total)


class MLCDObjective(Objective):
    """MLCD's multi-label cluster classifier on the image embedding, Partial-FC style across ranks.

    Each rank holds rows [start, stop) of the (num_centers, D) classifier, scores the gathered embeddings of the
    global batch against its sampled rows, and the per-row sums of the loss are all-reduced, so the loss (and,
    with the 1 / world_size gradient scale on the rank-local rows, every gradient) equals the single-process one.
    """

    reads = frozenset({"image_features"})

    def __init__(self, cfg: MLCDConfig, embed_dim: int, seed: int) -> None:
        super().__init__()
        if cfg.num_centers is None:
            raise ValueError('objective "mlcd" needs mlcd.num_centers (the cluster stage\'s num_centers); it is None')
        dist = DistContext.current()
        self.shard = shard_range(cfg.num_centers, dist.rank, dist.world_size)
        self.weight = nn.Parameter(init_rows(self.shard, embed_dim, seed))
        self.settings, self.seed, self.steps_done = cfg, seed, 0
        self._register_load_state_dict_pre_hook(self._slice_full_weight)

    def sharded(self) -> dict[str, RowShard]:
        return {"weight": self.shard}

    def get_extra_state(self) -> dict[str, int]:
        return {"steps_done": self.steps_done}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.steps_done = int(state["steps_done"])

    def _slice_full_weight(self, state: dict, prefix: str, *args) -> None:  # noqa: ANN002 - torch's hook signature
        """A checkpoint holds the full classifier; keep this rank's rows."""
        key = prefix + "weight"
        if key in state and state[key].shape[0] == self.shard.total:
            state[key] = state[key][self.shard.start:self.shard.stop]

    def sampler(self, dist: DistContext) -> torch.Generator:
        """Negative sampling seeded by (seed, step, rank): accumulated micro-batches of a step draw the same."""
        seed = np.random.SeedSequence([self.seed, self.steps_done, dist.rank]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(seed))

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        labels = gather_detached(batch["cluster_label_ids"], dist)  # (N, k), -1 pads
        if labels.numel() and int(labels.max()) >= self.shard.total:
            raise ValueError(f"cluster label {int(labels.max())} >= mlcd.num_centers={self.shard.total}")
        mine = (labels >= self.shard.start) & (labels < self.shard.stop)
        local_labels = torch.where(mine, labels - self.shard.start, torch.full_like(labels, -1))
        weight = ScaleGrad.apply(self.weight, 1.0 / dist.world_size) if dist.world_size > 1 else self.weight
        cfg = self.settings
        s, positive = mlcd_logits(gather_features(out["image_features"], dist), weight, local_labels, cfg.scale,
                                  cfg.margin, cfg.negative_ratio, self.sampler(dist))
        neg = distributed_log1p_sum_exp(s, ~positive, dist)
        pos = distributed_log1p_sum_exp(-s, positive, dist)
        return (neg + pos).mean()

    def end_step(self) -> None:
        self.steps_done += 1
