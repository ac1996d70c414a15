"""Embedding-based filters of DataComp's baselines: the CLIP-score filter and the image-based filter.

Paper: Gadre et al., 2023, "DataComp: In search of the next generation of multimodal datasets". Code:
github.com/mlfoundations/datacomp at commit 4a8df19, ``baselines/apply_filter.py``:

- CLIP score, ``load_uids_with_clip_score`` and ``load_uids_with_clip_score_helper``: keep a sample when its
  CLIP score (cosine of the image and text embeddings of one CLIP model) is ``>= threshold``; a ``fraction``
  is first turned into that threshold by ``get_threshold``: ``n = int(len(scores) * fraction)``,
  ``threshold = -np.sort(-scores)[n]``, the (n+1)-th largest score of the whole pool. So a top fraction keeps
  every sample tied with that score, and (one more than ``n``) at least ``n + 1`` samples. ``baselines.py``,
  ``check_args``: exactly one of ``--threshold`` and ``--fraction``.
- Image-based, ``load_uids_with_image_filter`` and ``image_filter_helper``: each target embedding (their
  ImageNet-1k train images, CLIP L/14) is assigned its nearest pool centroid (``get_centroid_ids_gpu``: argmax
  of dot products), the unique ids are the target clusters, and a pool sample is kept when its own nearest
  centroid is one of them. Their centroids come from k-means over the pool's image embeddings
  (``baselines/image_based_clustering.py``, ``train_kmeans``: 100,000 clusters by default).

Deliberate differences:

- ``fraction = 1`` keeps every sample; DataComp's ``get_threshold`` indexes one past the end there.
- Samples and targets are assigned by cosine (``curation.clustering.assign_topk`` normalises both sides), the
  rule the cluster stage used for the pool's labels; DataComp takes raw dot products with unnormalised L2
  k-means centroids. With the unit centers of ``fit_centers`` the two agree.
- ``nearest`` may exceed DataComp's single centroid per target embedding.
- DataComp's image-based baseline first applies its English / caption-length filter to the pool
  (``caption_filter``); here that is the filter stage's business, and masks are combined by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from curation.clustering import assign_topk, l2_normalize
from curation.semdedup import top1_labels


def require_pretrained(checkpoint: str | None, stage: str = "this embedding-based filter") -> str:
    """The checkpoint, or a ValueError when there is none: without one the embed stage bootstrap-trains a model
    on the pool itself, whose scores and clusters say nothing about the pool's quality."""
    if not checkpoint:
        raise ValueError(
            f"{stage} needs embeddings from a pretrained model, but embed.checkpoint is not set (the embed stage "
            "would bootstrap-train a model on this very pool); set embed.checkpoint to a pretrained open_clip "
            "checkpoint, or disable the filter")
    return checkpoint


@dataclass(frozen=True)
class ClipScoreConfig:
    """DataComp's CLIP-score filter (Gadre et al., 2023): keep samples by the cosine of their image and text."""

    enabled: bool = False
    """Apply the filter; off by default, since it needs a pretrained CLIP model (require_pretrained)."""
    threshold: float | None = None
    """Keep samples with score >= threshold (DataComp --threshold; 0.28 with B/32 for their LAION-2B rule)."""
    fraction: float | None = None
    """Keep the top fraction of the pool by score, in [0, 1] (DataComp --fraction, e.g. 0.3 for L/14 30%)."""
    image_column: str = "image_emb"
    """Column of the image embeddings scored (DataComp --arch: the L/14 or B/32 features of one model)."""
    text_column: str = "text_emb"
    """Column of the text embeddings from the same model as image_column."""

    def __post_init__(self) -> None:
        if self.threshold is not None and self.fraction is not None:
            raise ValueError("ClipScoreConfig: set threshold or fraction, not both")
        if self.enabled and self.threshold is None and self.fraction is None:
            raise ValueError("ClipScoreConfig: enabled needs a threshold or a fraction")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"ClipScoreConfig.fraction must be in [0, 1], got {self.fraction}")


def clip_scores(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """CLIP score per sample: the cosine of its L2-normalised image (N, D) and text (N, D) rows, (N,) float32."""
    if np.shape(image_emb) != np.shape(text_emb) or np.ndim(image_emb) != 2:
        raise ValueError(f"image {np.shape(image_emb)} and text {np.shape(text_emb)} embeddings must be (N, D) alike")
    return np.einsum("nd,nd->n", l2_normalize(image_emb), l2_normalize(text_emb))


def clip_score_threshold(scores: np.ndarray, fraction: float) -> float:
    """The threshold of a top fraction, as DataComp's get_threshold: the int(N * fraction)-th score (0-based) in
    descending order, over the whole pool; -inf (keep all) where that index is past the end (fraction 1)."""
    scores = np.asarray(scores)
    n = int(len(scores) * fraction)
    return float(-np.sort(-scores)[n]) if n < len(scores) else -np.inf


def clip_score_keep(scores: np.ndarray, cfg: ClipScoreConfig) -> np.ndarray:
    """(N,) bool: score >= cfg.threshold, or >= the threshold of cfg.fraction over these scores (the whole pool)."""
    if cfg.threshold is None and cfg.fraction is None:
        raise ValueError("ClipScoreConfig has neither threshold nor fraction")
    scores = np.asarray(scores)
    threshold = cfg.threshold if cfg.threshold is not None else clip_score_threshold(scores, cfg.fraction)
    return scores >= threshold


@dataclass(frozen=True)
class ImageFilterConfig:
    """DataComp's image-based filter: keep pool samples in the clusters nearest a target set's image embeddings."""

    enabled: bool = False
    """Apply the filter (off by default); needs a target folder. It runs on any embed model (not checked), but
    means something only with a pretrained one."""
    target: str | None = None
    """Folder of target images, embedded with the pool's model (DataComp: ImageNet-1k train images)."""
    nearest: int = 1
    """Pool clusters kept per target embedding (DataComp: 1, its argmax centroid in get_centroid_ids_gpu)."""
    gpu: Literal["auto", "never", "always"] = "auto"
    """faiss device for assigning the target embeddings, as ClusterConfig.gpu."""

    def __post_init__(self) -> None:
        if self.enabled and not self.target:
            raise ValueError("ImageFilterConfig: enabled needs target, a folder of target images")
        if self.nearest < 1:
            raise ValueError(f"ImageFilterConfig.nearest must be >= 1, got {self.nearest}")


def target_clusters(centers: np.ndarray, target_emb: np.ndarray, nearest: int, gpu: str = "auto") -> np.ndarray:
    """Sorted unique ids of the `nearest` centers (K, D) of each target embedding (M, D), by cosine."""
    if len(target_emb) == 0:
        raise ValueError("the image-based filter needs at least one target embedding")
    labels, _ = assign_topk(np.asarray(target_emb), np.asarray(centers), k=nearest, gpu=gpu)  # (M, nearest)
    return np.unique(labels).astype(np.int64)


def image_based_keep(sample_labels: np.ndarray, centers: np.ndarray, target_emb: np.ndarray,
                     cfg: ImageFilterConfig) -> tuple[np.ndarray, np.ndarray]:
    """(keep (N,) bool, kept cluster ids sorted): samples whose nearest center (labels (N,), or column 0 of
    (N, k) top-k labels) is among the target embeddings' nearest clusters."""
    top1 = top1_labels(sample_labels, len(sample_labels), len(centers))  # (N,)
    kept = target_clusters(centers, target_emb, cfg.nearest, cfg.gpu)
    return np.isin(top1, kept), kept
