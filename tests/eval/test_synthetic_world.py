"""The synthetic world as a provider: its sets in the dataset protocol, exactly the world's tables."""

import numpy as np

from curation.world import evaluation
from curation.world.pool import WorldConfig
from curation.world.shapes import SHAPES
from eval.config import EvalConfig, SyntheticSetsConfig
from eval.datasets import ClassificationSet, CompositionalSet, RetrievalSet
from eval.synthetic_world import synthetic_datasets

WORLD = WorldConfig(num_images=100, seed=2)
CFG = EvalConfig(synthetic=SyntheticSetsConfig(train_per_class=3, validation_per_class=1, test_per_class=2,
                                              retrieval_pairs=12, compositional_pairs=6))


def test_the_sets_are_the_worlds_tables_sized_by_the_config():
    cls, ret, comp = synthetic_datasets(WORLD, CFG)
    assert isinstance(cls, ClassificationSet) and isinstance(ret, RetrievalSet) and isinstance(comp, CompositionalSet)
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
    table = evaluation.compositional_set(WORLD, 6)
    assert [c[0] for c in comp.choices] == table.column("positive").to_pylist()
    assert [c[1] for c in comp.choices] == table.column("negative").to_pylist()
    assert comp.kinds == tuple(table.column("kind").to_pylist()) and not comp.answers.any()
