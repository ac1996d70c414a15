"""The synthetic world as a provider: its sets in the dataset protocol, exactly the world's tables."""

import numpy as np

from curation.world import evaluation
from curation.world.pool import WorldConfig
from curation.world.shapes import SHAPES
from eval.config import EvalConfig, SyntheticSetsConfig
from eval.datasets import ClassificationSet, CompositionalSet, RetrievalSet
from eval.synthetic_world import SET_VERSION, _fingerprint, synthetic_datasets

WORLD = WorldConfig(num_images=100, seed=2)
CFG = EvalConfig(synthetic=SyntheticSetsConfig(train_per_class=3, validation_per_class=1, test_per_class=2,
                                              retrieval_pairs=12, compositional_pairs=6))


def test_the_sets_are_the_worlds_tables_sized_by_the_config():
    cls, ret, *aro = synthetic_datasets(WORLD, CFG)
    assert isinstance(cls, ClassificationSet) and isinstance(ret, RetrievalSet)
    table = evaluation.classification_set(WORLD, 6)
    assert cls.images == table.column("image").to_pylist() and cls.classnames == SHAPES
    np.testing.assert_array_equal(cls.labels, table.column("label").to_pylist())
    assert cls.templates == CFG.synthetic.templates and len(cls.images) == 6 * len(SHAPES)
    # disjoint splits of 3, 1 and 2 images of every class; zero-shot scores the test images only
    for name, per_class in {"train": 3, "validation": 1, "test": 2}.items():
        assert np.bincount(cls.labels[cls.splits[name]]).tolist() == [per_class] * len(SHAPES)
    assert len(np.unique(np.concatenate(list(cls.splits.values())))) == len(cls.images)
    np.testing.assert_array_equal(cls.zeroshot_rows(), cls.splits["test"])
    table = evaluation.retrieval_set(WORLD, 12)
    assert ret.captions == tuple((c,) for c in table.column("caption").to_pylist())
    assert [ds.name for ds in aro] == ["synthetic-vg-attribution", "synthetic-vg-relation", "synthetic-order"]


ARO = {"vg_attribution": (evaluation.vg_attribution_set, 2), "vg_relation": (evaluation.vg_relation_set, 2),
       "order": (evaluation.order_set, 5)}
"""subset -> (its table, choices per image)."""


def test_the_aro_subsets_are_the_worlds_tables_in_protocol_form():
    _, _, *aro = synthetic_datasets(WORLD, CFG)
    for ds, (subset, (make, width)) in zip(aro, ARO.items(), strict=True):
        assert isinstance(ds, CompositionalSet)
        table = make(WORLD, 6)  # compositional_pairs images per subset
        assert ds.images == table.column("image").to_pylist()
        assert [c[0] for c in ds.choices] == table.column("caption").to_pylist()  # the true caption first
        assert [list(c[1:]) for c in ds.choices] == table.column("negatives").to_pylist()
        assert {len(c) for c in ds.choices} == {width}
        assert ds.answers.dtype == np.int64 and ds.answers.tolist() == [0] * 6
        assert ds.kinds == (subset,) * 6
        assert ds.fingerprint == _fingerprint(WORLD, subset, 6)


def test_fingerprints_name_the_subset_its_size_and_the_world():
    fingerprints = [ds.fingerprint for ds in synthetic_datasets(WORLD, CFG)]
    assert len(set(fingerprints)) == 5 and all(fingerprints)
    assert SET_VERSION == 3
    assert _fingerprint(WORLD, "order", 7) != _fingerprint(WORLD, "order", 6)
    assert _fingerprint(WorldConfig(num_images=100, seed=3), "order", 6) != _fingerprint(WORLD, "order", 6)
