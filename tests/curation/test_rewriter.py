"""The simulated rewriter (LaCLIP's text-only LLM stand-in) on its own: it cannot see the world."""

import re
import subprocess
import sys

import numpy as np

from curation import rewriter
from curation.world.vocabulary import metadata_entries


def test_the_rewriter_never_imports_the_world():
    """A text-only LLM has no scene to read: importing the rewriter loads nothing of curation.world."""
    code = ("import sys, curation.rewriter; "
            "sys.exit(any(m == 'curation.world' or m.startswith('curation.world.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=".").returncode == 0


def test_distortion_changes_one_colour_word_to_one_the_caption_lacks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        out = rewriter.distort("a red star left of a blue ring", rng)
        changed = [(a, b) for a, b in zip("a red star left of a blue ring".split(), out.split()) if a != b]
        assert len(changed) == 1 and changed[0][1] in rewriter.ENGLISH_COLOURS
        assert changed[0][1] not in {"red", "blue"}
    assert rewriter.distort("a small star", rng) == "a large star"
    assert rewriter.distort("IMG_2034.jpg", rng) == "IMG_2034.jpg"


def test_templates_hold_no_vocabulary_word():
    entries = [e for e in metadata_entries() if " " not in e]
    for template in (*rewriter.PARAPHRASE_FRAMES, "In short", "The original caption reads"):
        words = re.sub(r"\{[a-z]+\}", " ", template).lower()
        assert not [e for e in entries if e in words], template
