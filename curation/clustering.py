"""Spherical k-means centers and top-k multi-labels for the `cluster` stage.

Method: MLCD, "Multi-label Cluster Discrimination for Visual Representation Learning"
(An et al., ECCV 2024). Image embeddings are clustered into K centers (K = one million at
full scale); each sample keeps its `top_k` nearest centers as multi-labels, which the
MLCD loss then discriminates against the other centers.

faiss does the heavy lifting. At full scale (N ~ 10^8-10^9, K = 10^6) install a GPU build
(`pip install 'curaclip[gpu]'`, i.e. faiss-gpu-cu12) and keep `gpu="auto"`: `faiss.Kmeans`
then trains on every visible GPU, and `assign_topk` moves its flat inner-product index there
too. `max_points_per_centroid` bounds the training subsample (K * 256 points by default), so
k-means cost stays independent of N; assignment is one batched exact search over all N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np


@dataclass(frozen=True)
class ClusterConfig:
    """Configuration of the `cluster` stage (MLCD multi-labels)."""

    num_centers: int = 64
    """k-means centers K (MLCD uses one million at full scale, on GPUs with faiss)."""
    top_k: int = 3
    """nearest centers kept per sample as its multi-labels (MLCD's positive set)."""
    niter: int = 20
    """k-means iterations (faiss default is 25; 20 converges on normalised CLIP embeddings)."""
    seed: int = 0
    """seed of the k-means initialisation and training subsample."""
    gpu: Literal["auto", "never", "always"] = "auto"
    """faiss device: "auto" (GPU when faiss.get_num_gpus() > 0), "never", or "always" (error without one)."""
    max_points_per_centroid: int = 256
    """training subsample per center (faiss default): k-means sees at most K * this many points."""


def _gpu_auto() -> bool:
    return faiss.get_num_gpus() > 0


def _gpu_always() -> bool:
    if faiss.get_num_gpus() == 0:
        raise RuntimeError('ClusterConfig.gpu="always" but faiss sees no GPU (install faiss-gpu-cu12)')
    return True


GPU_MODES = {"auto": _gpu_auto, "never": lambda: False, "always": _gpu_always}
"""How ClusterConfig.gpu decides whether faiss runs on GPUs."""


def use_gpu(mode: str) -> bool:
    """Resolve a ClusterConfig.gpu mode to a yes/no for this machine."""
    if mode not in GPU_MODES:
        raise ValueError(f"unknown gpu mode {mode!r}; expected one of {sorted(GPU_MODES)}")
    return GPU_MODES[mode]()


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as contiguous float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def fit_centers(x: np.ndarray, cfg: ClusterConfig) -> np.ndarray:
    """Spherical k-means on L2-normalised rows of x (N, D): centers (K, D) float32, unit rows."""
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {x.shape}")
    n, d = x.shape
    if n < cfg.num_centers:
        raise ValueError(f"k-means needs at least num_centers={cfg.num_centers} points, got {n}")
    kmeans = faiss.Kmeans(
        d,
        cfg.num_centers,
        niter=cfg.niter,
        seed=cfg.seed,
        spherical=True,  # cosine geometry, as MLCD clusters normalised CLIP features
        gpu=use_gpu(cfg.gpu),
        max_points_per_centroid=cfg.max_points_per_centroid,
        verbose=False,
    )
    kmeans.train(l2_normalize(x))
    return l2_normalize(kmeans.centroids)  # (K, D)


def _flat_ip_index(centers: np.ndarray, gpu: bool) -> faiss.Index:
    index = faiss.IndexFlatIP(centers.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(centers)
    return index


def assign_topk(
    x: np.ndarray, centers: np.ndarray, k: int, batch_size: int = 65536, gpu: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """MLCD multi-labels: the k nearest centers of each row of x by cosine similarity.

    Returns labels int32 (N, k) and scores float32 (N, k), each row sorted by score descending.
    Rows of x and centers are L2-normalised first, so scores are cosine similarities.
    """
    if not 1 <= k <= len(centers):
        raise ValueError(f"k must be in [1, {len(centers)}] (the number of centers), got {k}")
    if x.ndim != 2 or x.shape[1] != centers.shape[1]:
        raise ValueError(f"x {x.shape} and centers {centers.shape} must be 2-D with the same width")
    index = _flat_ip_index(l2_normalize(centers), use_gpu(gpu))
    labels = np.empty((len(x), k), dtype=np.int32)
    scores = np.empty((len(x), k), dtype=np.float32)
    for start in range(0, len(x), batch_size):
        stop = min(start + batch_size, len(x))
        sims, ids = index.search(l2_normalize(x[start:stop]), k)  # (B, k) each, best first
        labels[start:stop] = ids
        scores[start:stop] = sims
    return labels, scores
