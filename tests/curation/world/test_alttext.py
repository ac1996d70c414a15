"""Descriptions and alt-text templates of the world."""

import re

import numpy as np
import pytest

from curation.world import alttext
from curation.world.pool import WorldConfig
from curation.world.scenes import sample_scene
from curation.world.shapes import SHAPES
from curation.world.vocabulary import metadata_entries

CFG = WorldConfig(num_images=5000, seed=3)


def _scene(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    uniform = (1 / len(SHAPES),) * len(SHAPES)
    count_p = tuple(float(k == n - 1) for k in range(3))
    return sample_scene(rng, uniform, (1 / 12,) * 12, count_p, CFG.texture_probs)


def test_describe_styles():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3):
        truth = _scene(n, seed=n)
        full = alttext.describe(truth, rng, "full")
        assert all(alttext.object_phrase(o) in full for o in truth["objects"])
        assert alttext.BACKGROUND_PHRASES[truth["background"]] in full
        long = alttext.describe(truth, rng, "long")
        assert len([s for s in long.split(". ") if s]) >= 3
        assert truth["objects"][0]["shape"] in alttext.describe(truth, rng, "short")
    with pytest.raises(ValueError):
        alttext.describe(_scene(1), rng, "haiku")


def test_templates_hold_no_vocabulary_word():
    """MetaCLIP matches substrings: a template's fixed words must not match an entry by accident."""
    entries = [e for e in metadata_entries() if " " not in e]
    fixed = [*alttext.SHORT_TEMPLATES, *alttext.BOILERPLATE, *alttext.CONCEPTLESS_BOILERPLATE,
             *alttext.VAGUE_TEMPLATES, "The image shows",
             "This picture contains", "There is also", "Nothing else is in the scene besides",
             "towards the top left", "towards the bottom right", "near the middle"]
    for template in fixed:
        words = re.sub(r"\{[a-zA-Z]+\}", " ", template).lower()
        assert not [e for e in entries if e in words], template
    for texture, phrase in alttext.TEXTURE_PHRASES.items():
        assert [e for e in entries if e in phrase] == [texture]
