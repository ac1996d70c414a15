"""The synthetic world as an eval dataset provider: its balanced sets, in the dataset protocol.

The sets come from :mod:`curation.world.evaluation` (seeds apart from the pool's), sized by EvalConfig;
the classification split is the seeded stratified one the suite has always used, so the same seeds give
the same figures; the compositional sets are ARO's three subsets (VG-Attribution, VG-Relation, Order), one
CompositionalSet each. Only a run whose pool is the synthetic world is scored on these sets
(:mod:`eval.providers`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from curation.world import evaluation
from curation.world.pool import WorldConfig
from curation.world.shapes import SHAPES
from eval.config import EvalConfig
from eval.datasets import ClassificationSet, CompositionalSet, EvalDataset, RetrievalSet

SET_VERSION = 3
"""Bumped when the sets' drawing code changes, so cached features of older sets are never reused."""


def _fingerprint(world: WorldConfig, kind: str, sizes: object) -> str:
    """The world config, the set and its sizes determine every pixel and caption of a synthetic set."""
    text = json.dumps([dataclasses.asdict(world), kind, sizes, SET_VERSION], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def classification(world: WorldConfig, cfg: EvalConfig) -> ClassificationSet:
    """Single-object images of each shape in three disjoint splits: train_per_class fit the probe, kNN and
    few-shot, validation_per_class choose their settings, test_per_class are scored (zero-shot too)."""
    sizes = cfg.synthetic
    counts = {"train": sizes.train_per_class, "validation": sizes.validation_per_class, "test": sizes.test_per_class}
    if min(counts["train"], counts["test"]) < 1:
        raise ValueError("eval.synthetic: train_per_class and test_per_class must be at least 1")
    table = evaluation.classification_set(world, sum(counts.values()))
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    # row i has label i % C, so consecutive blocks of n * C rows hold n images of every class
    bounds = np.cumsum([0, *counts.values()]) * len(SHAPES)
    splits = {name: np.arange(lo, hi) for name, lo, hi in zip(counts, bounds[:-1], bounds[1:], strict=True)
              if hi > lo}
    return ClassificationSet(
        images=table.column("image").to_pylist(), labels=labels, classnames=SHAPES, templates=sizes.templates,
        splits=splits, name="synthetic-shapes", zeroshot_split="test",
        fingerprint=_fingerprint(world, "classification", counts))


def retrieval(world: WorldConfig, cfg: EvalConfig) -> RetrievalSet:
    """cfg.synthetic.retrieval_pairs scenes of one to three objects, one faithful caption each."""
    table = evaluation.retrieval_set(world, cfg.synthetic.retrieval_pairs)
    return RetrievalSet(images=table.column("image").to_pylist(),
                        captions=tuple((c,) for c in table.column("caption").to_pylist()), name="synthetic-scenes",
                        fingerprint=_fingerprint(world, "retrieval", cfg.synthetic.retrieval_pairs))


COMPOSITIONAL_SUBSETS: dict[str, Callable[[WorldConfig, int], pa.Table]] = {
    "vg_attribution": evaluation.vg_attribution_set,
    "vg_relation": evaluation.vg_relation_set,
    "order": evaluation.order_set,
}
"""ARO's three subsets, by the name each set's rows carry as their kind."""


def compositional(world: WorldConfig, cfg: EvalConfig, subset: str) -> CompositionalSet:
    """cfg.synthetic.compositional_pairs images of one ARO subset; choice 0 is the true caption, the rest its
    negatives (one for the VG subsets, four for Order). A tie with a negative scores as a failure."""
    table = COMPOSITIONAL_SUBSETS[subset](world, cfg.synthetic.compositional_pairs)
    choices = tuple((caption, *negatives) for caption, negatives in
                    zip(table.column("caption").to_pylist(), table.column("negatives").to_pylist(), strict=True))
    return CompositionalSet(images=table.column("image").to_pylist(), choices=choices,
                            answers=np.zeros(table.num_rows, dtype=np.int64), kinds=(subset,) * table.num_rows,
                            name="synthetic-" + subset.replace("_", "-"),
                            fingerprint=_fingerprint(world, subset, cfg.synthetic.compositional_pairs))


def synthetic_datasets(world: WorldConfig, cfg: EvalConfig) -> list[EvalDataset]:
    """The world's five sets, in the order the suite reports them: classification, retrieval, then VG-Attribution,
    VG-Relation and Order."""
    return [classification(world, cfg), retrieval(world, cfg),
            *(compositional(world, cfg, subset) for subset in COMPOSITIONAL_SUBSETS)]
