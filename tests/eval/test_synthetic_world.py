"""The synthetic world as a provider: its sets in the dataset protocol, exactly the world's tables."""

import numpy as np

from curation.world import evaluation
from curation.world.pool import WorldConfig
from curation.world.shapes import SHAPES
from eval.datasets import ClassificationSet, CompositionalSet, RetrievalSet, stratified_splits
from eval.suite import EvalConfig
from eval.synthetic_world import synthetic_datasets

WORLD = WorldConfig(num_images=100, seed=2)
CFG = EvalConfig(per_class=2, retrieval_pairs=12, compositional_pairs=6)


def test_the_sets_are_the_worlds_tables_sized_by_the_config():
    cls, ret, comp = synthetic_datasets(WORLD, CFG)
    assert isinstance(cls, ClassificationSet) and isinstance(ret, RetrievalSet) and isinstance(comp, CompositionalSet)
    table = evaluation.classification_set(WORLD, 2)
    assert cls.images == table.column("image").to_pylist() and cls.classnames == SHAPES
    np.testing.assert_array_equal(cls.labels, table.column("label").to_pylist())
    assert cls.templates == CFG.templates and len(cls.images) == 2 * len(SHAPES)
    for name, rows in stratified_splits(cls.labels, CFG.probe_train_fraction, CFG.seed).items():
        np.testing.assert_array_equal(cls.splits[name], rows)
    table = evaluation.retrieval_set(WORLD, 12)
    assert ret.captions == tuple((c,) for c in table.column("caption").to_pylist())
    table = evaluation.compositional_set(WORLD, 6)
    assert [c[0] for c in comp.choices] == table.column("positive").to_pylist()
    assert [c[1] for c in comp.choices] == table.column("negative").to_pylist()
    assert comp.kinds == tuple(table.column("kind").to_pylist()) and not comp.answers.any()
