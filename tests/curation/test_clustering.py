"""Tests of curation/clustering.py: MLCD spherical k-means centers and top-k multi-labels."""

import numpy as np
import pytest

from curation.clustering import ClusterConfig, assign_topk, fit_centers, l2_normalize, use_gpu


def _blobs(rng: np.random.Generator, k: int = 6, per: int = 60, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    means = l2_normalize(rng.standard_normal((k, d)))
    labels = np.repeat(np.arange(k), per)
    x = means[labels] + 0.05 * rng.standard_normal((k * per, d)).astype(np.float32)
    return x.astype(np.float32), labels


def _numpy_topk(x: np.ndarray, centers: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = l2_normalize(x) @ l2_normalize(centers).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


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


def test_fit_centers_is_deterministic_with_seed():
    x, _ = _blobs(np.random.default_rng(3), k=8, per=40)
    cfg = ClusterConfig(num_centers=10, niter=10, seed=7, gpu="never")
    np.testing.assert_array_equal(fit_centers(x, cfg), fit_centers(x, cfg))


def test_fit_centers_rejects_fewer_points_than_centers():
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="num_centers=6"):
        fit_centers(x, ClusterConfig(num_centers=6, gpu="never"))


def test_assign_topk_rejects_k_larger_than_centers():
    x = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="number of centers"):
        assign_topk(x, np.eye(4, dtype=np.float32)[:2], k=3)


def test_gpu_modes():
    assert use_gpu("never") is False
    with pytest.raises(ValueError, match="unknown gpu mode"):
        use_gpu("sometimes")
    import faiss

    if faiss.get_num_gpus() == 0:
        assert use_gpu("auto") is False
        with pytest.raises(RuntimeError, match="no GPU"):
            use_gpu("always")
