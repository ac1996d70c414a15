"""Tests of eval/suite.py with deterministic fake encoders (no model, no weights)."""

import hashlib

import numpy as np
import pytest

from eval.config import EvalConfig
from eval.datasets import ClassificationSet, CompositionalSet, RetrievalSet, stratified_splits
from eval.suite import encode_batched, run_suite

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


def _sets(per_class: int = 6, classnames=CLASSES) -> dict:
    labels = np.array([c for c in range(len(CLASSES)) for _ in range(per_class)])
    scenes = [f"{COLORS[i % 3]} {CLASSES[c]}" for i, c in enumerate(labels)]
    classification = ClassificationSet(
        images=[s.encode() for s in scenes], labels=labels, classnames=tuple(classnames),
        templates=EvalConfig().synthetic.templates, splits=stratified_splits(labels, 0.5, seed=0))
    pairs = [f"{COLORS[i % 3]} {CLASSES[i % 5]} left of {CLASSES[(i + 1) % 5]}" for i in range(15)]
    retrieval = RetrievalSet(images=[p.encode() for p in pairs], captions=tuple((p,) for p in pairs))
    pos = [f"{CLASSES[i % 5]} left of {CLASSES[(i + 2) % 5]}" for i in range(10)]
    neg = [f"{CLASSES[(i + 2) % 5]} left of {CLASSES[i % 5]}" for i in range(10)]
    attr_pos = [f"red {CLASSES[i % 5]} and blue {CLASSES[(i + 1) % 5]}" for i in range(10)]
    attr_neg = [f"blue {CLASSES[i % 5]} and green {CLASSES[(i + 1) % 5]}" for i in range(10)]
    compositional = CompositionalSet(
        images=[p.encode() for p in pos + attr_pos], choices=tuple(zip(pos + attr_pos, neg + attr_neg)),
        answers=np.zeros(20, dtype=np.int64), kinds=("relation",) * 10 + ("attribute",) * 10)
    return {"classification": classification, "retrieval": retrieval, "compositional": compositional}


def _all(sets: dict) -> list:
    return list(sets.values())


CFG = EvalConfig(batch_size=4)
RATES = ["zeroshot_top1", "knn_top1", "linear_probe_top1", "compositional_acc"] + [
    f"retrieval_{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]


def test_run_suite_returns_every_key_in_range():
    out = run_suite(bag_of_words_image, bag_of_words_text, _all(_sets()), CFG)
    assert set(RATES) <= set(out)
    assert all(0.0 <= out[key] <= 1.0 for key in RATES)
    assert out["num_classes"] == 5 and out["chance"] == pytest.approx(0.2)
    assert out["num_zeroshot_images"] == 30 and out["num_retrieval_pairs"] == 15
    assert set(out["compositional_by_kind"]) == {"relation", "attribute"}


def test_bag_of_words_model_reads_classes_but_not_order():
    out = run_suite(bag_of_words_image, bag_of_words_text, _all(_sets()), CFG)
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
    out = run_suite(hash_image, bag_of_words_text, _all(_sets()), CFG)
    assert out["zeroshot_top1"] < 0.5 and out["retrieval_i2t_r1"] < 0.5
    assert "compositional_acc" in out


def test_compositional_set_is_optional():
    sets = _sets()
    del sets["compositional"]
    out = run_suite(bag_of_words_image, bag_of_words_text, _all(sets), CFG)
    assert "compositional_acc" not in out and "zeroshot_top1" in out


def test_each_kind_of_set_is_scored_alone():
    sets = _sets()
    out = run_suite(bag_of_words_image, bag_of_words_text, [sets["retrieval"]], CFG)
    assert out["num_retrieval_pairs"] == 15 and "zeroshot_top1" not in out
    out = run_suite(bag_of_words_image, bag_of_words_text, [sets["compositional"]], CFG)
    assert out["num_compositional_pairs"] == 20 and "retrieval_i2t_r1" not in out
    with pytest.raises(ValueError, match="one dataset per kind"):
        run_suite(bag_of_words_image, bag_of_words_text, [sets["retrieval"], sets["retrieval"]], CFG)


def test_several_captions_per_image_each_count_as_hits():
    """Two captions per image: an image is a hit when either ranks first, and each caption finds its image."""
    pairs = [f"{COLORS[i % 3]} {CLASSES[i % 5]}" for i in range(5)]
    captions = tuple((p, f"a drawing of {p}") for p in pairs)
    out = run_suite(bag_of_words_image, bag_of_words_text,
                    [RetrievalSet(images=[p.encode() for p in pairs], captions=captions)], CFG)
    assert out["retrieval_i2t_r1"] == 1.0 and out["retrieval_t2i_r1"] == 1.0
    assert out["num_retrieval_pairs"] == 5


def test_the_probe_uses_a_given_validation_split():
    sets = _sets()
    cls = sets["classification"]
    train, test = cls.splits["train"], cls.splits["test"]
    with_val = ClassificationSet(images=cls.images, labels=cls.labels, classnames=cls.classnames,
                                 templates=cls.templates, splits={"train": train[::2], "validation": train[1::2],
                                                                  "test": test})
    out = run_suite(bag_of_words_image, bag_of_words_text, [with_val], CFG)
    assert 0.0 <= out["linear_probe_top1"] <= 1.0 and out["num_zeroshot_images"] == 30


def test_encode_batched_normalises_and_keeps_order():
    calls = []

    def enc(items):
        calls.append(len(items))
        return np.array([[float(i), 1.0] for i in items])

    out = encode_batched(enc, [0, 1, 2, 3, 4], batch_size=2)
    assert calls == [2, 2, 1]
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[3], np.array([3.0, 1.0]) / np.sqrt(10), rtol=1e-6)


def test_stratified_splits():
    labels = np.repeat(np.arange(3), 4)
    splits = stratified_splits(labels, 0.5, seed=0)
    train, test = splits["train"], splits["test"]
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 12
    assert all(np.sum(labels[train] == c) == 2 for c in range(3))
    np.testing.assert_array_equal(train, stratified_splits(labels, 0.5, seed=0)["train"])


def test_datasets_check_their_shape():
    with pytest.raises(ValueError, match="classnames"):
        _sets(classnames=CLASSES[:3])
    with pytest.raises(ValueError, match="at least one caption"):
        RetrievalSet(images=[b"a", b"b"], captions=(("x",), ()))
    with pytest.raises(ValueError, match="caption choices"):
        CompositionalSet(images=[b"a"], choices=(("only one",),), answers=np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError, match="test split"):
        ClassificationSet(images=[b"a"], labels=np.array([0]), classnames=("x",), templates=("{}",),
                          splits={"train": np.array([0]), "test": np.array([], dtype=np.int64)})


def test_the_suite_never_imports_the_world():
    """Eval receives datasets: the suite, the metrics and the protocol load nothing of curation.world."""
    import subprocess
    import sys

    code = ("import sys, eval.suite, eval.metrics, eval.datasets; "
            "sys.exit(any(m == 'curation.world' or m.startswith('curation.world.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=".").returncode == 0
