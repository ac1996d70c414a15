"""The world's evaluation sets: balanced, from other seeds, faithful, with true negatives."""

import collections
import hashlib

import pyarrow as pa

from curation.world.evaluation import (
    RETRIEVAL_SEED_OFFSET,
    _eval_scene,
    classification_set,
    compositional_set,
    retrieval_set,
)
from curation.world.pool import WorldConfig
from curation.world.shapes import SHAPES
from tests.curation.world.helpers import CFG, decode


def test_eval_sets_are_balanced():
    cls = classification_set(CFG, 3)
    labels = cls.column("label").to_pylist()
    assert collections.Counter(labels) == {k: 3 for k in range(len(SHAPES))}
    assert cls.schema.field("label").type == pa.int32()
    assert cls.column("classname").to_pylist() == [SHAPES[k] for k in labels]
    assert decode(cls.column("image")[0].as_py()).shape == (64, 64, 3)
    comp = compositional_set(CFG, 40)
    assert collections.Counter(comp.column("kind").to_pylist()) == {"colour_swap": 20, "relation_swap": 20}
    ret = retrieval_set(CFG, 30)
    assert ret.column_names == ["uid", "image", "caption"] and ret.num_rows == 30


def test_eval_sets_come_from_other_seeds(pool):
    samples, _ = pool
    pool_images = set(samples.column("image_sha256").to_pylist())
    pool_uids = set(samples.column("uid").to_pylist())
    for table in (classification_set(CFG, 4), retrieval_set(CFG, 50),
                  compositional_set(CFG, 50)):
        digests = {hashlib.sha256(b).hexdigest() for b in table.column("image").to_pylist()}
        assert digests.isdisjoint(pool_images)
        assert pool_uids.isdisjoint(table.column("uid").to_pylist())
        assert len(digests) == table.num_rows


def test_compositional_negatives_differ_from_positives():
    comp = compositional_set(CFG, 60).to_pylist()
    for row in comp:
        pos, neg = row["positive"], row["negative"]
        assert pos != neg
        assert sorted(pos.split()) == sorted(neg.split())  # same words, bound differently
        if row["kind"] == "colour_swap":
            assert [w for w in pos.split() if w in SHAPES] == \
                   [w for w in neg.split() if w in SHAPES]


def test_retrieval_captions_are_faithful():
    cfg = WorldConfig(seed=5)
    table = retrieval_set(cfg, 20)
    for i, caption in enumerate(table.column("caption").to_pylist()):
        truth, _ = _eval_scene(cfg, RETRIEVAL_SEED_OFFSET, i, cfg.object_count_probs)
        for obj in truth["objects"]:
            assert f"{obj['colour']} {obj['shape']}" in caption
