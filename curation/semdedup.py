"""SemDeDup: semantic deduplication within k-means clusters of embeddings.

Method: Abbas, Tirumala, Simig, Ganguli and Morcos, 2023, "SemDeDup: Data-efficient learning at web-scale
through semantic deduplication" (arXiv:2303.09540). Code: github.com/facebookresearch/SemDeDup, read at
commit 6b41945:

- ``clustering/sort_clusters.py``, ``rank_within_cluster``: the members of each cluster are sorted by their
  cosine distance ``1 - cos(x, c)`` to the cluster's centroid, farthest first when ``keep_hard`` (the default;
  Python's ``sorted(reverse=True)``, so equal distances keep dataset order).
- ``semdedup.py``, ``SemDeDupJob._process_shard``: ``which_to_keep`` "hard" keeps that order, "easy" reverses
  it, "random" shuffles it (``random.shuffle`` of the sorted list).
- ``semdedup.py``, ``SemDeDupJob.semdedup``: ``S = E E^T`` over the cluster's sorted embeddings, diagonal
  zeroed, ``triu(S, diagonal=1)``, ``M = max(triu, dim=0)``: ``M[j]`` is the largest similarity of sample ``j``
  to a sample before it. Sample ``j`` is removed when ``M[j] > 1 - eps``, for every eps of ``eps_list`` from
  the same ``M``. So the first sample of each group of near duplicates (in keep order) survives, and a sample
  is dropped when it is close to *any* earlier one, dropped or not (no transitive grouping).
- ``extract_dedup_data.py``, ``extract_pruned_data``: the kept set of one eps, mapped back to dataset rows.

Deliberate differences, none of which changes a decision for 0 < eps < 1:

- ``max_similarity`` is the true maximum over earlier samples (``-inf`` for a cluster's first sample);
  the authors' ``M`` is ``max(0, that)`` because ``triu`` fills the lower triangle with zeros.
- "random" draws its permutation from ``np.random.default_rng([seed, cluster_id])``, so it depends on the
  cluster alone; the authors consume one ``random.Random(seed)`` stream in the order a job visits clusters.
- A cluster larger than ``max_cluster_size`` is processed in tiles with the same result; the authors'
  ``advance_semdedup.py`` splits it into parts deduplicated separately (missing pairs across parts).
- Embeddings and centers are L2-normalised here; the authors store normalised embeddings
  (``compute_pretrained_embeddings.py``, ``get_embeddings``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from curation.clustering import l2_normalize


@dataclass(frozen=True)
class SemDedupConfig:
    """Configuration of SemDeDup (Abbas et al., 2023) over the cluster stage's k-means labels."""

    enabled: bool = False
    """Run SemDeDup (off by default); it runs on any embed model, but finds semantic duplicates only with a
    pretrained one (the bootstrap model's embeddings can be near-collapsed)."""
    eps: float = 0.07
    """Applied eps: drop a sample whose cosine to an earlier one exceeds 1 - eps. 0.07 is in both FINAL_EPS tables
    of the authors' constants.py (it kept 63.4% of LAION-440M in their commented table)."""
    report_eps: tuple[float, ...] = (0.03, 0.07, 0.124, 0.205)
    """eps values whose drop counts are reported from the same pass (constants.py: ~72%, 63%, 50%, 31% kept)."""
    keep: Literal["hard", "easy", "random"] = "hard"
    """Which sample of a duplicate group survives: "hard" farthest from the centroid (authors' default),
    "easy" nearest to it, "random" a seeded random one."""
    seed: int = 1234
    """Seed of the "random" order (semdedup_configs.yaml: 1234), combined with each cluster id."""
    max_cluster_size: int = 8192
    """Largest cluster whose (n, n) float32 similarity matrix is built at once (8192: 256 MiB); bigger clusters
    are processed exactly in max_cluster_size x max_cluster_size tiles."""

    def __post_init__(self) -> None:
        for eps in (self.eps, *self.report_eps):
            if not 0.0 < eps < 1.0:
                raise ValueError(f"SemDedupConfig eps values must be in (0, 1), got {eps}")
        if self.keep not in KEEP_ORDERS:
            raise ValueError(f"SemDedupConfig.keep must be one of {sorted(KEEP_ORDERS)}, got {self.keep!r}")
        if self.max_cluster_size < 1:
            raise ValueError(f"SemDedupConfig.max_cluster_size must be >= 1, got {self.max_cluster_size}")


@dataclass(frozen=True)
class SemDedupResult:
    """SemDeDup's decisions over N samples, the dropped pairs for the applied eps."""

    keep: np.ndarray
    """(N,) bool: kept at the config's eps."""
    max_similarity: np.ndarray
    """(N,) float32: largest cosine to an earlier sample of the same cluster in keep order; -inf for the first."""
    nearest: np.ndarray
    """(N,) int64: dataset index of that earlier sample (the earliest among equals); -1 for the first."""
    drop_counts: dict[float, int]
    """samples dropped for each eps of report_eps and the applied eps."""
    dropped: np.ndarray
    """(P,) int64: dataset indices dropped at the applied eps, ascending."""
    duplicate_of: np.ndarray
    """(P,) int64: the earlier sample each dropped one duplicates (``nearest`` of it)."""
    similarity: np.ndarray
    """(P,) float32: their cosine similarity."""


def _hard(dist: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # stable sort on -dist: farthest first, equal distances in dataset order, as sorted(reverse=True)
    return np.argsort(-dist, kind="stable")


def _easy(dist: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _hard(dist, rng)[::-1]  # the authors reverse the hard order, ties included


def _random(dist: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _hard(dist, rng)[rng.permutation(len(dist))]  # a shuffle of the sorted list, as random.shuffle


KEEP_ORDERS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "hard": _hard, "easy": _easy, "random": _random}
"""Order of a cluster's members (positions) by SemDedupConfig.keep, from their distances to the centroid."""


def cluster_order(emb: np.ndarray, center: np.ndarray, keep: str, rng: np.random.Generator) -> np.ndarray:
    """Positions of a cluster's rows emb (n, D) in keep order: the first of a duplicate group survives.

    Distance is the cosine distance 1 - cos(x, center) (sort_clusters.py, rank_within_cluster)."""
    dist = 1.0 - l2_normalize(emb) @ l2_normalize(center[None, :])[0]  # (n,)
    return KEEP_ORDERS[keep](dist, rng)


def _tile_max(a: np.ndarray, b: np.ndarray, r0: int, c0: int) -> tuple[np.ndarray, np.ndarray]:
    """Column max and argmax (global row) of a @ b.T, rows r0 + i and columns c0 + j, over r0 + i < c0 + j only.

    Tiles are aligned (both start at multiples of the block), so only r0 == c0 crosses the diagonal."""
    sims = a @ b.T  # (br, bc) float32
    if r0 == c0:
        sims[np.tri(len(a), len(b), dtype=bool)] = -np.inf  # keep the strict upper triangle, triu(diagonal=1)
    arg = np.argmax(sims, axis=0)  # (bc,), the first row among equals
    return sims[arg, np.arange(len(b))], r0 + arg


def cluster_max_similarity(emb_sorted: np.ndarray, block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per row j of emb_sorted (n, D), unit rows in keep order: (max_i<j cos(i, j) float32 (n,), that i int64 (n,)).

    The column max of the strict upper triangle of E E^T (semdedup.py, SemDeDupJob.semdedup), in block x block
    tiles so memory stays at block^2 floats; row 0 has no earlier row: -inf and -1."""
    emb_sorted = np.ascontiguousarray(emb_sorted, dtype=np.float32)
    n = len(emb_sorted)
    best = np.full(n, -np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    for c0 in range(0, n, block):
        c1 = min(c0 + block, n)
        for r0 in range(0, c0 + 1, block):  # row tiles above the diagonal, and the diagonal one
            m, a = _tile_max(emb_sorted[r0:r0 + block], emb_sorted[c0:c1], r0, c0)
            better = m > best[c0:c1]  # strict: an earlier row tile wins ties
            best[c0:c1] = np.where(better, m, best[c0:c1])
            arg[c0:c1] = np.where(better, a, arg[c0:c1])
    return best, arg


def top1_labels(labels: np.ndarray, n: int, k: int) -> np.ndarray:
    """Cluster id per sample from (n,) labels or (n, k') top-k labels (column 0, the nearest center)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[:, 0]
    if labels.shape != (n,):
        raise ValueError(f"labels must be (N,) or (N, k) with N={n}, got shape {np.shape(labels)}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must be cluster ids in [0, {k}), got [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)


def _clusters(labels: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(cluster id, member dataset indices ascending) for each non-empty cluster."""
    order = np.argsort(labels, kind="stable")
    ids, starts = np.unique(labels[order], return_index=True)
    for cid, a, b in zip(ids.tolist(), starts, [*starts[1:], len(order)]):
        yield cid, order[a:b]


def drops(max_similarity: np.ndarray, eps: float) -> np.ndarray:
    """(N,) bool: dropped at eps, M > 1 - eps, compared in float32 as torch compares a float32 tensor to a float."""
    return max_similarity > np.float32(1.0 - eps)


def semdedup(embeddings: np.ndarray, labels: np.ndarray, centers: np.ndarray, cfg: SemDedupConfig) -> SemDedupResult:
    """SemDeDup over embeddings (N, D) clustered by labels (N,) or (N, k) into centers (K, D), cluster by cluster."""
    x, c = l2_normalize(embeddings), l2_normalize(centers)  # (N, D), (K, D)
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"embeddings {x.shape} and centers {c.shape} must have the same width")
    top1 = top1_labels(labels, len(x), len(c))
    best = np.full(len(x), -np.inf, dtype=np.float32)
    nearest = np.full(len(x), -1, dtype=np.int64)
    for cid, members in _clusters(top1):
        rng = np.random.default_rng([cfg.seed, cid])
        order = members[cluster_order(x[members], c[cid], cfg.keep, rng)]  # dataset indices, keep order
        m, a = cluster_max_similarity(x[order], cfg.max_cluster_size)
        best[order] = m
        nearest[order] = np.where(a >= 0, order[np.maximum(a, 0)], -1)
    dropped = np.flatnonzero(drops(best, cfg.eps))
    counts = {eps: int(drops(best, eps).sum()) for eps in sorted({*cfg.report_eps, cfg.eps})}
    return SemDedupResult(keep=~drops(best, cfg.eps), max_similarity=best, nearest=nearest, drop_counts=counts,
                          dropped=dropped, duplicate_of=nearest[dropped], similarity=best[dropped])
