"""The dataset protocol: each kind checks its own shape at construction, with an error naming the set."""

import numpy as np
import pytest

from eval.datasets import ClassificationSet, CompositionalSet, RetrievalSet, stratified_splits

IMAGES = [b"a", b"b", b"c", b"d"]


def classification(**changes):
    fields = {"images": IMAGES, "labels": np.array([0, 1, 0, 1]), "classnames": ("star", "moon"),
              "templates": ("a {}.",), "splits": {"train": np.array([0, 1]), "test": np.array([2, 3])}}
    return ClassificationSet(**{**fields, **changes})


def test_a_well_formed_classification_set_loads():
    assert classification().classnames == ("star", "moon")


@pytest.mark.parametrize("changes, words", [
    ({"labels": np.array([0, 1, 0])}, "4 images but 3 labels"),
    ({"labels": np.array([0, 1, 2, 1])}, "labels must index the 2 classnames"),
    ({"splits": {"train": np.array([0])}}, "splits need ['test']"),
    ({"splits": {"train": np.array([0]), "test": np.array([], int)}}, "the test split is empty"),
])
def test_a_malformed_classification_set_names_what_is_wrong(changes, words):
    with pytest.raises(ValueError, match=f"classification: .*{__import__('re').escape(words)}"):
        classification(**changes)


def test_retrieval_needs_a_caption_for_every_image():
    RetrievalSet(IMAGES[:2], (("one",), ("two", "deux")))
    with pytest.raises(ValueError, match="every image needs at least one caption"):
        RetrievalSet(IMAGES[:2], (("one",), ()))


def test_compositional_needs_k_choices_and_a_true_index_per_image():
    CompositionalSet(IMAGES[:2], (("a", "b"), ("c", "d")), np.array([0, 1]), ("colour_swap", "relation_swap"))
    with pytest.raises(ValueError, match="same number"):
        CompositionalSet(IMAGES[:2], (("a", "b"), ("c",)), np.array([0, 0]))
    with pytest.raises(ValueError, match="index of its true caption among its 2 choices"):
        CompositionalSet(IMAGES[:2], (("a", "b"), ("c", "d")), np.array([0, 2]))
    with pytest.raises(ValueError, match="kinds must be empty or one per image"):
        CompositionalSet(IMAGES[:2], (("a", "b"), ("c", "d")), np.array([0, 1]), ("colour_swap",))


def test_stratified_splits_put_every_class_in_train_and_are_seeded():
    labels = np.array([0] * 5 + [1] * 3 + [2])
    splits = stratified_splits(labels, 0.5, seed=7)
    assert set(labels[splits["train"]]) == {0, 1, 2}
    assert sorted(np.concatenate([splits["train"], splits["test"]]).tolist()) == list(range(9))
    again = stratified_splits(labels, 0.5, seed=7)
    assert all(np.array_equal(splits[k], again[k]) for k in ("train", "test"))
