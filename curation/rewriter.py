"""The simulated text-only LLM: LaCLIP's rewriter stand-in, and the captioner's fallback where no scene exists.

LaCLIP ("Improving CLIP Training with Language Rewrites", Fan et al. 2023) rewrites each caption with an LLM
that sees the caption alone. So does this module: every function takes a caption's text and a generator,
and nothing here imports the synthetic world (`tests/curation/test_rewriter.py` checks it), so it cannot
read a scene's truth. It may reorder, paraphrase, drop or (at its error rate) distort what a caption says,
never correct it: a wrong alt-text stays wrong.
"""

from __future__ import annotations

import re

import numpy as np

from curation.grammar import articles

INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

PARAPHRASE_FRAMES: tuple[str, ...] = (
    "{t}", "a picture of {t}", "an image showing {t}", "this image shows {t}", "{t}, as seen in the image",
    "a photo with {t}",
)
"""Frames of a rewrite; each of the k rewrites of a caption uses a different one where k allows."""

SYNONYMS: dict[str, tuple[str, ...]] = {
    "photo": ("picture", "image", "snapshot"), "picture": ("photo", "image"), "image": ("picture", "photo"),
    "small": ("little", "tiny"), "large": ("big", "huge"), "big": ("large",), "little": ("small",),
    "drawing": ("sketch", "illustration"), "shows": ("depicts", "displays"), "with": ("featuring",),
    "beautiful": ("lovely", "pretty"), "free": ("complimentary",), "buy": ("purchase",),
}
"""Word substitutions of the lexical paraphraser."""

ENGLISH_COLOURS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "grey",
    "cyan", "magenta", "violet", "beige", "gold", "silver", "teal", "navy",
)
"""Colour words an LLM knows from English (not the synthetic world's list): what a distortion swaps."""

SIZE_SWAPS: dict[str, str] = {"small": "large", "large": "small", "little": "big", "big": "little",
                              "tiny": "huge", "huge": "tiny"}
"""Size words a distortion flips when the caption names no colour."""

RELATION_PATTERN = re.compile(r"^(?P<a>(?:an? )?[a-z ]+?) (?P<rel>left of|right of|above|below) "
                              r"(?P<b>an? [a-z ]+?)(?P<rest> on .+)?$")
"""A caption of one relation between two plain noun phrases ('a red star left of a ring on grass')."""

TRAILING_SETTING = re.compile(r" on [a-z ]+$")
"""A trailing 'on ...' phrase (the setting), which a rewrite may drop."""


FRAME_PREFIX = re.compile(r"^(an?|the)\s+(photo|picture|image|drawing|snapshot)\s+(of|showing|with)\s+", re.I)


def _swap_words(body: str, rng: np.random.Generator) -> str:
    def swap(match: re.Match) -> str:
        word = match.group(0)
        options = SYNONYMS.get(word.lower())
        return options[int(rng.integers(len(options)))] if options and rng.random() < 0.7 else word

    return re.sub(r"[A-Za-z]+", swap, body)


def _body(text: str) -> str:
    """The caption without its frame ('a photo of ...') and final full stop, lower-cased at the start."""
    body = FRAME_PREFIX.sub("", text.strip().rstrip("."))
    if body[:1].isupper() and body[1:2].islower():  # 'Buy ...' -> 'buy ...', but 'IMG_2034' stays
        body = body[0].lower() + body[1:]
    return body


def paraphrase(text: str, rng: np.random.Generator, frame: int) -> str:
    """Lexical paraphrase: synonyms for known words, re-framed by one of PARAPHRASE_FRAMES."""
    body = _swap_words(_body(text), rng)
    return articles(PARAPHRASE_FRAMES[frame % len(PARAPHRASE_FRAMES)].format(t=body))


def reorder_relation(body: str) -> str | None:
    """'a red star left of a ring on grass' -> 'a ring right of a red star on grass'; None if no such form."""
    match = RELATION_PATTERN.match(body)
    if match is None or any(f" {w} " in f" {match['a']} {match['b']} " for w in ("and", "is", "are", "the")):
        return None  # only two plain noun phrases: 'the star is left of ...' is left as it is
    subject = match["a"] if match["a"].startswith(("a ", "an ")) else "a " + match["a"]
    return f"{match['b']} {INVERSE_RELATION[match['rel']]} {subject}{match['rest'] or ''}"


def distort(body: str, rng: np.random.Generator) -> str:
    """One wrong word, as an LLM's hallucination: a colour word becomes another colour the caption does not
    name, or (no colour named) a size word flips. Unchanged when the caption names neither."""
    words = body.split(" ")
    colours = [k for k, w in enumerate(words) if w.lower() in ENGLISH_COLOURS]
    if colours:
        named = {w.lower() for w in words}
        k = colours[int(rng.integers(len(colours)))]
        choices = [c for c in ENGLISH_COLOURS if c not in named and c != "grey"]
        words[k] = choices[int(rng.integers(len(choices)))]
        return " ".join(words)
    sizes = [k for k, w in enumerate(words) if w.lower() in SIZE_SWAPS]
    if sizes:
        k = sizes[int(rng.integers(len(sizes)))]
        words[k] = SIZE_SWAPS[words[k].lower()]
    return " ".join(words)


def rewrite_caption(text: str, rng: np.random.Generator, frame: int, error_rate: float) -> str:
    """One text-only rewrite (LaCLIP's LLM stand-in): the caption's own content, maybe reordered (a relation
    stated from its other side), maybe without its trailing setting, with synonyms, in another frame; with
    probability `error_rate` one word distorted. It reads the caption alone, so it never corrects it."""
    body = _body(text)
    if rng.random() < 0.5:
        body = reorder_relation(body) or body
    trimmed = TRAILING_SETTING.sub("", body)
    if rng.random() < 0.25 and trimmed != body and trimmed.strip():
        body = trimmed
    if rng.random() < error_rate:
        body = distort(body, rng)
    body = _swap_words(body, rng)
    return articles(PARAPHRASE_FRAMES[frame % len(PARAPHRASE_FRAMES)].format(t=body))


def long_paraphrase(text: str, rng: np.random.Generator) -> str:
    """Three sentences built from the text alone (no image understanding without truth)."""
    first, second = paraphrase(text, rng, 3), paraphrase(text, rng, int(rng.integers(1, 3)))
    original = text.strip().rstrip(".")
    return f"{first[0].upper() + first[1:]}. In short, {second}. The original caption reads: {original}."
