"""Tests of eval/suite.py with deterministic fake encoders (no model, no weights)."""

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from eval.suite import EvalConfig, encode_batched, run_suite, stratified_split, take_per_class

DIM = 64
CLASSES = ["circle", "square", "star", "heart", "cross"]
COLORS = ["red", "blue", "green"]


def _word_vector(word: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(DIM)


def bag_of_words_text(texts):
    """A hashing bag-of-words: word order is invisible to it, as ARO says CLIP's often is."""
    return np.stack([sum(_word_vector(w) for w in t.lower().strip(".").split()) for t in texts])


def bag_of_words_image(images):
    """Fake 'images' are their scene descriptions as bytes, embedded by the same bag of words."""
    return bag_of_words_text([b.decode() for b in images])


def hash_image(images):
    """An encoder that knows nothing: each image's bytes hash to an unrelated vector."""
    return np.stack([_word_vector(b.hex()) for b in images])


def _sets(per_class: int = 6) -> dict[str, pa.Table]:
    labels = [c for c in range(len(CLASSES)) for _ in range(per_class)]
    scenes = [f"{COLORS[i % 3]} {CLASSES[c]}" for i, c in enumerate(labels)]
    classification = pa.table({
        "image": pa.array([s.encode() for s in scenes], pa.binary()),
        "label": labels, "classname": [CLASSES[c] for c in labels],
    })
    pairs = [f"{COLORS[i % 3]} {CLASSES[i % 5]} left of {CLASSES[(i + 1) % 5]}" for i in range(15)]
    retrieval = pa.table({"image": pa.array([p.encode() for p in pairs], pa.binary()), "caption": pairs})
    pos = [f"{CLASSES[i % 5]} left of {CLASSES[(i + 2) % 5]}" for i in range(10)]
    neg = [f"{CLASSES[(i + 2) % 5]} left of {CLASSES[i % 5]}" for i in range(10)]
    attr_pos = [f"red {CLASSES[i % 5]} and blue {CLASSES[(i + 1) % 5]}" for i in range(10)]
    attr_neg = [f"blue {CLASSES[i % 5]} and green {CLASSES[(i + 1) % 5]}" for i in range(10)]
    compositional = pa.table({
        "image": pa.array([p.encode() for p in pos + attr_pos], pa.binary()),
        "positive": pos + attr_pos, "negative": neg + attr_neg,
        "kind": ["relation"] * 10 + ["attribute"] * 10,
    })
    return {"classification": classification, "retrieval": retrieval, "compositional": compositional}


CFG = EvalConfig(per_class=6, retrieval_pairs=15, compositional_pairs=20, batch_size=4)
RATES = ["zeroshot_top1", "knn_top1", "linear_probe_top1", "compositional_acc"] + [
    f"retrieval_{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]


def test_run_suite_returns_every_key_in_range():
    out = run_suite(bag_of_words_image, bag_of_words_text, _sets(), CLASSES, CFG)
    assert set(RATES) <= set(out)
    assert all(0.0 <= out[key] <= 1.0 for key in RATES)
    assert out["num_classes"] == 5 and out["chance"] == pytest.approx(0.2)
    assert out["num_zeroshot_images"] == 30 and out["num_retrieval_pairs"] == 15
    assert set(out["compositional_by_kind"]) == {"relation", "attribute"}


def test_bag_of_words_model_reads_classes_but_not_order():
    out = run_suite(bag_of_words_image, bag_of_words_text, _sets(), CLASSES, CFG)
    assert out["zeroshot_top1"] == 1.0
    # Colour words weigh as much as class words here, so neighbours of another class can win.
    assert out["knn_top1"] > 3 * out["chance"] and out["linear_probe_top1"] > 3 * out["chance"]
    assert out["retrieval_i2t_r1"] == 1.0 and out["retrieval_t2i_r1"] == 1.0
    # Swapped relations have the same words: a bag of words ties, and ties count as failures.
    assert out["compositional_by_kind"]["relation"] == 0.0
    # A changed colour word is visible to it.
    assert out["compositional_by_kind"]["attribute"] == 1.0
    assert out["compositional_acc"] == pytest.approx(0.5)


def test_uninformed_image_encoder_scores_low():
    out = run_suite(hash_image, bag_of_words_text, _sets(), CLASSES, CFG)
    assert out["zeroshot_top1"] < 0.5 and out["retrieval_i2t_r1"] < 0.5
    assert "compositional_acc" in out


def test_compositional_set_is_optional():
    sets = _sets()
    del sets["compositional"]
    out = run_suite(bag_of_words_image, bag_of_words_text, sets, CLASSES, CFG)
    assert "compositional_acc" not in out and "zeroshot_top1" in out


def test_suite_caps_per_class_and_pairs():
    cfg = EvalConfig(per_class=2, retrieval_pairs=7, compositional_pairs=5, batch_size=3)
    out = run_suite(bag_of_words_image, bag_of_words_text, _sets(), CLASSES, cfg)
    assert out["num_zeroshot_images"] == 10 and out["num_retrieval_pairs"] == 7
    assert out["num_compositional_pairs"] == 5


def test_encode_batched_normalises_and_keeps_order():
    calls = []

    def enc(items):
        calls.append(len(items))
        return np.array([[float(i), 1.0] for i in items])

    out = encode_batched(enc, [0, 1, 2, 3, 4], batch_size=2)
    assert calls == [2, 2, 1]
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[3], np.array([3.0, 1.0]) / np.sqrt(10), rtol=1e-6)


def test_take_per_class_and_stratified_split():
    labels = np.array([0, 1, 0, 0, 1, 2, 0])
    np.testing.assert_array_equal(take_per_class(labels, 2), [0, 1, 2, 4, 5])
    labels = np.repeat(np.arange(3), 4)
    train, test = stratified_split(labels, 0.5, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 12
    assert all(np.sum(labels[train] == c) == 2 for c in range(3))
    again = stratified_split(labels, 0.5, seed=0)
    np.testing.assert_array_equal(train, again[0])


def test_labels_must_index_classnames():
    sets = _sets()
    with pytest.raises(ValueError, match="classnames"):
        run_suite(bag_of_words_image, bag_of_words_text, sets, CLASSES[:3], CFG)
