"""The synthetic world as an eval dataset provider: its balanced sets, in the dataset protocol.

The sets come from :mod:`curation.world.evaluation` (seeds apart from the pool's), sized by EvalConfig;
the classification split is the seeded stratified one the suite has always used, so the same seeds give
the same figures. Only a run whose pool is the synthetic world is scored on these sets
(:mod:`eval.providers`).
"""

from __future__ import annotations

import numpy as np

from curation.world import evaluation
from curation.world.pool import WorldConfig
from curation.world.shapes import SHAPES
from eval.datasets import ClassificationSet, CompositionalSet, EvalDataset, RetrievalSet, stratified_splits
from eval.suite import EvalConfig


def classification(world: WorldConfig, cfg: EvalConfig) -> ClassificationSet:
    """cfg.per_class single-object images of each shape; kNN and probe split them cfg.probe_train_fraction."""
    table = evaluation.classification_set(world, cfg.per_class)
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    return ClassificationSet(
        images=table.column("image").to_pylist(), labels=labels, classnames=SHAPES, templates=cfg.templates,
        splits=stratified_splits(labels, cfg.probe_train_fraction, cfg.seed), name="synthetic-shapes")


def retrieval(world: WorldConfig, cfg: EvalConfig) -> RetrievalSet:
    """cfg.retrieval_pairs scenes of one to three objects, one faithful caption each."""
    table = evaluation.retrieval_set(world, cfg.retrieval_pairs)
    return RetrievalSet(images=table.column("image").to_pylist(),
                        captions=tuple((c,) for c in table.column("caption").to_pylist()), name="synthetic-scenes")


def compositional(world: WorldConfig, cfg: EvalConfig) -> CompositionalSet:
    """cfg.compositional_pairs two-object scenes; choice 0 is the true caption, choice 1 its swap."""
    table = evaluation.compositional_set(world, cfg.compositional_pairs)
    choices = tuple(zip(table.column("positive").to_pylist(), table.column("negative").to_pylist(), strict=True))
    return CompositionalSet(images=table.column("image").to_pylist(), choices=choices,
                            answers=np.zeros(table.num_rows, dtype=np.int64),
                            kinds=tuple(table.column("kind").to_pylist()), name="synthetic-pairs")


def synthetic_datasets(world: WorldConfig, cfg: EvalConfig) -> list[EvalDataset]:
    """The three sets of the world, in the order the suite reports them."""
    return [classification(world, cfg), retrieval(world, cfg), compositional(world, cfg)]
