"""The world's words: sizes of the vocabulary, and its MetaCLIP metadata."""

import re

import numpy as np

from curation.world.alttext import describe
from curation.world.pool import WorldConfig, generate_pool
from curation.world.scenes import sample_scene
from curation.world.shapes import SHAPE_PRIMITIVES, SHAPES
from curation.world.vocabulary import (
    ADJECTIVES,
    BACKGROUND_PHRASES,
    BACKGROUNDS,
    COLOURS,
    DISTRACTOR_ENTRIES,
    NOUNS,
    RELATIONS,
    metadata_entries,
)

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


def test_every_caption_word_has_one_part_of_speech():
    """Nouns and adjectives (ARO's Order perturbations move them) are disjoint, and every word of a full
    describe() caption is a noun, an adjective, or one of the few function and relation words."""
    assert not NOUNS & ADJECTIVES and set(SHAPES) <= NOUNS and set(COLOURS) <= ADJECTIVES
    function_words = {"a", "an", "the", "of", "and", "on", *" ".join(RELATIONS).split()}
    for phrase in BACKGROUND_PHRASES.values():
        assert set(phrase.split()) <= NOUNS | ADJECTIVES | {"a", "of"}, phrase
    rng = np.random.default_rng(0)
    uniform = (1 / len(SHAPES),) * len(SHAPES)
    for _ in range(200):
        scene = sample_scene(rng, uniform, (1 / len(COLOURS),) * len(COLOURS), (0.3, 0.3, 0.4), (0.25,) * 4)
        words = describe(scene, rng, "full").replace(",", "").split()
        assert set(words) <= NOUNS | ADJECTIVES | function_words, words
        assert sum(w in NOUNS for w in words) >= 2 and sum(w in ADJECTIVES for w in words) >= 2
