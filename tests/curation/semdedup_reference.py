"""A literal transcription of the authors' SemDeDup, the parity reference of curation/semdedup.py.

Transcribed (not copied) from github.com/facebookresearch/SemDeDup at commit 6b41945, in torch as they wrote it:

- ``clustering/sort_clusters.py``, ``rank_within_cluster``: the ``sim_metric="cosine"``, non-spherical branch
  (cosine distance to the centroid from ``torch.nn.CosineSimilarity``), sorted with ``sorted(...,
  reverse=keep_hard)``;
- ``semdedup.py``, ``SemDeDupJob._process_shard``: the cluster-of-one case, the ``which_to_keep`` reordering
  and the ``eps=...`` columns ``M > 1 - eps``;
- ``semdedup.py``, ``SemDeDupJob.semdedup``: ``cluster_reps @ cluster_reps.T``, ``fill_diagonal_(0)``,
  ``torch.triu(..., diagonal=1)``, ``torch.max(..., dim=0)[0]``;
- ``extract_dedup_data.py``, ``extract_pruned_data``: rows whose ``eps=...`` entry is False, taken from the
  sorted cluster reordered by the table's ``indices``.

Files, DataFrames and submitit are replaced by lists and dicts; ``shuffle`` stands for their
``random.shuffle`` (seeded once by ``random.seed(args.seed)``) so a test can hand both sides one permutation.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch


def rank_within_cluster(data: np.ndarray, nearest_cent: np.ndarray, centroids: np.ndarray, cluster_c: int,
                        keep_hard: bool = True) -> list[tuple[int, float]]:
    """sort_clusters.py, rank_within_cluster, for one cluster: (example id in dataset, dist to centroid) rows."""
    cluster_items = [i for i in range(len(nearest_cent)) if nearest_cent[i] == cluster_c]  # dist_df.loc order
    cluster_c_centroid = torch.Tensor(centroids[cluster_c])
    sim_to_cent = torch.nn.CosineSimilarity(dim=1)(torch.Tensor(data[cluster_items]), cluster_c_centroid)
    cluster_dists_to_cent = (1 - sim_to_cent).tolist()
    return sorted(zip(cluster_items, cluster_dists_to_cent), key=lambda x: x[1], reverse=keep_hard)


def semdedup_m(cluster_reps: torch.Tensor) -> torch.Tensor:
    """semdedup.py, SemDeDupJob.semdedup: M[j], the max similarity of item j to the items before it."""
    pair_w_sim_matrix = cluster_reps @ (cluster_reps.T)
    pair_w_sim_matrix.fill_diagonal_(0.0)
    triu_sim_mat = torch.triu(pair_w_sim_matrix, diagonal=1)
    return torch.max(triu_sim_mat, dim=0)[0].cpu()


def process_cluster(cluster_i: list[tuple[int, float]], embs: np.ndarray, which_to_keep: str,
                    eps_list: list[float], shuffle: Callable[[list], None]) -> dict[str, list]:
    """semdedup.py, SemDeDupJob._process_shard, one cluster: the points_to_remove_df columns (and M)."""
    cluster_size = len(cluster_i)
    if cluster_size == 1:
        table = {"indices": [0], "M": [0.0]}
        for eps in eps_list:
            table[f"eps={eps}"] = [False]
        return table
    clutser_items_indices = list(range(cluster_size))
    if which_to_keep.lower() == "random":
        shuffle(clutser_items_indices)
        cluster_i = [cluster_i[k] for k in clutser_items_indices]
    if which_to_keep.lower() == "easy":
        clutser_items_indices = clutser_items_indices[::-1]
        cluster_i = [cluster_i[k] for k in clutser_items_indices]
    cluster_ids = np.array([row[0] for row in cluster_i]).astype("int32")
    cluster_reps = torch.tensor(embs[cluster_ids])
    M = semdedup_m(cluster_reps)
    table = {"indices": clutser_items_indices, "M": M.tolist()}
    for eps in eps_list:
        table[f"eps={eps}"] = (M > 1 - eps).tolist()
    return table


def extract_kept(sorted_cluster: list[tuple[int, float]], table: dict[str, list], eps: float) -> list[int]:
    """extract_dedup_data.py, extract_pruned_data(retreive_kept_samples=True), one cluster: kept dataset ids."""
    keep_rows = [k for k, removed in enumerate(table[f"eps={eps}"]) if not removed]
    cluster_i = [sorted_cluster[k] for k in table["indices"]]
    return [cluster_i[k][0] for k in keep_rows]


def reference_semdedup(embs: np.ndarray, nearest_cent: np.ndarray, centroids: np.ndarray, eps_list: list[float],
                       which_to_keep: str = "hard", seed: int = 1234,
                       shuffle_for: Callable[[int], Callable[[list], None]] | None = None
                       ) -> tuple[dict[float, np.ndarray], np.ndarray]:
    """(kept dataset ids per eps, sorted; M per dataset row), over every cluster in id order.

    ``shuffle_for(cluster_id)`` gives the "random" shuffle of a cluster; by default the authors' single
    ``random.Random(seed)`` stream, consumed cluster after cluster."""
    stream = random.Random(seed)
    kept: dict[float, list[int]] = {eps: [] for eps in eps_list}
    m_per_row = np.zeros(len(embs), dtype=np.float32)
    for cluster_id in range(len(centroids)):
        sorted_cluster = rank_within_cluster(embs, nearest_cent, centroids, cluster_id, keep_hard=True)
        if not sorted_cluster:
            continue
        shuffle = stream.shuffle if shuffle_for is None else shuffle_for(cluster_id)
        table = process_cluster(sorted_cluster, embs, which_to_keep, eps_list, shuffle)
        reordered = [sorted_cluster[k] for k in table["indices"]]
        m_per_row[[row[0] for row in reordered]] = table["M"]
        for eps in eps_list:
            kept[eps] += extract_kept(sorted_cluster, table, eps)
    return {eps: np.sort(np.array(ids, dtype=np.int64)) for eps, ids in kept.items()}, m_per_row
