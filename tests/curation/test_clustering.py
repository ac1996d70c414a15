"""Tests of curation/clustering.py: MLCD spherical k-means centers and top-k multi-labels."""

import dataclasses
import math

import faiss
import numpy as np
import pytest

from curation import clustering
from curation.clustering import (
    DEFAULT_NPROBE,
    GPU_MODES,
    CenterIndex,
    ClusterConfig,
    assign_topk,
    center_index,
    cluster_agreement,
    cluster_sizes,
    coarse_cell_count,
    empty_clusters,
    fit_centers,
    ivf_nlist,
    l2_normalize,
    nearest_neighbours,
    nmi,
    proportional_split,
    purity,
    sample_rows,
    search_topk,
    size_summary,
    spherical_objective,
    training_sample_size,
    use_gpu,
)

NO_GPU = pytest.mark.skipif(faiss.get_num_gpus() == 0,
                            reason="faiss sees no GPU (faiss-cpu build or no CUDA device): GPU paths not exercised")


def _blobs(rng: np.random.Generator, k: int = 6, per: int = 60, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    means = l2_normalize(rng.standard_normal((k, d)))
    labels = np.repeat(np.arange(k), per)
    x = means[labels] + 0.05 * rng.standard_normal((k * per, d)).astype(np.float32)
    return x.astype(np.float32), labels


def _numpy_topk(x: np.ndarray, centers: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = l2_normalize(x) @ l2_normalize(centers).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float((found[:, :, None] == exact[:, None, :]).any(axis=2).mean())


def _cpu(**kw) -> ClusterConfig:
    return ClusterConfig(gpu="never", **kw)


# --- assignment ----------------------------------------------------------------------------------

def test_assign_topk_matches_numpy_argsort_across_batches():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 24)).astype(np.float32)
    centers = rng.standard_normal((37, 24)).astype(np.float32)
    labels, scores = assign_topk(x, centers, k=5, batch_size=128)  # 8 batches, the last partial
    ref_labels, ref_scores = _numpy_topk(x, centers, 5)
    assert labels.dtype == np.int32 and scores.dtype == np.float32
    assert labels.shape == scores.shape == (1000, 5)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first


@pytest.mark.parametrize("assign", ["exact", "ivf"])
def test_search_topk_scores_are_sorted_cosines_of_the_returned_centers(assign):
    rng = np.random.default_rng(2)
    x = 3.0 * rng.standard_normal((400, 12)).astype(np.float32)  # not unit: scores must still be cosines
    centers = 2.0 * rng.standard_normal((50, 12)).astype(np.float32)
    labels, scores = search_topk(center_index(centers, _cpu(num_centers=50, assign=assign)), x, 8)
    cosines = np.einsum("nd,nkd->nk", l2_normalize(x), l2_normalize(centers)[labels])
    np.testing.assert_allclose(scores, cosines, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)
    assert all(len(set(row)) == 8 for row in labels)  # k distinct centers per row


def test_center_index_built_once_serves_every_part_like_one_call():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((900, 16)).astype(np.float32)
    centers = rng.standard_normal((64, 16)).astype(np.float32)
    index = center_index(centers, _cpu(num_centers=64))
    parts = [search_topk(index, part, 4) for part in np.array_split(x, 3)]
    labels, scores = assign_topk(x, centers, 4, gpu="never")
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), labels)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), scores, atol=1e-6)


def test_ivf_recall_at_defaults_on_random_clustered_data():
    rng = np.random.default_rng(4)
    means = l2_normalize(rng.standard_normal((20, 32)))
    x = l2_normalize(means[rng.integers(0, 20, 6000)] + 0.3 * rng.standard_normal((6000, 32)).astype(np.float32))
    centers = fit_centers(x, _cpu(num_centers=400, niter=10))
    exact, _ = assign_topk(x, centers, 8, gpu="never")
    cfg = _cpu(num_centers=400, assign="ivf")
    assert cfg.nprobe == DEFAULT_NPROBE and ivf_nlist(400) == 80
    found, _ = search_topk(center_index(centers, cfg), x, 8)
    assert _recall(found, exact) >= 0.95
    # the measurement can tell: 4 probes of 80 cells miss many of the exact top-8 (at 1 probe most rows
    # hold fewer than 8 candidates and fall back to the exact search)
    few_probes, _ = search_topk(center_index(centers, dataclasses.replace(cfg, nprobe=4)), x, 8)
    assert _recall(few_probes, exact) < 0.9


def test_ivf_probing_every_cell_is_exact():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    centers = rng.standard_normal((100, 16)).astype(np.float32)
    ivf = center_index(centers, _cpu(num_centers=100, assign="ivf", nlist=10, nprobe=10))
    labels, scores = search_topk(ivf, x, 5)
    ref_labels, ref_scores = _numpy_topk(x, centers, 5)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_rows_whose_ivf_probes_hold_fewer_than_k_centers_are_searched_exactly():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    centers = rng.standard_normal((20, 8)).astype(np.float32)
    # one center per cell and one probe: faiss alone returns one id and k - 1 ids of -1
    ivf = center_index(centers, _cpu(num_centers=20, assign="ivf", nlist=20, nprobe=1))
    assert (ivf.index.search(l2_normalize(x), 3)[1] < 0).any()
    labels, scores = search_topk(ivf, x, 3)
    np.testing.assert_array_equal(labels, _numpy_topk(x, centers, 3)[0])


def test_ivf_nlist_rule():
    assert ivf_nlist(10_000) == 400 and ivf_nlist(1_000_000) == 4000
    assert ivf_nlist(8) == 8  # capped at K
    assert ivf_nlist(10_000, nlist=123) == 123


def test_assign_topk_rejects_k_larger_than_centers():
    x = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="number of centers"):
        assign_topk(x, np.eye(4, dtype=np.float32)[:2], k=3)


def test_assign_rejects_wrong_shapes_and_modes():
    centers = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="same width"):
        assign_topk(np.ones((3, 5), np.float32), centers, 2)
    with pytest.raises(ValueError, match="same width"):
        assign_topk(np.ones(4, np.float32), centers, 2)
    with pytest.raises(ValueError, match="unknown assign"):
        assign_topk(np.ones((3, 4), np.float32), centers, 2, assign="hnsw")
    index = center_index(centers, _cpu(num_centers=4))
    with pytest.raises(ValueError, match="number of centers"):
        search_topk(index, np.ones((3, 4), np.float32), 5)
    with pytest.raises(ValueError, match="same width"):
        search_topk(index, np.ones((3, 3), np.float32), 2)


# --- nearest neighbours --------------------------------------------------------------------------

def test_nearest_neighbours_match_brute_force_and_exclude_self():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((300, 10)).astype(np.float32)
    ids, scores = nearest_neighbours(x, x, 5, batch_size=64, gpu="never")
    sims = l2_normalize(x) @ l2_normalize(x).T
    np.fill_diagonal(sims, -np.inf)
    ref = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    assert ids.dtype == np.int64 and ids.shape == (300, 5)
    assert not (ids == np.arange(300)[:, None]).any()
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, ref, axis=1), atol=1e-5)


def test_nearest_neighbours_of_a_part_use_its_global_offset_and_survive_duplicates():
    rng = np.random.default_rng(8)
    base = rng.standard_normal((50, 6)).astype(np.float32)
    base[21] = base[20]  # an exact duplicate: ties with self, yet self must go and the twin stay
    ids, scores = nearest_neighbours(base[20:30], base, 3, query_offset=20, gpu="never")
    assert not (ids == np.arange(20, 30)[:, None]).any()
    assert ids[0, 0] == 21 and ids[1, 0] == 20 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    with_self, _ = nearest_neighbours(base[:5], base, 2, exclude_self=False, gpu="never")
    np.testing.assert_array_equal(with_self[:, 0], np.arange(5))


def test_a_cluster_smaller_than_the_neighbour_count_gets_every_other_member():
    """A top-1 cluster of 3 rows with 5 neighbours asked: n becomes a numpy integer (min with the cluster's size),
    which faiss's search refused with a TypeError and took the cluster stage down (found by a hostile pool run)."""
    from curation.cluster_units import neighbour_column

    emb = np.random.default_rng(9).standard_normal((5, 4)).astype(np.float32)
    out = neighbour_column(["a", "b", "c", "d", "e"], emb, np.array([0, 0, 0, 1, 2]), 5).to_pylist()
    assert [sorted(x) for x in out] == [["b", "c"], ["a", "c"], ["a", "b"], [], []]
    ids, _ = nearest_neighbours(emb, emb, np.int64(2), gpu="never")
    assert ids.shape == (5, 2)


def test_nearest_neighbours_rejects_n_beyond_the_base():
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="less self"):
        nearest_neighbours(x, x, 4)
    with pytest.raises(ValueError, match="same width"):
        nearest_neighbours(x, x[:, :3], 1)


# --- k-means -------------------------------------------------------------------------------------

def test_fit_centers_recovers_well_separated_blobs():
    rng = np.random.default_rng(0)
    x, truth = _blobs(rng)
    centers = fit_centers(x, ClusterConfig(num_centers=6, niter=20, seed=0, gpu="never"))
    assert centers.shape == (6, 16) and centers.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centers, axis=1), 1.0, atol=1e-5)
    labels, scores = assign_topk(x, centers, k=1)
    # Each true blob maps to exactly one center and each center to one blob.
    mapping = {t: set(labels[truth == t, 0]) for t in range(6)}
    assert all(len(found) == 1 for found in mapping.values())
    assert len(set().union(*mapping.values())) == 6
    assert scores.min() > 0.9


@pytest.mark.parametrize("method", ["flat", "two_level"])
def test_both_methods_recover_separated_blobs_far_above_random(method):
    x, truth = _blobs(np.random.default_rng(10), k=8, per=80, d=24)
    # Lloyd from a random init often settles with two centers in one blob; restarts keep the best objective
    cfg = _cpu(num_centers=8, method=method, niter=25, nredo=10, seed=0)
    centers = fit_centers(x, cfg)
    assert centers.shape == (8, 24)
    labels, _ = assign_topk(x, centers, 1, gpu="never")
    scores = cluster_agreement(truth, labels[:, 0], seed=0)
    assert scores["nmi"] > 0.99 and scores["purity"] > 0.99
    assert scores["nmi_random"] < 0.1 and scores["purity_random"] < 0.3


@pytest.mark.parametrize("method", ["flat", "two_level"])
def test_fit_centers_is_deterministic_with_seed(method):
    x, _ = _blobs(np.random.default_rng(3), k=8, per=40)
    cfg = ClusterConfig(num_centers=10, niter=10, seed=7, gpu="never", method=method)
    np.testing.assert_array_equal(fit_centers(x, cfg), fit_centers(x, cfg))
    assert not np.array_equal(fit_centers(x, cfg), fit_centers(x, dataclasses.replace(cfg, seed=8)))


def test_two_level_returns_exactly_k_centers_with_tiny_and_exactly_filled_cells():
    rng = np.random.default_rng(11)
    big, _ = _blobs(rng, k=3, per=200, d=8)
    tiny = l2_normalize(rng.standard_normal((4, 8))) * 5  # four isolated rows: cells too small for a share
    x = np.concatenate([big, tiny]).astype(np.float32)
    for k in (9, 30, 100, len(x)):  # len(x): every cell gets as many centers as rows
        cfg = _cpu(num_centers=k, method="two_level", coarse_cells=7, niter=5)
        centers = fit_centers(x, cfg)
        assert centers.shape == (k, 8) and np.isfinite(centers).all()
        np.testing.assert_allclose(np.linalg.norm(centers, axis=1), 1.0, atol=1e-5)


def test_fine_centers_handle_empty_tiny_and_exactly_filled_cells():
    x = l2_normalize(np.random.default_rng(20).standard_normal((306, 8)))
    cell_of = np.array([0] * 300 + [1] + [2] * 5)  # cell 3 is empty
    cfg = _cpu(num_centers=30, niter=5)
    # shares [29, 0, 1, 0]: the one-row cell gets none, cell 2 one center for its five rows
    np.testing.assert_array_equal(proportional_split(np.bincount(cell_of, minlength=4), 30), [29, 0, 1, 0])
    centers = clustering.fine_centers(x, cell_of, 4, cfg, gpu=False)
    assert centers.shape == (30, 8) and np.isfinite(centers).all()
    np.testing.assert_allclose(centers[29], l2_normalize(x[301:].mean(axis=0, keepdims=True))[0], atol=1e-5)
    # K = N: every cell holds exactly its share, and its rows are the centers
    every = clustering.fine_centers(x, cell_of, 4, dataclasses.replace(cfg, num_centers=306), gpu=False)
    np.testing.assert_allclose(every, x[np.argsort(cell_of, kind="stable")], atol=1e-6)


def test_proportional_split_hand_cases():
    np.testing.assert_array_equal(proportional_split(np.array([5, 0, 1, 1, 3]), 5), [2, 0, 1, 0, 2])
    np.testing.assert_array_equal(proportional_split(np.array([4, 4]), 8), [4, 4])
    shares = proportional_split(np.array([10**9, 3, 10**9 + 7]), 10**6)
    assert shares.sum() == 10**6 and shares[1] == 0
    sizes = np.random.default_rng(12).integers(0, 50, 200)
    for total in (1, 17, int(sizes.sum())):
        shares = proportional_split(sizes, total)
        assert shares.sum() == total and (shares <= sizes).all() and (shares >= 0).all()
    with pytest.raises(ValueError, match="all empty"):
        proportional_split(np.zeros(3, np.int64), 2)


class _RecordingKmeans(faiss.Kmeans):
    """faiss.Kmeans that records each instance's k and the coarse assignment two_level_clustering makes."""

    ks: list = []
    assignments: list = []

    def __init__(self, d, k, **kwargs):
        _RecordingKmeans.ks.append(int(k))
        super().__init__(d, k, **kwargs)

    def assign(self, x):
        distances, labels = super().assign(x)
        _RecordingKmeans.assignments.append(labels.copy())
        return distances, labels


def test_allotment_is_faiss_two_level_clusterings_own(monkeypatch):
    contrib = pytest.importorskip("faiss.contrib.clustering", reason="faiss.contrib.clustering not installed")
    rng = np.random.default_rng(13)
    means = l2_normalize(rng.standard_normal((30, 16)))
    x = l2_normalize(means[rng.integers(0, 30, 5000) ** 2 % 30] + 0.3 * rng.standard_normal((5000, 16)))
    _RecordingKmeans.ks, _RecordingKmeans.assignments = [], []
    monkeypatch.setattr(faiss, "Kmeans", _RecordingKmeans)
    contrib.two_level_clustering(x, 9, 250, spherical=True, seed=3)
    coarse, *fine = _RecordingKmeans.ks
    sizes = np.bincount(_RecordingKmeans.assignments[0], minlength=coarse)
    assert coarse == 9 and len(fine) == 9 and len(set(sizes)) > 3  # uneven cells: the rule is exercised
    np.testing.assert_array_equal(proportional_split(sizes, 250), fine)


def test_two_level_objective_close_to_faiss_two_level_and_to_flat():
    contrib = pytest.importorskip("faiss.contrib.clustering", reason="faiss.contrib.clustering not installed")
    rng = np.random.default_rng(14)
    means = l2_normalize(rng.standard_normal((50, 32)))
    x = l2_normalize(means[rng.integers(0, 50, 12_000)] + 0.2 * rng.standard_normal((12_000, 32)))
    cfg = _cpu(num_centers=300, niter=15, seed=0)
    ours = spherical_objective(x, fit_centers(x, dataclasses.replace(cfg, method="two_level")), gpu="never")
    flat = spherical_objective(x, fit_centers(x, cfg), gpu="never")
    theirs_centers, _ = contrib.two_level_clustering(x, coarse_cell_count(cfg), 300, spherical=True, seed=0)
    theirs = spherical_objective(x, theirs_centers, gpu="never")
    # measured: ours / theirs 1.001, ours / flat 0.993
    assert ours >= 0.99 * theirs and ours >= 0.98 * flat
    assert 0.5 < ours < 1.0


def test_fit_centers_rejects_fewer_points_than_centers():
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="num_centers=6"):
        fit_centers(x, ClusterConfig(num_centers=6, gpu="never"))


def test_fit_centers_rejects_bad_shapes_and_configs():
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="2-D"):
        fit_centers(x[0], _cpu(num_centers=2))
    with pytest.raises(ValueError, match="unknown cluster method"):
        fit_centers(x, _cpu(num_centers=2, method="three_level"))
    with pytest.raises(ValueError, match="sample_size=3 < num_centers=4"):
        fit_centers(x, _cpu(num_centers=4, sample_size=3))
    with pytest.raises(ValueError, match="unknown gpu mode"):
        fit_centers(x, ClusterConfig(num_centers=2, gpu="sometimes"))


# --- training sample -----------------------------------------------------------------------------

def test_sample_rows_is_seeded_stratified_and_capped():
    parts = [1000, 3000, 50, 0]
    cfg = _cpu(num_centers=10, max_points_per_centroid=100)  # cap 1000 of 4050 rows
    rows = sample_rows(parts, cfg)
    assert [len(r) for r in rows] == list(proportional_split(np.array(parts), 1000))
    for r, n in zip(rows, parts):
        assert r.dtype == np.int64 and (np.diff(r) > 0).all() and (r.size == 0 or 0 <= r.min() <= r.max() < n)
    assert all(np.array_equal(a, b) for a, b in zip(rows, sample_rows(parts, cfg)))
    other = sample_rows(parts, dataclasses.replace(cfg, seed=1))
    assert not np.array_equal(rows[1], other[1])
    assert sum(map(len, sample_rows(parts, dataclasses.replace(cfg, sample_size=300)))) == 300
    everything = sample_rows([20, 30], cfg)
    assert [r.tolist() for r in everything] == [list(range(20)), list(range(30))]
    assert training_sample_size(4050, cfg) == 1000 and training_sample_size(400, cfg) == 400


def test_fit_centers_trains_on_the_rows_a_driver_would_read():
    x, _ = _blobs(np.random.default_rng(15), k=5, per=100, d=8)
    cfg = _cpu(num_centers=5, niter=10, sample_size=120)
    (picked,) = sample_rows([len(x)], cfg)
    assert len(picked) == 120
    np.testing.assert_array_equal(fit_centers(x, cfg), fit_centers(x[picked], cfg))


# --- statistics ----------------------------------------------------------------------------------

def test_cluster_sizes_and_summary():
    sizes = cluster_sizes(np.array([0, 0, 2, 2, 2, 4]), 6)
    np.testing.assert_array_equal(sizes, [2, 0, 3, 0, 1, 0])
    assert empty_clusters(sizes) == 3
    summary = size_summary(sizes)
    assert (summary["min"], summary["median"], summary["max"], summary["empty"]) == (0.0, 0.5, 3.0, 3.0)
    assert summary["mean"] == 1.0 and summary["imbalance"] == pytest.approx(6 * 14 / 36)
    assert size_summary(np.full(4, 5))["imbalance"] == 1.0
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        cluster_sizes(np.array([0, 6]), 6)


def test_nmi_and_purity_hand_computed():
    true, pred = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])
    # I = .5 ln(.5/(.5*.75)) + .25 ln(.25/(.5*.75)) + .25 ln(.25/(.5*.25)); H(T) = ln 2; H(P) = H(.75, .25)
    mi = 0.5 * math.log(0.5 / 0.375) + 0.25 * math.log(0.25 / 0.375) + 0.25 * math.log(2.0)
    h_pred = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert nmi(true, pred) == pytest.approx(mi / ((math.log(2) + h_pred) / 2))
    assert purity(true, pred) == 0.75
    assert nmi(true, np.array([7, 7, 3, 3])) == pytest.approx(1.0) and purity(true, np.array([7, 7, 3, 3])) == 1.0
    assert nmi(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == pytest.approx(0.0, abs=1e-12)
    assert nmi(np.zeros(5), np.zeros(5)) == 1.0 and nmi(np.zeros(4), np.array([0, 1, 2, 3])) == 0.0
    assert purity(np.array([0, 1, 2, 3]), np.zeros(4)) == 0.25
    with pytest.raises(ValueError, match="must be equal"):
        nmi(np.zeros(3), np.zeros(4))


def test_nmi_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed (not a dependency)")
    rng = np.random.default_rng(16)
    true, pred = rng.integers(0, 7, 500), rng.integers(0, 11, 500)
    pred[:300] = true[:300]
    assert nmi(true, pred) == pytest.approx(metrics.normalized_mutual_info_score(true, pred), abs=1e-10)


def test_random_baseline_keeps_the_sizes_and_scores_lower():
    truth = np.repeat(np.arange(10), 30)
    result = cluster_agreement(truth, truth.copy(), seed=3)
    assert result["nmi"] == pytest.approx(1.0) and result["purity"] == 1.0
    assert result["nmi_random"] < 0.3 and result["purity_random"] < 0.4
    assert cluster_agreement(truth, truth, seed=3) == result  # seeded


# --- devices -------------------------------------------------------------------------------------

def test_gpu_modes():
    assert use_gpu("never") is False
    with pytest.raises(ValueError, match="unknown gpu mode"):
        use_gpu("sometimes")
    if faiss.get_num_gpus() == 0:
        assert use_gpu("auto") is False
        with pytest.raises(RuntimeError, match="no GPU"):
            use_gpu("always")


def test_gpu_wiring_sharded_for_kmeans_replicated_for_search(monkeypatch):
    """The GPU branches, run on the CPU: to_gpus stands in for the cloner and records its options."""
    calls = []

    def fake_to_gpus(index, fp16, shard):
        calls.append((type(index).__name__, fp16, shard))
        return index

    monkeypatch.setitem(GPU_MODES, "always", lambda: True)
    monkeypatch.setattr(clustering, "to_gpus", fake_to_gpus)
    x, _ = _blobs(np.random.default_rng(17), k=4, per=30, d=8)
    cfg = ClusterConfig(num_centers=4, gpu="always", fp16=True, niter=5)
    centers = fit_centers(x, cfg)
    assert calls == [("IndexFlatIP", True, True)]
    search_topk(center_index(centers, dataclasses.replace(cfg, top_k=2, assign="ivf", nlist=2)), x, 2)
    assert calls[-1] == ("IndexIVFFlat", True, False)
    start = len(calls)
    fit_centers(x, dataclasses.replace(cfg, method="two_level", num_centers=8))  # coarse, its assignment, cells
    assert calls[start:start + 2] == [("IndexFlatIP", True, True), ("IndexFlatIP", True, False)]
    assert len(calls) > start + 2 and all(call == ("IndexFlatIP", True, True) for call in calls[start + 2:])


@NO_GPU
def test_gpu_fit_fp16_recovers_blobs_and_matches_cpu_assignment():
    x, truth = _blobs(np.random.default_rng(10), k=8, per=80, d=24)
    for method in ("flat", "two_level"):
        cfg = ClusterConfig(num_centers=8, method=method, niter=25, nredo=10, seed=0, gpu="always", fp16=True)
        centers = fit_centers(x, cfg)
        labels, scores = assign_topk(x, centers, 3, gpu="always", fp16=True)
        cpu_labels, cpu_scores = assign_topk(x, centers, 3, gpu="never")
        assert nmi(truth, labels[:, 0]) > 0.9  # GPU k-means need not retrace the CPU's restarts exactly
        np.testing.assert_array_equal(labels[:, 0], cpu_labels[:, 0])
        np.testing.assert_allclose(scores, cpu_scores, atol=2e-3)  # float16 storage


@NO_GPU
def test_gpu_ivf_recall_and_neighbours():
    rng = np.random.default_rng(19)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    centers = fit_centers(x, ClusterConfig(num_centers=100, gpu="always"))
    exact, _ = assign_topk(x, centers, 8, gpu="never")
    found, _ = search_topk(center_index(centers, ClusterConfig(num_centers=100, assign="ivf", nprobe=40,
                                                               gpu="always", fp16=True)), x, 8)
    assert _recall(found, exact) >= 0.99  # 40 of 40 cells probed: exact up to float ties
    ids, _ = nearest_neighbours(x, x, 4, gpu="always")
    assert not (ids == np.arange(len(x))[:, None]).any()
    assert _recall(ids, nearest_neighbours(x, x, 4, gpu="never")[0]) >= 0.99


def test_center_index_holds_unit_centers():
    index = center_index(4 * np.eye(3, dtype=np.float32), _cpu(num_centers=3))
    assert isinstance(index, CenterIndex)
    np.testing.assert_allclose(index.centers, np.eye(3))


def test_auto_fits_two_level_from_a_hundred_thousand_centers():
    from curation.clustering import TWO_LEVEL_FROM, fit_method

    assert fit_method(ClusterConfig(num_centers=TWO_LEVEL_FROM - 1)) == "flat"
    assert fit_method(ClusterConfig(num_centers=TWO_LEVEL_FROM)) == "two_level"
    assert fit_method(ClusterConfig(num_centers=10, method="two_level")) == "two_level"
    assert fit_method(ClusterConfig(num_centers=10**6, method="flat")) == "flat"
