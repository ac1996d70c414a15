"""Tests of eval/metrics.py against tiny hand-computed examples."""

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval.metrics import (
    choice_accuracy,
    class_embeddings,
    classification_scores,
    knn_predict,
    linear_probe_logits,
    mean_per_class_recall,
    normalize,
    recall_at_k,
    topk_accuracy,
    zeroshot_top1,
)


def knn_top1(train, train_labels, test, test_labels, **kw) -> float:
    return float(np.mean(knn_predict(train, train_labels, test, **kw) == test_labels))


def linear_probe_top1(train, train_labels, test, test_labels, seed, validation=None) -> float:
    logits, _ = linear_probe_logits(train, train_labels, test, int(max(train_labels.max(), test_labels.max())) + 1,
                                    seed=seed, validation=validation)
    return float(np.mean(logits.argmax(axis=1) == test_labels))


# The pairwise forms the suite used before eval took datasets: one text per image (aligned by row) and one
# perturbed caption per image. Kept here, over recall_at_k and choice_accuracy, for the hand-computed cases.
def retrieval_recall(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall@k both ways for pairs aligned by row: {"i2t_r1", "t2i_r1", "i2t_r5", ...}.

    `groups` (N,) optionally marks rows whose texts are interchangeable (e.g. identical captions):
    any text of an image's group then counts as a hit for it, and vice versa. Default: row i only.
    """
    if len(image_emb) != len(text_emb):
        raise ValueError(f"retrieval pairs must align: {len(image_emb)} images, {len(text_emb)} texts")
    groups = np.arange(len(image_emb)) if groups is None else np.asarray(groups)
    return recall_at_k(image_emb, text_emb, groups[:, None] == groups[None, :], ks)  # (N, N), symmetric


def compositional_accuracy(image_emb: np.ndarray, pos_emb: np.ndarray, neg_emb: np.ndarray) -> float:
    """ARO-style: fraction of images more similar to the true caption than to its perturbation.

    A tie counts as a failure: a bag-of-words encoder that cannot tell the two apart scores 0.
    """
    return choice_accuracy(image_emb, [pos_emb, neg_emb], np.zeros(len(image_emb), dtype=np.int64))


def test_zeroshot_identity_is_perfect_and_one_wrong_gives_two_thirds():
    eye = np.eye(3, dtype=np.float32)
    assert zeroshot_top1(eye, np.array([0, 1, 2]), eye) == 1.0
    assert zeroshot_top1(eye, np.array([0, 1, 1]), eye) == pytest.approx(2 / 3)
    # Scale does not matter: embeddings are compared by cosine.
    assert zeroshot_top1(5 * eye, np.array([0, 1, 2]), 0.1 * eye) == 1.0


def test_class_embeddings_average_normalised_templates_then_renormalise():
    table = {"a": [1.0, 0.0], "x a": [0.0, 10.0], "b": [0.0, 2.0], "x b": [0.0, 1.0]}
    calls = []

    def encode(prompts):
        calls.append(list(prompts))
        return np.array([table[p] for p in prompts])

    emb = class_embeddings(encode, ["a", "b"], ["{}", "x {}"])
    np.testing.assert_allclose(emb, [[2 ** -0.5, 2 ** -0.5], [0.0, 1.0]], atol=1e-6)
    assert calls == [["a", "x a"], ["b", "x b"]]
    with pytest.raises(ValueError):
        class_embeddings(encode, ["a"], [])


def test_retrieval_identity_perfect_and_shuffled_text_zero():
    rng = np.random.default_rng(0)
    emb = normalize(rng.standard_normal((50, 64)))
    perfect = retrieval_recall(emb, emb)
    assert set(perfect) == {f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    assert all(v == 1.0 for v in perfect.values())
    shuffled = retrieval_recall(emb, np.roll(emb, 1, axis=0), ks=(1,))
    assert shuffled == {"i2t_r1": 0.0, "t2i_r1": 0.0}


def test_retrieval_one_of_three_wrong():
    images = np.eye(3, dtype=np.float32)
    texts = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0.1]], dtype=np.float32)  # text 2 sits nearer image 1
    r = retrieval_recall(images, texts, ks=(1, 2))
    # image 1 ranks text 1 (cos 1.0) above text 2 (cos 0.995): fine; image 2 finds text 2 first: fine.
    assert r["i2t_r1"] == 1.0
    # text 2 (0, 1, .1) prefers image 1 over image 2: one of three misses at k=1, found at k=2.
    assert r["t2i_r1"] == pytest.approx(2 / 3) and r["t2i_r2"] == 1.0


def test_retrieval_collapsed_encoder_gets_no_credit_for_ties():
    const = np.ones((10, 4), dtype=np.float32)
    r = retrieval_recall(const, const, ks=(1, 10))
    assert r["i2t_r1"] == 0.0 and r["t2i_r1"] == 0.0
    assert r["i2t_r10"] == 1.0  # every rank is 9, inside the top 10


def test_retrieval_groups_make_identical_captions_interchangeable():
    images = np.eye(3, dtype=np.float32)
    texts = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)  # captions 0 and 1 identical
    plain = retrieval_recall(images, texts, ks=(1,))
    grouped = retrieval_recall(images, texts, ks=(1,), groups=np.array([0, 0, 1]))
    assert plain["i2t_r1"] == pytest.approx(1 / 3)  # image 0 ties texts 0/1; image 1 matches neither
    assert grouped["t2i_r1"] == 1.0  # texts 0 and 1 both find image 0, a correct image for each


def test_compositional_one_of_three_wrong_and_ties_fail():
    images = np.eye(3, dtype=np.float32)
    pos = np.array([[1, 0, 0], [0, 1, 0], [0.5, 0, 1]], dtype=np.float32)
    neg = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0.2]], dtype=np.float32)  # third: neg is closer
    assert compositional_accuracy(images, pos, neg) == pytest.approx(2 / 3)
    assert compositional_accuracy(images, pos, pos) == 0.0


def test_knn_votes_are_similarity_weighted():
    train = np.array([[1.0, 0.0], [0.9, np.sqrt(1 - 0.81)], [0.9, -np.sqrt(1 - 0.81)]])
    labels = np.array([0, 1, 1])
    test = np.array([[1.0, 0.0]])
    # exp(1/0.07) > 2 exp(0.9/0.07): the single closest neighbour outvotes the majority.
    assert knn_top1(train, labels, test, np.array([0]), k=3) == 1.0
    # At temperature 1, 2 e^0.9 > e^1: the majority wins.
    assert knn_top1(train, labels, test, np.array([1]), k=3, temperature=1.0) == 1.0


def _blobs(rng, labels, d=16, noise=0.2):
    means = normalize(rng.standard_normal((labels.max() + 1, d)))
    return means[labels] + noise * rng.standard_normal((len(labels), d))


def test_knn_separable_blobs_and_batching():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 20)
    x = _blobs(rng, y)
    assert knn_top1(x[::2], y[::2], x[1::2], y[1::2], k=5, batch_size=7) == 1.0


def test_linear_probe_separable_deterministic_and_classes_absent_from_train():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 30)
    x = _blobs(rng, y, noise=0.1)
    args = (x[::2], y[::2], x[1::2], y[1::2])
    acc = linear_probe_top1(*args, seed=0)
    assert acc == 1.0
    assert linear_probe_top1(*args, seed=0) == acc
    # a class the probe never saw gets logits but is never predicted over the classes it knows
    logits, wd = linear_probe_logits(x[::2], y[::2], x[1::2], num_classes=6, seed=0)
    assert logits.shape == (60, 6) and set(logits.argmax(axis=1)) <= {0, 1, 2, 3} and wd in (1e-4, 1e-3, 1e-2)


def test_linear_probe_beats_chance_only_with_signal():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(4), 40)
    x = rng.standard_normal((160, 16))  # no signal
    acc = linear_probe_top1(x[::2], y[::2], x[1::2], y[1::2], seed=0)
    assert acc < 0.5


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), d=st.integers(1, 6), seed=st.integers(0, 10_000), dup=st.booleans())
def test_retrieval_recall_is_monotone_in_k_and_bounded(n, d, seed, dup):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, d))
    texts = rng.integers(-1, 2, (n, d)).astype(float) if dup else rng.standard_normal((n, d))
    r = retrieval_recall(images, texts, ks=(1, 2, 5, n))
    for direction in ("i2t", "t2i"):
        values = [r[f"{direction}_r{k}"] for k in (1, 2, 5)]
        assert all(0.0 <= v <= 1.0 for v in values) and values == sorted(values)
        assert r[f"{direction}_r{n}"] == 1.0  # with k = N every correct item is inside the top k


def test_recall_at_k_with_several_texts_per_image():
    images = np.eye(3, dtype=np.float32)
    texts = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1], [0, 0.2, 1]], dtype=np.float32)
    correct = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=bool)  # (3 images, 5 texts)
    assert recall_at_k(images, texts, correct, ks=(1,)) == {"i2t_r1": 1.0, "t2i_r1": 1.0}
    with pytest.raises(ValueError, match="correct"):
        recall_at_k(images, texts, correct[:, :4])


@given(n=st.integers(2, 12), seed=st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_recall_at_k_on_aligned_pairs_is_retrieval_recall(n, seed):
    """Parity: the general matrix form and the aligned-pairs form give the same figures."""
    rng = np.random.default_rng(seed)
    images, texts = rng.standard_normal((n, 4)), rng.standard_normal((n, 4))
    groups = rng.integers(0, max(1, n // 2), n)
    assert recall_at_k(images, texts, groups[:, None] == groups[None, :], (1, 3)) == \
        retrieval_recall(images, texts, (1, 3), groups=groups)


@given(n=st.integers(1, 20), seed=st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_choice_accuracy_of_two_choices_is_the_two_way_accuracy(n, seed):
    rng = np.random.default_rng(seed)
    images, pos, neg = (rng.standard_normal((n, 5)).astype(np.float32) for _ in range(3))
    unit = normalize(images)
    plain = float(np.mean(np.sum(unit * normalize(pos), 1) > np.sum(unit * normalize(neg), 1)))
    assert choice_accuracy(images, [pos, neg], np.zeros(n, dtype=np.int64)) == plain
    assert compositional_accuracy(images, pos, neg) == plain
    # the true caption may sit at any index: swapping the columns and the answers changes nothing
    assert choice_accuracy(images, [neg, pos], np.ones(n, dtype=np.int64)) == plain


def test_choice_accuracy_needs_the_true_caption_to_beat_every_other():
    images = np.eye(2, dtype=np.float32)
    choices = [np.eye(2), np.eye(2)[::-1], np.eye(2)]  # choice 2 ties choice 0 for both images
    assert choice_accuracy(images, choices, np.array([0, 0])) == 0.0
    assert choice_accuracy(images, choices[:2], np.array([0, 1])) == 0.5


def test_linear_probe_with_a_validation_split():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    x = _blobs(rng, labels)
    train, val, test = np.arange(60) % 3 == 0, np.arange(60) % 3 == 1, np.arange(60) % 3 == 2
    acc = linear_probe_top1(x[train], labels[train], x[test], labels[test], seed=0,
                            validation=(x[val], labels[val]))
    assert acc == 1.0


def test_topk_accuracy_by_hand_ties_go_to_the_lower_class():
    logits = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.2], [0.0, 0.1, 0.9]])
    labels = np.array([2, 1, 2])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)  # row 1 ties 0/1: argmax says 0
    assert topk_accuracy(logits, labels, 2) == 1.0
    assert topk_accuracy(logits, labels, 3) == 1.0


def test_mean_per_class_recall_is_balanced_accuracy():
    # class 0: 3 rows, 2 right; class 1: 1 row, right; class 2 only predicted, never a label: not averaged
    predicted, labels = np.array([0, 0, 2, 1]), np.array([0, 0, 0, 1])
    assert mean_per_class_recall(predicted, labels) == pytest.approx((2 / 3 + 1) / 2)
    assert mean_per_class_recall(np.zeros(4, int), np.zeros(4, int)) == 1.0  # one class


def test_classification_scores_degenerate_inputs():
    # all-equal logits: every row predicts class 0, top-5 of five classes holds every label
    out = classification_scores(np.zeros((5, 5)), np.arange(5))
    assert out == {"acc1": 0.2, "acc5": 1.0, "mean_per_class_recall": 0.2}
    assert classification_scores(np.zeros((2, 1)), np.zeros(2, int))["acc5"] is None  # one class
    one_each = classification_scores(np.eye(6), np.arange(6))  # one sample per class
    assert one_each["acc1"] == 1.0 and one_each["mean_per_class_recall"] == 1.0
    with pytest.raises(ValueError, match="no rows"):
        classification_scores(np.zeros((0, 3)), np.zeros(0, int))


def test_knn_and_probe_with_one_sample_per_class_and_equal_features():
    x = np.eye(3)
    assert knn_top1(x, np.arange(3), x, np.arange(3), k=1) == 1.0
    same = np.ones((6, 3))
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert knn_top1(same, labels, same, labels, k=3) == pytest.approx(1 / 3)  # a tied vote goes to label 0
    logits, _ = linear_probe_logits(same, labels, same, 3, seed=0)
    assert np.all(np.isfinite(logits))
