"""Tests of curation/semdedup.py: SemDeDup (Abbas et al., 2023) against hand-built answers and against
tests/curation/semdedup_reference.py, a transcription of github.com/facebookresearch/SemDeDup
(semdedup.py: SemDeDupJob.semdedup and SemDeDupJob._process_shard; clustering/sort_clusters.py:
rank_within_cluster; extract_dedup_data.py: extract_pruned_data)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from curation.clustering import l2_normalize
from curation.semdedup import SemDedupConfig, cluster_max_similarity, cluster_order, drops, semdedup
from tests.curation.semdedup_reference import reference_semdedup

E = np.eye(6, dtype=np.float32)


def _rotate(u: np.ndarray, w: np.ndarray, cos: float) -> np.ndarray:
    """The unit vector at cosine `cos` from unit u, towards unit w (orthogonal to u)."""
    return (cos * u + np.sqrt(1 - cos**2) * w).astype(np.float32)


def _kept(result) -> np.ndarray:
    return np.flatnonzero(result.keep)


def _clustered(seed: int, k: int = 5, per: int = 40, d: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blobs with jittered copies of a third of the samples at similarities spread over ~0.8-1.0."""
    rng = np.random.default_rng(seed)
    centers = l2_normalize(rng.standard_normal((k, d)))
    x = centers[np.repeat(np.arange(k), per)] + 0.35 * rng.standard_normal((k * per, d))
    x = l2_normalize(x)
    base = rng.choice(len(x), size=len(x) // 3, replace=False)
    noise = rng.uniform(0.02, 0.3, size=(len(base), 1)) * rng.standard_normal((len(base), d))
    x = l2_normalize(np.concatenate([x, x[base] + noise]))[rng.permutation(len(x) + len(base))]
    labels = np.argmax(x @ centers.T, axis=1)
    return x, labels, centers


def _shared_shuffle(seed: int):
    """The authors' random.shuffle replaced by curaclip's per-cluster permutation, so both sides see one order."""
    def shuffle_for(cluster_id: int):
        def shuffle(items: list) -> None:
            items[:] = np.random.default_rng([seed, cluster_id]).permutation(len(items)).tolist()
        return shuffle
    return shuffle_for


def test_near_duplicate_pair_drops_the_one_nearer_the_center_when_keeping_hard():
    """A pair at cosine 0.98 in one cluster: at eps=0.07 (1 - eps = 0.93) "hard" keeps the sample farther from the
    center and "easy" the nearer one (sort_clusters.py rank_within_cluster; semdedup.py _process_shard); at
    eps=0.01 (0.99) neither is dropped. A third, orthogonal sample always stays."""
    u = l2_normalize((E[0] + E[1])[None])[0]  # cos 0.707 to the center e0
    v = _rotate(u, E[2], 0.98)  # cos 0.98 * 0.707 to e0: farther from the center than u
    w = E[3]  # orthogonal to both
    x, labels, centers = np.stack([u, v, w]), np.zeros(3, int), E[:1]
    hard = semdedup(x, labels, centers, SemDedupConfig(eps=0.07, report_eps=(0.01, 0.07)))
    assert _kept(hard).tolist() == [1, 2]
    assert hard.dropped.tolist() == [0] and hard.duplicate_of.tolist() == [1]
    np.testing.assert_allclose(hard.similarity, [0.98], atol=1e-6)
    assert hard.drop_counts == {0.01: 0, 0.07: 1}
    easy = semdedup(x, labels, centers, SemDedupConfig(eps=0.07, keep="easy"))
    assert _kept(easy).tolist() == [0, 2] and easy.duplicate_of.tolist() == [0]
    strict = semdedup(x, labels, centers, SemDedupConfig(eps=0.01))
    assert strict.keep.all()


def test_a_chain_drops_every_sample_close_to_any_earlier_one_even_a_dropped_one():
    """a~b and b~c at 0.95, a-c at ~0.805: in keep order a, b, c both b and c go (M is a max over all earlier
    rows, dropped or not: semdedup.py SemDeDupJob.semdedup). Equal distances to the center keep dataset order
    for "hard" and reversed order for "easy" (sorted(reverse=True) is stable; easy reverses the list)."""
    t = np.arccos(0.95)
    a, b, c = (np.cos(k * t) * E[1] + np.sin(k * t) * E[2] for k in range(3))  # all at cos 0 to the center e0
    x, labels = np.stack([a, b, c]).astype(np.float32), np.zeros(3, int)
    hard = semdedup(x, labels, E[:1], SemDedupConfig(eps=0.07))
    assert _kept(hard).tolist() == [0]
    assert hard.dropped.tolist() == [1, 2] and hard.duplicate_of.tolist() == [0, 1]
    easy = semdedup(x, labels, E[:1], SemDedupConfig(eps=0.07, keep="easy"))
    assert _kept(easy).tolist() == [2] and easy.duplicate_of.tolist() == [1, 2]
    for keep, result in (("hard", hard), ("easy", easy)):
        kept, _ = reference_semdedup(x, labels, E[:1], [0.07], which_to_keep=keep)
        assert kept[0.07].tolist() == _kept(result).tolist()


def test_a_cluster_of_one_is_kept_with_no_earlier_sample():
    """A cluster of one has nothing to duplicate (semdedup.py _process_shard: cluster_size == 1 -> False)."""
    x = np.stack([E[0], E[0], E[1]])  # the first two duplicate each other, the third is alone in cluster 1
    result = semdedup(x, np.array([0, 0, 1]), E[:2], SemDedupConfig(eps=0.07))
    assert _kept(result).tolist() == [0, 2]
    assert result.max_similarity[2] == -np.inf and result.nearest[2] == -1
    kept, _ = reference_semdedup(x, np.array([0, 0, 1]), E[:2], [0.07])
    assert kept[0.07].tolist() == [0, 2]


def test_identical_vectors_keep_one_and_point_every_drop_at_it():
    """Forty identical vectors tie exactly in distance (0.5) and similarity (1): "hard" keeps dataset row 0 and
    "easy" row 39 (the reversed list), every other row a duplicate of that one at similarity 1, also in tiles of
    3 rows (the earliest among equals wins across tiles); the transcription agrees."""
    x = np.tile(np.array([[0.5, 0.5, 0.5, 0.5, 0, 0]], dtype=np.float32), (40, 1))  # unit rows, exact products
    labels = np.zeros(40, int)
    for keep, survivor in (("hard", 0), ("easy", 39)):
        for size in (8192, 3):
            result = semdedup(x, labels, E[:1], SemDedupConfig(eps=0.001, keep=keep, max_cluster_size=size))
            assert _kept(result).tolist() == [survivor]
            assert set(result.duplicate_of.tolist()) == {survivor}
            assert (result.similarity == 1.0).all()
        kept, _ = reference_semdedup(x, labels, E[:1], [0.001], which_to_keep=keep)
        assert kept[0.001].tolist() == [survivor]


def test_equal_distances_keep_dataset_order_among_several_groups():
    """Three interleaved groups of 20 identical vectors at distances 0.5, 0 and 1 from the center: "hard" keeps
    the first dataset row of each group and "easy" the last, as a stable sort (sorted(reverse=True) in
    sort_clusters.py rank_within_cluster) and its reversal order ties; the transcription agrees."""
    group = np.array([[0.5, 0.5, 0.5, 0.5, 0, 0], E[0], E[1]], dtype=np.float32)  # exact products
    x, labels = np.tile(group, (20, 1)), np.zeros(60, int)
    for keep, survivors in (("hard", [0, 1, 2]), ("easy", [57, 58, 59])):
        result = semdedup(x, labels, E[:1], SemDedupConfig(eps=0.001, keep=keep))
        assert _kept(result).tolist() == survivors
        assert set(result.duplicate_of.tolist()) == set(survivors)
        kept, _ = reference_semdedup(x, labels, E[:1], [0.001], which_to_keep=keep)
        assert kept[0.001].tolist() == survivors


def test_a_similarity_equal_to_one_minus_eps_is_kept():
    """The rule is strict, M > 1 - eps (semdedup.py _process_shard), compared in float32 as torch compares a
    float32 tensor with a Python float: a pair exactly at the threshold stays, a hair above it goes."""
    u, v = E[0], _rotate(E[0], E[1], 0.9)
    x, labels = np.stack([u, v]), np.zeros(2, int)
    s = cluster_max_similarity(l2_normalize(x))[0][1]
    eps = 1.0 - float(s)
    assert np.float32(1.0 - eps) == s  # the precondition: the threshold is exactly the similarity
    assert semdedup(x, labels, E[:1], SemDedupConfig(eps=eps)).keep.all()
    assert reference_semdedup(x, labels, E[:1], [eps])[0][eps].tolist() == [0, 1]
    above = semdedup(x, labels, E[:1], SemDedupConfig(eps=eps + 1e-6))
    assert above.keep.sum() == 1


def test_cluster_max_similarity_matches_a_loop_over_earlier_rows_in_any_tiling():
    """Column max of the strict upper triangle (semdedup.py SemDeDupJob.semdedup) against a plain double loop,
    whole and in tiles of 1, 7 and 16 rows (tiles cross the diagonal and leave a partial last tile)."""
    emb = l2_normalize(np.random.default_rng(0).standard_normal((40, 8)))
    sims = emb @ emb.T
    want = np.array([-np.inf] + [sims[:j, j].max() for j in range(1, 40)], dtype=np.float32)
    want_arg = np.array([-1] + [int(np.argmax(sims[:j, j])) for j in range(1, 40)])
    for block in (1, 7, 16, 8192):
        best, arg = cluster_max_similarity(emb, block=block)
        np.testing.assert_allclose(best, want, atol=1e-6)
        assert arg.tolist() == want_arg.tolist()


def test_large_clusters_in_tiles_give_the_same_result():
    """max_cluster_size bounds the tile, not the answer: tiles of 9 rows equal one matrix per cluster."""
    x, labels, centers = _clustered(seed=3)
    whole = semdedup(x, labels, centers, SemDedupConfig(eps=0.05))
    tiled = semdedup(x, labels, centers, SemDedupConfig(eps=0.05, max_cluster_size=9))
    assert whole.keep.tolist() == tiled.keep.tolist()
    assert whole.nearest.tolist() == tiled.nearest.tolist()
    np.testing.assert_allclose(whole.max_similarity, tiled.max_similarity, atol=1e-6)


@pytest.mark.parametrize("keep", ["hard", "easy", "random"])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_clustered_data_matches_the_transcription_for_every_eps(keep, seed):
    """Kept sets for several eps from one pass, and M, against the transcription of the authors' code
    (semdedup_reference.py). "random" hands both sides the same permutation of the sorted cluster; M equals
    ours clipped at 0 (torch.triu fills the lower triangle with zeros)."""
    x, labels, centers = _clustered(seed)
    eps_list = [0.005, 0.02, 0.05, 0.1, 0.2]
    cfg = SemDedupConfig(eps=0.05, report_eps=tuple(eps_list), keep=keep, seed=7)
    result = semdedup(x, labels, centers, cfg)
    kept, m = reference_semdedup(x, labels, centers, eps_list, which_to_keep=keep, shuffle_for=_shared_shuffle(7))
    np.testing.assert_allclose(np.maximum(result.max_similarity, 0), m, atol=1e-5)
    assert result.drop_counts[0.2] > result.drop_counts[0.005] > 0  # the data has duplicates at every level
    for eps in eps_list:
        assert abs(m - (1 - eps)).min() > 1e-5  # no sample on a threshold, where float32 rounding could decide
        assert np.flatnonzero(~drops(result.max_similarity, eps)).tolist() == kept[eps].tolist()
        assert result.drop_counts[eps] == len(x) - len(kept[eps])
    assert _kept(result).tolist() == kept[0.05].tolist()


def test_top_k_labels_use_the_nearest_center_only():
    """(N, k) labels from assign_topk: column 0 is the cluster, as SemDeDup assigns one centroid per sample."""
    x, labels, centers = _clustered(seed=2)
    other = (labels + 1) % len(centers)
    topk = np.stack([labels, other, other], axis=1)
    a = semdedup(x, labels, centers, SemDedupConfig())
    b = semdedup(x, topk, centers, SemDedupConfig())
    assert a.keep.tolist() == b.keep.tolist()
    assert semdedup(x, other, centers, SemDedupConfig()).keep.tolist() != a.keep.tolist()


def test_random_keep_depends_on_seed_and_cluster_only():
    """"random" keeps a seeded random member of an identical group: the same seed picks the same one, other
    seeds others, and adding another cluster changes nothing (the authors' one shared stream would)."""
    x = np.tile(E[:1], (20, 1))
    labels = np.zeros(20, int)
    picks = {s: _kept(semdedup(x, labels, E[:1], SemDedupConfig(keep="random", seed=s))).tolist() for s in range(6)}
    assert all(len(p) == 1 for p in picks.values())
    assert len({p[0] for p in picks.values()}) > 1
    again = semdedup(x, labels, E[:1], SemDedupConfig(keep="random", seed=3))
    assert _kept(again).tolist() == picks[3]
    others = np.tile(E[1:2], (4, 1))  # a second cluster after the first
    with_other = semdedup(np.concatenate([x, others]), np.r_[labels, np.ones(4, int)], E[:2],
                          SemDedupConfig(keep="random", seed=3))
    assert _kept(with_other)[0] == picks[3][0]


def test_cluster_order_sorts_by_distance_to_the_center():
    """Hard: farthest from the center first; easy: the reverse (sort_clusters.py rank_within_cluster)."""
    emb = np.stack([_rotate(E[0], E[1], c) for c in (0.9, 0.5, 0.99, 0.7)])
    rng = np.random.default_rng(0)
    assert cluster_order(emb, E[0], "hard", rng).tolist() == [1, 3, 0, 2]
    assert cluster_order(emb, E[0], "easy", rng).tolist() == [2, 0, 3, 1]
    assert sorted(cluster_order(emb, E[0], "random", rng).tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("change", [{"eps": 0.0}, {"eps": 1.0}, {"report_eps": (0.05, 1.5)}, {"keep": "medium"},
                                    {"max_cluster_size": 0}])
def test_invalid_configs_raise(change):
    with pytest.raises(ValueError, match="SemDedupConfig"):
        dataclasses.replace(SemDedupConfig(), **change)


def test_labels_outside_the_centers_or_mismatched_widths_raise():
    x = np.tile(E[:1], (3, 1))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        semdedup(x, np.array([0, 1, 0]), E[:1], SemDedupConfig())
    with pytest.raises(ValueError, match="N=3"):
        semdedup(x, np.zeros(2, int), E[:1], SemDedupConfig())
    with pytest.raises(ValueError, match="same width"):
        semdedup(x, np.zeros(3, int), np.eye(4, dtype=np.float32)[:1], SemDedupConfig())
