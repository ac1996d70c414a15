"""NegCLIP's hard negative captions (Yuksekgonul et al. 2023, "When and Why Vision-Language Models Behave like
Bags-of-Words, and What to Do About It", ARO).

What the authors' code does (their negative-generation script, linked from mertyg/vision-language-models-are-bows
issue 13, `global_find_hard_negatives`; the training fork vinid/neg_clip reads its output): every COCO caption
is tagged with spaCy, and up to one negative is made by each of these swaps, in order: two noun phrases of more
than two words (`shuffle_noun_phrase`; in "a red star left of a blue ring" this swaps the relation's order), two
verb phrases, two singular nouns, two plural nouns, two adverbs, two adjectives (`shuffler`/`swapper`: two
tokens of one tag exchanged). A negative equal to the caption up to "." "," and spacing is dropped
(`check_same`). Each training sample then draws one of its caption's negatives at random
(neg_clip `CsvDataset.__getitem__`, `random.choice`), which joins the image->text softmax only.

What this module does the same way: the swap kinds (noun phrases, nouns, attributes, relations), the
two-element swaps, the `check_same` rule, and one negative drawn per sample from those its caption allows.
ARO's word-order shuffle (`TextShuffler.shuffle_all_words`, used by ARO for its COCO/Flickr-Order test, not for
NegCLIP's training) is one more kind among them.

Where it differs, on purpose: there is no spaCy here (a tagger model cannot be downloaded at run time), so words
are tagged by vocabulary lookup (:class:`NegativeVocabulary`: a default English list of attribute words, nouns
and relation phrases, plus the pool's own MetaCLIP metadata entries, which the train stage adds); verb phrases
and adverbs have no such list, so relation phrases ("left of", "on top of") stand in for the verb-phrase swap.
Noun phrases are swapped by position (the authors replace every occurrence of the two strings, the same thing
when each occurs once), and the output is not lower-cased (theirs lower-cases noun-phrase swaps only).
Nothing here knows the synthetic world: its words reach the vocabulary only as the pool's metadata entries.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

DEFAULT_ATTRIBUTES: frozenset[str] = frozenset({
    # colours
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "grey",
    "cyan", "magenta", "violet", "beige", "gold", "golden", "silver", "teal", "navy", "dark", "light", "bright",
    "pale",
    # sizes and shapes of things
    "small", "medium", "large", "big", "little", "tiny", "huge", "tall", "short", "long", "wide", "narrow",
    "thick", "thin", "round", "square", "flat",
    # materials and surfaces
    "wooden", "metal", "metallic", "plastic", "glass", "stone", "paper", "leather", "furry", "fluffy", "shiny",
    "smooth", "rough", "wet", "dry", "striped", "dotted", "spotted", "checkered", "plaid", "solid", "outlined",
    # states
    "old", "new", "young", "empty", "full", "open", "closed", "clean", "dirty", "broken", "hot", "cold",
})
"""English adjectives NegCLIP's attribute swap exchanges (its ADJ swap), with no tagger to find them."""

DEFAULT_NOUNS: frozenset[str] = frozenset({
    "man", "woman", "person", "people", "child", "boy", "girl", "baby", "dog", "cat", "horse", "cow", "sheep",
    "bird", "elephant", "bear", "zebra", "giraffe", "car", "bus", "truck", "train", "bike", "bicycle",
    "motorcycle", "boat", "plane", "airplane", "table", "chair", "bench", "bed", "couch", "sofa", "desk",
    "cup", "mug", "bowl", "plate", "bottle", "glass", "knife", "fork", "spoon", "pizza", "cake", "sandwich",
    "apple", "banana", "orange", "ball", "box", "bag", "book", "phone", "laptop", "screen", "clock", "vase",
    "tree", "flower", "plant", "grass", "road", "street", "building", "house", "wall", "window", "door",
    "sky", "water", "beach", "sand", "snow", "field", "mountain", "river", "shirt", "hat", "umbrella",
    "kite", "frisbee", "skateboard", "surfboard", "circle", "square", "triangle", "star", "heart", "ring",
    "arrow", "line", "shape", "sign", "light", "floor", "room", "kitchen", "background", "picture", "photo",
})
"""English object nouns NegCLIP's noun swap exchanges (its NN/NNS swaps)."""

DEFAULT_RELATIONS: tuple[str, ...] = (
    "to the left of", "to the right of", "in front of", "on top of", "next to", "left of", "right of",
    "above", "below", "under", "over", "behind", "beside", "inside", "near", "on", "in",
)
"""Relation phrases, longest first where one contains another: the relation swap exchanges two of them."""

DETERMINERS: frozenset[str] = frozenset({"a", "an", "the", "one", "two", "three", "some", "this", "that", "his",
                                         "her", "their", "its"})
"""Words that may open a noun phrase."""

NegativeKind = Literal["noun_phrase_swap", "noun_swap", "attribute_swap", "relation_swap", "word_shuffle"]
"""Negative kinds a config may name (the keys of NEGATIVE_KINDS)."""

KINDS: tuple[NegativeKind, ...] = typing.get_args(NegativeKind)
"""Negative kinds, in the order NegCLIP's script tries its swaps (word_shuffle last: ARO's order perturbation)."""


@dataclass(frozen=True)
class NegativeVocabulary:
    """The words the swaps recognise: attribute words, nouns and relation phrases (lower case)."""

    attributes: frozenset[str] = DEFAULT_ATTRIBUTES
    nouns: frozenset[str] = DEFAULT_NOUNS
    relations: tuple[str, ...] = DEFAULT_RELATIONS

    def with_entries(self, entries: Iterable[str]) -> NegativeVocabulary:
        """Add a pool's metadata entries: relation phrases it already knows stay relations, words it knows as
        attributes stay attributes, and every other one-word entry counts as a noun (MetaCLIP entries are
        mostly nouns and noun phrases)."""
        relations = set(self.relations)
        nouns = {e for e in (x.strip().lower() for x in entries)
                 if e and " " not in e and e.isalpha() and e not in self.attributes and e not in relations}
        return NegativeVocabulary(self.attributes, self.nouns | nouns, self.relations)


def _tokens(text: str) -> list[str]:
    return text.split()


def _core(token: str) -> str:
    """A token without surrounding punctuation, lower case ('Star,' -> 'star')."""
    return token.strip(".,;:!?\"'()").lower()


def _replace_core(token: str, word: str) -> str:
    """`token` with its word replaced by `word`, punctuation kept ('red,' -> 'blue,')."""
    start = len(token) - len(token.lstrip(".,;:!?\"'()"))
    end = len(token.rstrip(".,;:!?\"'()"))
    return token[:start] + word + token[end:]


def same_caption(a: str, b: str) -> bool:
    """NegCLIP's `check_same`: equal once "." and "," are removed and spacing is normalised."""
    def norm(text: str) -> str:
        return " ".join(text.replace(".", "").replace(",", "").split())
    return norm(a) == norm(b)


def _swap_tokens(tokens: list[str], positions: list[int], rng: np.random.Generator) -> str | None:
    """Exchange the words at two of `positions` whose words differ (NegCLIP's `swapper`); None if none differ."""
    pairs = [(a, b) for i, a in enumerate(positions) for b in positions[i + 1:]
             if _core(tokens[a]) != _core(tokens[b])]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    out = list(tokens)
    out[a], out[b] = _replace_core(tokens[a], _core(tokens[b])), _replace_core(tokens[b], _core(tokens[a]))
    return " ".join(out)


def attribute_swap(text: str, vocab: NegativeVocabulary, rng: np.random.Generator) -> str | None:
    """Two different attribute words exchanged ('a red star and a blue ring' -> 'a blue star and a red ring')."""
    tokens = _tokens(text)
    return _swap_tokens(tokens, [k for k, t in enumerate(tokens) if _core(t) in vocab.attributes], rng)


def noun_swap(text: str, vocab: NegativeVocabulary, rng: np.random.Generator) -> str | None:
    """Two different nouns exchanged ('a red star and a blue ring' -> 'a red ring and a blue star')."""
    tokens = _tokens(text)
    return _swap_tokens(tokens, [k for k, t in enumerate(tokens)
                                 if _core(t) in vocab.nouns and _core(t) not in vocab.attributes], rng)


def noun_phrases(tokens: Sequence[str], vocab: NegativeVocabulary) -> list[tuple[int, int]]:
    """[start, stop) spans of noun phrases: an optional determiner, attribute words, then one or more nouns.
    A word that is both (e.g. 'orange') is a noun only at the end of a phrase."""
    spans, k, n = [], 0, len(tokens)
    while k < n:
        j = k + (_core(tokens[k]) in DETERMINERS)
        while j < n and _core(tokens[j]) in vocab.attributes and not _ends_phrase(tokens, j, vocab):
            j += 1
        stop = j
        while stop < n and _core(tokens[stop]) in vocab.nouns:
            stop += 1
            if tokens[stop - 1][-1:] in ",.;:!?":
                break
        if stop > j:
            spans.append((k, stop))
            k = stop
        else:
            k += 1
    return spans


def _ends_phrase(tokens: Sequence[str], j: int, vocab: NegativeVocabulary) -> bool:
    """Whether the attribute-and-noun word at j ends its phrase (no noun follows it)."""
    return _core(tokens[j]) in vocab.nouns and (j + 1 >= len(tokens) or _core(tokens[j + 1]) not in vocab.nouns
                                                and _core(tokens[j + 1]) not in vocab.attributes)


def noun_phrase_swap(text: str, vocab: NegativeVocabulary, rng: np.random.Generator) -> str | None:
    """Two noun phrases of more than two words exchanged, as NegCLIP's `shuffle_noun_phrase` (in a relation
    caption this swaps subject and object: 'a red star left of a blue ring' -> 'a blue ring left of a red star')."""
    tokens = _tokens(text)
    spans = [s for s in noun_phrases(tokens, vocab) if s[1] - s[0] > 2]
    texts = [" ".join(_core(t) for t in tokens[a:b]) for a, b in spans]
    pairs = [(i, j) for i in range(len(spans)) for j in range(i + 1, len(spans)) if texts[i] != texts[j]]
    if not pairs:
        return None
    i, j = pairs[int(rng.integers(len(pairs)))]
    (a0, a1), (b0, b1) = spans[i], spans[j]
    first, second = tokens[a0:a1], tokens[b0:b1]
    # punctuation stuck to a phrase's last word stays where it was
    first_end, second_end = first[-1][len(first[-1].rstrip(",.;:!?")):], second[-1][len(second[-1].rstrip(",.;:!?")):]
    first, second = _with_end(second, first_end), _with_end(first, second_end)
    return " ".join(tokens[:a0] + first + tokens[a1:b0] + second + tokens[b1:])


def _with_end(words: list[str], end: str) -> list[str]:
    out = list(words)
    out[-1] = out[-1].rstrip(",.;:!?") + end
    return out


def relation_swap(text: str, vocab: NegativeVocabulary, rng: np.random.Generator) -> str | None:
    """Two different relation phrases exchanged ('a star left of a ring and a cup above a box' -> '... above a
    ring and a cup left of a box'); our stand-in for NegCLIP's verb-phrase swap."""
    alternatives = "|".join(re.escape(r) for r in sorted(vocab.relations, key=len, reverse=True))
    found = list(re.finditer(rf"(?<![A-Za-z])(?:{alternatives})(?![A-Za-z])", text, flags=re.I))
    pairs = [(a, b) for i, a in enumerate(found) for b in found[i + 1:] if a[0].lower() != b[0].lower()]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    return text[:a.start()] + b[0] + text[a.end():b.start()] + a[0] + text[b.end():]


def word_shuffle(text: str, vocab: NegativeVocabulary, rng: np.random.Generator) -> str | None:
    """The caption's words in a random other order (ARO's `shuffle_all_words`); None under 2 distinct words."""
    words = text.split(" ")
    if len({w for w in words if w}) < 2:
        return None
    shuffled = [words[k] for k in rng.permutation(len(words))]
    if shuffled == words:  # the identity permutation: exchange two different words instead
        other = next(k for k, word in enumerate(shuffled) if word != shuffled[0])
        shuffled[0], shuffled[other] = shuffled[other], shuffled[0]
    return " ".join(shuffled)


NEGATIVE_KINDS: dict[str, Callable[[str, NegativeVocabulary, np.random.Generator], str | None]] = {
    "noun_phrase_swap": noun_phrase_swap,
    "noun_swap": noun_swap,
    "attribute_swap": attribute_swap,
    "relation_swap": relation_swap,
    "word_shuffle": word_shuffle,
}
"""Negative makers by kind; each returns None when the caption allows no such negative."""


def hard_negatives(text: str, kinds: Sequence[str], vocab: NegativeVocabulary,
                   rng: np.random.Generator) -> list[str]:
    """Up to one negative per kind, in `kinds` order, without those equal to the caption (`check_same`)."""
    out = []
    for kind in kinds:
        negative = NEGATIVE_KINDS[kind](text, vocab, rng)
        if negative is not None and not same_caption(negative, text):
            out.append(negative)
    return out


def draw_negative(text: str, kinds: Sequence[str], vocab: NegativeVocabulary,
                  rng: np.random.Generator) -> str | None:
    """One of the caption's hard negatives at random (neg_clip's `random.choice`), None when it has none."""
    options = hard_negatives(text, kinds, vocab, rng)
    return options[int(rng.integers(len(options)))] if options else None
