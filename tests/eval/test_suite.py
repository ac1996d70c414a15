"""Tests of eval/suite.py with deterministic fake encoders (no model, no weights)."""

import hashlib

import numpy as np
import pytest

from eval.config import EvalConfig, FewShotConfig
from eval.datasets import ClassificationSet, CompositionalSet, RetrievalSet, stratified_splits
from eval.features import FeatureCache, encode_batched
from eval.suite import TASKS_OF_KIND, Scoring, evaluate_dataset, headline, run_suite, tasks_for

DIM = 64
CLASSES = ["circle", "square", "star", "heart", "cross"]
COLORS = ["red", "blue", "green"]


def _word_vector(word: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(DIM)


def bag_of_words(texts):
    """A hashing bag-of-words: word order is invisible to it, as ARO says CLIP's often is."""
    return np.stack([sum(_word_vector(w) for w in t.lower().strip(".").split()) for t in texts])


class FakeEncoder:
    """Fake 'images' are their scene descriptions as bytes, embedded by the same bag of words as the texts;
    `informed=False` hashes image bytes to unrelated vectors. Counts what it is asked to encode."""

    def __init__(self, informed: bool = True, identity: str = "fake") -> None:
        self.informed, self.identity = informed, identity
        self.image_calls, self.view_calls = 0, 0

    def images(self, images):
        self.image_calls += len(images)
        if not self.informed:
            return np.stack([_word_vector(b.hex()) for b in images])
        return bag_of_words([b.decode() for b in images])

    def texts(self, texts):
        return bag_of_words(texts)

    def views(self, images, seeds):
        self.view_calls += len(images)
        noise = np.stack([np.random.default_rng(s).standard_normal(DIM) for s in seeds])
        return self.images(images) + 0.5 * noise


def classification_set(per_class: int = 12, classnames=CLASSES, splits=None, **kw) -> ClassificationSet:
    labels = np.array([c for c in range(len(CLASSES)) for _ in range(per_class)])
    scenes = [f"{COLORS[i % 3]} {CLASSES[c]}" for i, c in enumerate(labels)]
    return ClassificationSet(
        images=[s.encode() for s in scenes], labels=labels, classnames=tuple(classnames),
        templates=("a photo of a {c}.", "a {c}."), splits=splits or stratified_splits(labels, 0.5, seed=0), **kw)


def retrieval_set() -> RetrievalSet:
    pairs = [f"{COLORS[i % 3]} {CLASSES[i % 5]} left of {CLASSES[(i + 1) % 5]}" for i in range(15)]
    return RetrievalSet(images=[p.encode() for p in pairs], captions=tuple((p,) for p in pairs))


def compositional_set() -> CompositionalSet:
    pos = [f"{CLASSES[i % 5]} left of {CLASSES[(i + 2) % 5]}" for i in range(10)]
    neg = [f"{CLASSES[(i + 2) % 5]} left of {CLASSES[i % 5]}" for i in range(10)]
    attr_pos = [f"red {CLASSES[i % 5]} and blue {CLASSES[(i + 1) % 5]}" for i in range(10)]
    attr_neg = [f"blue {CLASSES[i % 5]} and green {CLASSES[(i + 1) % 5]}" for i in range(10)]
    return CompositionalSet(
        images=[p.encode() for p in pos + attr_pos], choices=tuple(zip(pos + attr_pos, neg + attr_neg)),
        answers=np.zeros(20, dtype=np.int64), kinds=("relation",) * 10 + ("attribute",) * 10)


CFG = EvalConfig(batch_size=4, fewshot=FewShotConfig(shots=(1, 2), draws=2, augment_views=2))


def _all_tasks(encoder=None, cfg=CFG) -> dict:
    encoder = encoder or FakeEncoder()
    sets = [classification_set(), retrieval_set(), compositional_set()]
    results = run_suite(encoder, [(ds, tasks_for(ds, (), False)) for ds in sets], cfg)
    return {r["task"]: r["metrics"] for r in results}


def test_every_task_reports_clip_benchmarks_metric_names_in_range():
    out = _all_tasks()
    assert set(out) == {t for tasks in TASKS_OF_KIND.values() for t in tasks}
    assert {"acc1", "acc5", "mean_per_class_recall"} <= set(out["zeroshot_classification"])
    assert {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall"} <= set(out["linear_probe"])
    assert set(headline({"task": "zeroshot_retrieval", "metrics": out["zeroshot_retrieval"]})) == {
        f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    for metrics in out.values():
        for key, value in metrics.items():
            if key.startswith(("acc", "lp_acc", "knn_acc", "image_", "text_", "fewshot_gda_")) and "alpha" not in key:
                assert value is None or 0.0 <= value <= 1.0, key
    assert out["zeroshot_classification"]["num_classes"] == 5 and out["zeroshot_classification"]["num_images"] == 60


def test_bag_of_words_model_reads_classes_but_not_order():
    out = _all_tasks()
    assert out["zeroshot_classification"]["acc1"] == 1.0 and out["zeroshot_classification"]["acc5"] == 1.0
    assert out["knn"]["knn_acc1"] > 0.6 and out["linear_probe"]["lp_acc1"] > 0.6
    assert out["zeroshot_retrieval"]["image_retrieval_recall@1"] == 1.0
    assert out["zeroshot_retrieval"]["text_retrieval_recall@1"] == 1.0
    # order is invisible to a bag of words: a relation swap ties, and a tie counts as a failure
    assert out["compositional"]["acc_relation"] == 0.0
    # a colour swap changes the words ('green' for 'red'), so the bag tells them apart
    assert out["compositional"]["acc_attribute"] == 1.0 and out["compositional"]["acc"] == pytest.approx(0.5)


def test_uninformed_image_encoder_scores_low():
    out = _all_tasks(FakeEncoder(informed=False))
    assert out["zeroshot_classification"]["acc1"] < 0.5
    assert out["zeroshot_retrieval"]["text_retrieval_recall@1"] < 0.5


def test_tasks_follow_the_dataset_kind_and_an_explicit_misfit_is_an_error():
    cls = classification_set()
    assert tasks_for(cls, (), False) == TASKS_OF_KIND[ClassificationSet]
    assert tasks_for(cls, ("knn", "zeroshot_retrieval"), False) == ("knn",)  # run-wide list: skip what misfits
    with pytest.raises(ValueError, match="cannot run 'zeroshot_retrieval'"):
        tasks_for(cls, ("knn", "zeroshot_retrieval"), True)
    with pytest.raises(ValueError, match="unknown eval task 'imagenet'"):
        tasks_for(cls, ("imagenet",), False)


def test_image_features_are_computed_once_per_dataset_and_read_back_from_disk(tmp_path):
    encoder, ds = FakeEncoder(), classification_set(fingerprint="abc")
    tasks = ("zeroshot_classification", "linear_probe", "knn")
    first = evaluate_dataset(encoder, ds, tasks, CFG, FeatureCache(tmp_path))
    assert encoder.image_calls == len(ds.images)  # three tasks, one encoding
    again = FakeEncoder()
    assert evaluate_dataset(again, ds, tasks, CFG, FeatureCache(tmp_path)) == first and again.image_calls == 0
    # another model, or another set, is never served those features
    other = FakeEncoder(identity="other")
    evaluate_dataset(other, ds, tasks[:1], CFG, FeatureCache(tmp_path))
    assert other.image_calls == len(ds.images)
    unnamed = FakeEncoder()
    evaluate_dataset(unnamed, classification_set(), tasks[:1], CFG, FeatureCache(tmp_path))
    assert unnamed.image_calls == len(ds.images)  # no fingerprint: never cached


def test_fewshot_views_are_encoded_for_drawn_rows_only_and_cached(tmp_path):
    ds = classification_set(per_class=30, fingerprint="f")
    encoder = FakeEncoder()
    first = evaluate_dataset(encoder, ds, ("fewshot_gda",), CFG, FeatureCache(tmp_path))[0]["metrics"]
    train, _ = Scoring(encoder, ds, CFG).fit_rows
    # at most (1 + 2) shots x 2 draws per class were drawn, each encoded in 2 views, never all train rows
    assert 0 < encoder.view_calls <= 5 * 3 * 2 * 2 < 2 * len(train)
    assert first["fewshot_augment_views"] == 2
    assert {"fewshot_gda_2shot_acc1_mean", "fewshot_zeroshot_acc1"} <= set(first)
    again = FakeEncoder()
    assert evaluate_dataset(again, ds, ("fewshot_gda",), CFG, FeatureCache(tmp_path))[0]["metrics"] == first
    assert again.view_calls == 0 and again.image_calls == 0


def test_retrieval_positives_are_an_images_own_captions_as_in_clip_benchmark():
    # image 1's caption repeats image 0's: for CLIP_benchmark it is image 1's positive only
    ds = RetrievalSet(images=[b"red circle", b"red circle", b"blue star"],
                      captions=(("red circle", "a red circle"), ("red circle",), ("blue star",)))
    out = evaluate_dataset(FakeEncoder(), ds, ("zeroshot_retrieval",), EvalConfig(retrieval_ks=(1, 2)))[0]["metrics"]
    # images 0 and 1 embed alike and every 'red circle' text ties: the pessimistic rank puts one ahead of each
    assert out["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert out["image_retrieval_recall@2"] == 1.0 and out["num_texts"] == 4


def test_the_validation_rows_are_the_sets_own_or_a_quarter_of_train_per_class():
    labels = np.repeat(np.arange(5), 12)
    own = {"train": np.arange(0, 30), "validation": np.arange(30, 40), "test": np.arange(40, 60)}
    ds = classification_set(splits=own)
    train, validation = Scoring(FakeEncoder(), ds, CFG).fit_rows
    np.testing.assert_array_equal(validation, own["validation"])
    ds = classification_set()
    train, validation = Scoring(FakeEncoder(), ds, CFG).fit_rows
    assert len(np.intersect1d(train, validation)) == 0
    assert np.bincount(labels[validation]).tolist() == [1] * 5  # 6 train rows per class: a quarter is one
    assert set(np.concatenate([train, validation])) == set(ds.splits["train"].tolist())


def test_zeroshot_scores_the_split_the_set_names():
    ds = classification_set(zeroshot_split="test")
    out = evaluate_dataset(FakeEncoder(), ds, ("zeroshot_classification",), CFG)[0]["metrics"]
    assert out["num_images"] == len(ds.splits["test"])


def test_two_datasets_of_one_name_are_refused_and_rejected_rows_are_counted():
    ds = classification_set(rejected=(("x.png", "not an image"),))
    with pytest.raises(ValueError, match="two eval datasets are named"):
        run_suite(FakeEncoder(), [(ds, ("knn",)), (ds, ("knn",))], CFG)
    assert run_suite(FakeEncoder(), [(ds, ("knn",))], CFG)[0]["metrics"]["num_rejected"] == 1


def test_fewer_than_five_classes_have_no_acc5():
    labels = np.repeat(np.arange(3), 4)
    ds = ClassificationSet(images=[CLASSES[c].encode() for c in labels], labels=labels,
                           classnames=tuple(CLASSES[:3]), templates=("{c}",),
                           splits=stratified_splits(labels, 0.5, seed=0))
    out = evaluate_dataset(FakeEncoder(), ds, ("zeroshot_classification",), CFG)[0]["metrics"]
    assert out["acc5"] is None and out["acc1"] == 1.0


def test_encode_batched_normalises_and_keeps_order():
    calls = []

    def encode(items):
        calls.append(len(items))
        return np.array([[float(i), 1.0] for i in items])

    out = encode_batched(encode, [0, 1, 2, 3, 4], batch_size=2)
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
        classification_set(classnames=CLASSES[:3])
    with pytest.raises(ValueError, match="at least one caption"):
        RetrievalSet(images=[b"a", b"b"], captions=(("x",), ()))
    with pytest.raises(ValueError, match="caption choices"):
        CompositionalSet(images=[b"a"], choices=(("only one",),), answers=np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError, match="test split"):
        ClassificationSet(images=[b"a"], labels=np.array([0]), classnames=("x",), templates=("{}",),
                          splits={"train": np.array([0]), "test": np.array([], dtype=np.int64)})
    with pytest.raises(ValueError, match="zeroshot_split"):
        classification_set(zeroshot_split="validation")


def test_the_suite_never_imports_the_world():
    """Eval receives datasets: the suite, the metrics and the protocol load nothing of curation.world."""
    import subprocess
    import sys

    code = ("import sys, eval.suite, eval.metrics, eval.datasets; "
            "sys.exit(any(m == 'curation.world' or m.startswith('curation.world.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=".").returncode == 0
