"""Tests of curation/embedding_filters.py: DataComp's CLIP-score and image-based filters (Gadre et al., 2023),
against hand-made embeddings and against short transcriptions of github.com/mlfoundations/datacomp
baselines/apply_filter.py (get_threshold, load_uids_with_clip_score_helper, get_centroid_ids_gpu,
image_filter_helper)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from curation.clustering import l2_normalize
from curation.embedding_filters import (
    ClipScoreConfig,
    ImageFilterConfig,
    clip_score_keep,
    clip_score_threshold,
    clip_scores,
    image_based_keep,
    require_pretrained,
)

E = np.eye(4, dtype=np.float32)


def datacomp_fraction_keep(scores: np.ndarray, fraction: float) -> np.ndarray:
    """apply_filter.py get_threshold (n = int(len * fraction); -np.sort(-values)[n]) then the helper's >=."""
    n = int(len(scores) * fraction)
    threshold = -np.sort(-scores)[n]
    return scores >= threshold


def datacomp_image_keep(features: np.ndarray, centroids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """apply_filter.py get_centroid_ids_gpu (argmax of einsum ik,jk->ij) for the targets and the pool, then
    image_filter_helper's grouping of pool rows by centroid, gathered for each unique target centroid."""
    target_ids = np.unique(np.argmax(np.einsum("ik,jk->ij", targets, centroids), axis=1))
    pool_ids = np.argmax(np.einsum("ik,jk->ij", features, centroids), axis=1)
    by_centroid: dict[int, list[int]] = {}
    for row, label in enumerate(pool_ids.tolist()):
        by_centroid.setdefault(label, []).append(row)
    rows = [r for i in target_ids.tolist() if i in by_centroid for r in by_centroid[i]]
    keep = np.zeros(len(features), dtype=bool)
    keep[rows] = True
    return keep


def test_clip_scores_are_cosines_of_normalised_rows():
    """Cosine of image and text rows whatever their norms (DataComp's clip_*_similarity_score columns)."""
    image = np.array([[1, 0], [0, 2], [3, 4]], dtype=np.float32)
    text = np.array([[2, 0], [1, 1], [-3, -4]], dtype=np.float32)
    np.testing.assert_allclose(clip_scores(image, text), [1.0, np.sqrt(0.5), -1.0], atol=1e-6)
    with pytest.raises(ValueError, match="must be"):
        clip_scores(image, text[:2])


def test_threshold_keeps_scores_at_or_above_it():
    """load_uids_with_clip_score_helper keeps df[key] >= threshold: a score equal to it stays."""
    scores = np.array([0.2, 0.28, 0.3, 0.279], dtype=np.float32)
    keep = clip_score_keep(scores, ClipScoreConfig(enabled=True, threshold=float(np.float32(0.28))))
    assert keep.tolist() == [False, True, True, False]


def test_fraction_keeps_one_more_than_n_as_datacomp_does():
    """get_threshold takes the score at index int(N * fraction) of the descending order: with 10 distinct scores,
    fraction 0.3 keeps 4 (the top 3 and the threshold's own sample)."""
    scores = np.linspace(0.1, 0.4, 10)
    keep = clip_score_keep(scores, ClipScoreConfig(enabled=True, fraction=0.3))
    assert np.flatnonzero(keep).tolist() == [6, 7, 8, 9]
    assert clip_score_threshold(scores, 0.3) == scores[6]


def test_fraction_keeps_every_sample_tied_with_the_threshold():
    """Ties at the threshold are all kept (>=): top 20% of five scores with three tied at 0.3 keeps four."""
    scores = np.array([0.1, 0.3, 0.5, 0.3, 0.3])
    keep = clip_score_keep(scores, ClipScoreConfig(enabled=True, fraction=0.2))
    assert keep.tolist() == [False, True, True, True, True]


def test_fraction_edge_cases_zero_and_one():
    """fraction 0 is DataComp's index 0: only the top score (and its ties); fraction 1 keeps all, where DataComp's
    get_threshold would index past the end; an empty pool keeps nothing."""
    scores = np.array([0.3, 0.9, 0.1, 0.9])
    assert clip_score_keep(scores, ClipScoreConfig(fraction=0.0)).tolist() == [False, True, False, True]
    assert clip_score_keep(scores, ClipScoreConfig(fraction=1.0)).all()
    with pytest.raises(IndexError):
        datacomp_fraction_keep(scores, 1.0)  # the difference, documented in the module
    assert clip_score_keep(np.zeros(0), ClipScoreConfig(fraction=0.5)).shape == (0,)


def test_fraction_matches_datacomp_get_threshold_on_random_pools():
    """Random pools, with ties from rounding, for fractions in [0, 1): the same mask as the transcription."""
    rng = np.random.default_rng(0)
    for n in (1, 7, 100, 1001):
        scores = np.round(rng.normal(0.25, 0.05, n), 2).astype(np.float32)  # rounding makes ties
        for fraction in (0.0, 0.1, 0.25, 0.3, 0.5, 0.9, 0.999):
            ours = clip_score_keep(scores, ClipScoreConfig(fraction=fraction))
            assert ours.tolist() == datacomp_fraction_keep(scores, fraction).tolist(), (n, fraction)


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": 0.3, "fraction": 0.3}, "not both"),
    ({"enabled": True}, "threshold or a fraction"),
    ({"fraction": 1.5}, r"\[0, 1\]"),
    ({"fraction": -0.1}, r"\[0, 1\]"),
])
def test_clip_score_config_errors(kwargs, message):
    """baselines.py check_args: exactly one of --threshold and --fraction."""
    with pytest.raises(ValueError, match=message):
        ClipScoreConfig(**kwargs)


def test_clip_score_keep_without_a_rule_raises():
    with pytest.raises(ValueError, match="neither threshold nor fraction"):
        clip_score_keep(np.array([0.3]), ClipScoreConfig())


def test_require_pretrained_names_the_setting():
    """The bootstrap model (no checkpoint) must not score or cluster the pool: the error says what to set."""
    for missing in (None, ""):
        with pytest.raises(ValueError, match="set embed.checkpoint"):
            require_pretrained(missing, "the CLIP-score filter")
    assert require_pretrained("/models/ViT-B-32.pt") == "/models/ViT-B-32.pt"


def test_image_based_keeps_the_clusters_nearest_the_targets():
    """Four axis clusters; targets near e1 and e2: samples labelled 1 or 2 stay (image_filter_helper), and with
    nearest=2 a target between e1 and e3 adds cluster 3."""
    labels = np.array([0, 1, 2, 3, 0, 2])
    targets = l2_normalize(np.array([[0.1, 1, 0, 0], [0, 0.1, 1, 0.05]]))
    keep, kept = image_based_keep(labels, E, targets, ImageFilterConfig(gpu="never"))
    assert keep.tolist() == [False, True, True, False, False, True]
    assert kept.tolist() == [1, 2]
    between = l2_normalize(np.array([[0, 1, 0, 0.9]]))
    keep2, kept2 = image_based_keep(labels, E, between, ImageFilterConfig(nearest=2, gpu="never"))
    assert kept2.tolist() == [1, 3] and keep2.tolist() == [False, True, False, True, False, False]


def test_image_based_uses_the_top1_of_topk_labels():
    """(N, k) multi-labels: the pool sample's cluster is column 0, its nearest center, as DataComp assigns one."""
    labels = np.array([[1, 0], [0, 1], [2, 1]])
    keep, _ = image_based_keep(labels, E, E[1:2], ImageFilterConfig(gpu="never"))
    assert keep.tolist() == [True, False, False]


def test_image_based_matches_datacomp_on_random_clusters():
    """Random pool, unit centers and targets: the same kept rows as the transcription of get_centroid_ids_gpu and
    image_filter_helper (argmax of raw dot products, which cosine equals for unit centers)."""
    rng = np.random.default_rng(1)
    centers = l2_normalize(rng.standard_normal((30, 12)))
    pool = l2_normalize(rng.standard_normal((500, 12)))
    targets = l2_normalize(centers[rng.choice(30, 8)] + 0.3 * rng.standard_normal((8, 12)))
    labels = np.argmax(pool @ centers.T, axis=1)
    keep, kept = image_based_keep(labels, centers, targets, ImageFilterConfig(gpu="never"))
    assert keep.tolist() == datacomp_image_keep(pool, centers, targets).tolist()
    assert 0 < keep.sum() < len(pool) and 0 < len(kept) <= 8


def test_image_filter_config_and_input_errors():
    with pytest.raises(ValueError, match="needs target"):
        ImageFilterConfig(enabled=True)
    with pytest.raises(ValueError, match="nearest must be >= 1"):
        dataclasses.replace(ImageFilterConfig(), nearest=0)
    cfg = ImageFilterConfig(gpu="never")
    with pytest.raises(ValueError, match="at least one target"):
        image_based_keep(np.array([0, 1]), E, np.zeros((0, 4)), cfg)
    with pytest.raises(ValueError, match="number of centers"):
        image_based_keep(np.array([0, 1]), E, E[:1], dataclasses.replace(cfg, nearest=5))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        image_based_keep(np.array([0, 4]), E, E[:1], cfg)
    with pytest.raises(ValueError, match="same width"):
        image_based_keep(np.array([0, 1]), E, np.eye(3, dtype=np.float32)[:1], cfg)
