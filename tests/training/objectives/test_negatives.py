"""NegCLIP's hard negatives (training.objectives.negatives) against references/aro_reference.py, a transcription of the
authors' negative-generation script (linked from mertyg/vision-language-models-are-bows issue 13,
`global_find_hard_negatives`: `swapper`, `shuffle_noun_phrase`, `check_same`) and of ARO's
`TextShuffler.shuffle_all_words` (dataset_zoo/perturbations.py).

The reference takes spaCy's tags and noun chunks as given; here the test supplies them by hand for the captions
it uses, and our vocabulary lookup must find the same positions. Both draw at random, with different
generators, so the tests compare the *sets* of negatives each can produce."""

import ast
from pathlib import Path
from random import Random

import numpy as np
import pytest

from tests.training.references import aro_reference
from training.objectives.negatives import (
    KINDS,
    NegativeVocabulary,
    attribute_swap,
    draw_negative,
    hard_negatives,
    noun_phrase_swap,
    noun_swap,
    relation_swap,
    same_caption,
    word_shuffle,
)

VOCAB = NegativeVocabulary()

# (caption, spaCy-style fine tags, coarse tags, noun chunks), tagged by hand as en_core_web_sm tags them.
TAGGED = [
    ("a red car next to a blue house", ["DT", "JJ", "NN", "JJ", "IN", "DT", "JJ", "NN"],
     ["DET", "ADJ", "NOUN", "ADV", "ADP", "DET", "ADJ", "NOUN"], ["a red car", "a blue house"]),
    ("a small dog and a large cat on a wooden table",
     ["DT", "JJ", "NN", "CC", "DT", "JJ", "NN", "IN", "DT", "JJ", "NN"],
     ["DET", "ADJ", "NOUN", "CCONJ", "DET", "ADJ", "NOUN", "ADP", "DET", "ADJ", "NOUN"],
     ["a small dog", "a large cat", "a wooden table"]),
]


def _outputs(make, seeds: int = 300) -> set[str]:
    return {out for seed in range(seeds) if (out := make(seed)) is not None}


@pytest.mark.parametrize("caption,fine,coarse,chunks", TAGGED)
def test_attribute_and_noun_swaps_make_the_negatives_the_authors_swapper_makes(caption, fine, coarse, chunks):
    tokens = [(w, f, c) for w, f, c in zip(caption.split(), fine, coarse)]

    def theirs(tag: str, coarse_tag: bool):
        return _outputs(lambda s: (lambda out: out if out and not aro_reference.check_same_reference(out, caption)
                                   else None)(aro_reference.swap_two_tokens_reference(tokens, tag, caption,
                                                                                      Random(s), coarse_tag)))

    ours_adj = _outputs(lambda s: attribute_swap(caption, VOCAB, np.random.default_rng(s)))
    ours_noun = _outputs(lambda s: noun_swap(caption, VOCAB, np.random.default_rng(s)))
    assert ours_adj == theirs("ADJ", True) and ours_adj
    assert ours_noun == theirs("NN", False) and ours_noun


@pytest.mark.parametrize("caption,fine,coarse,chunks", TAGGED)
def test_noun_phrase_swap_makes_the_authors_noun_phrase_negatives(caption, fine, coarse, chunks):
    # the reference lower-cases its output (theirs does); our captions here are lower case already
    ours = _outputs(lambda s: noun_phrase_swap(caption, VOCAB, np.random.default_rng(s)))
    theirs = _outputs(lambda s: aro_reference.noun_phrase_swap_reference(caption, chunks, Random(s)))
    assert ours == theirs and ours


def test_noun_phrase_swap_reverses_a_relation():
    got = noun_phrase_swap("a red star left of a blue ring", VOCAB.with_entries(["ring"]), np.random.default_rng(0))
    assert got == "a blue ring left of a red star"
    assert noun_phrase_swap("a star left of a ring", VOCAB, np.random.default_rng(0)) is None  # 2-word phrases


def _their_shuffle(caption: str, seed: int) -> str | None:
    words = aro_reference.shuffle_all_words_reference(caption, Random(seed))
    return None if words == caption.split(" ") else " ".join(words)


@pytest.mark.parametrize("caption", ["a red sofa", "dog, on sofa"])  # few enough permutations to see them all
def test_word_shuffle_is_a_permutation_of_the_words_as_aros(caption):
    ours = _outputs(lambda s: word_shuffle(caption, VOCAB, np.random.default_rng(s)), 500)
    theirs = _outputs(lambda s: _their_shuffle(caption, s), 500)
    assert ours == theirs and len(ours) == 5
    assert word_shuffle("dog", VOCAB, np.random.default_rng(0)) is None
    assert word_shuffle("dog dog", VOCAB, np.random.default_rng(0)) is None


def test_relation_swap_exchanges_two_different_relations():
    caption = "a star left of a ring and a cup above a box"
    assert relation_swap(caption, VOCAB, np.random.default_rng(0)) == "a star above a ring and a cup left of a box"
    assert relation_swap("a star left of a ring", VOCAB, np.random.default_rng(0)) is None


def test_check_same_is_the_authors_rule():
    for a, b in (("a red car, next to", "a red car next to"), ("a car.", "a car"), ("A car", "a car")):
        assert same_caption(a, b) == aro_reference.check_same_reference(a, b)


def test_one_negative_is_drawn_per_caption_among_those_it_allows():
    caption = "a red car next to a blue house"
    options = set(hard_negatives(caption, KINDS, VOCAB, np.random.default_rng(0)))
    assert len(options) >= 3  # noun phrases, nouns, attributes, word order
    drawn = {draw_negative(caption, KINDS, VOCAB, np.random.default_rng(s)) for s in range(200)}
    assert None not in drawn and len(drawn) > len(options)  # each draw re-makes the swaps (different pairs)
    assert draw_negative("untitled", KINDS, VOCAB, np.random.default_rng(0)) is None
    assert all(not same_caption(n, caption) for n in drawn)


def test_the_vocabulary_grows_with_metadata_entries_not_the_synthetic_world():
    assert noun_swap("a red chevron and a blue droplet", VOCAB, np.random.default_rng(0)) is None
    vocab = VOCAB.with_entries(["chevron", "droplet", "red", "left of", "red chevron"])
    assert noun_swap("a red chevron and a blue droplet", vocab, np.random.default_rng(0)) == \
        "a red droplet and a blue chevron"
    assert "red" not in vocab.nouns and "red chevron" not in vocab.nouns
    # training/ never imports the synthetic world (issue 8; docs/architecture.md, "Layers"): check every module's
    # imports (curation's world-free modules, such as curation.images, it may use)
    for path in Path("training").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                  for a in n.names]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in names if m == "curation.world" or m.startswith("curation.world.")], path
