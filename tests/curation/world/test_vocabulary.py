"""The world's words: sizes of the vocabulary, and its MetaCLIP metadata."""

import re

from curation.world.pool import WorldConfig, generate_pool
from curation.world.shapes import SHAPE_PRIMITIVES, SHAPES
from curation.world.vocabulary import BACKGROUNDS, COLOURS, DISTRACTOR_ENTRIES, metadata_entries

CFG = WorldConfig(num_images=5000, seed=3)


def test_vocabulary_sizes():
    assert len(SHAPES) >= 24 and len(set(SHAPES)) == len(SHAPES)
    assert len(COLOURS) >= 10 and len(BACKGROUNDS) >= 8
    assert all(re.fullmatch(r"[a-z]+( [a-z]+)?", s) for s in SHAPES)
    assert set(SHAPE_PRIMITIVES) == set(SHAPES)


def test_metadata_entries():
    entries = metadata_entries()
    assert entries == sorted(set(entries))
    assert {*SHAPES, *COLOURS, "red star", "grass"} <= set(entries)
    samples, _ = generate_pool(WorldConfig(num_images=300), 0, 300)
    text = " ".join(samples.column("text").to_pylist()).lower()
    assert all(d not in text for d in DISTRACTOR_ENTRIES)
