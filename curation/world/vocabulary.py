"""The synthetic world's words: its shapes, colours, sizes, textures, backgrounds and relations, and the
MetaCLIP-style metadata built from them."""

from __future__ import annotations

from curation.world.shapes import SHAPES

__all__ = ["ADJECTIVES", "BACKGROUNDS", "BACKGROUND_MEAN", "BACKGROUND_NOUNS", "BACKGROUND_PHRASES", "COLOURS",
           "COLOUR_RGB", "DISTRACTOR_ENTRIES", "NOUNS", "RELATIONS", "SIZES", "TEXTURES", "metadata_entries"]

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (245, 220, 30), "green": (40, 170, 60),
    "blue": (30, 70, 220), "purple": (130, 50, 180), "pink": (245, 120, 190), "brown": (130, 80, 35),
    "black": (20, 20, 20), "white": (250, 250, 250), "gray": (128, 128, 128), "cyan": (30, 200, 220),
}
"""Nominal RGB of each object colour (rendered with a small per-object jitter)."""
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)

BACKGROUND_PHRASES: dict[str, str] = {
    "white": "a white background",
    "gray": "a gray background",
    "black": "a black background",
    "stripes": "a background of stripes",
    "checkerboard": "a checkerboard",
    "gradient": "a smooth gradient",
    "dots": "a background of dots",
    "grass": "grass",
    "sand": "sand",
    "water": "water",
}
"""How a caption names each background of the world."""
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_PHRASES)

SIZES: tuple[str, ...] = ("small", "medium", "large")
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "outlined")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

BACKGROUND_NOUNS: tuple[str, ...] = ("background", "stripes", "checkerboard", "gradient", "dots", "grass", "sand",
                                     "water")
"""The nouns of BACKGROUND_PHRASES (their other words are colours, 'smooth', 'a' and 'of')."""
NOUNS: frozenset[str] = frozenset({*SHAPES, *BACKGROUND_NOUNS})
"""Caption words that are nouns: what ARO's spaCy tagger marks NN/NNS, known here from the vocabulary."""
ADJECTIVES: frozenset[str] = frozenset({*COLOURS, *SIZES, *TEXTURES, "smooth"})
"""Caption words that are adjectives (ARO's JJ): colours, sizes, textures and the gradient's 'smooth'. Relation
words ('left', 'of', 'above') and function words are neither."""

BACKGROUND_MEAN: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 242), "gray": (128, 128, 128), "black": (25, 25, 25), "stripes": (215, 215, 215),
    "checkerboard": (215, 215, 215), "gradient": (215, 215, 215), "dots": (225, 225, 225),
    "grass": (70, 140, 55), "sand": (215, 190, 140), "water": (50, 110, 190),
}
"""Nominal mean colour of each background, to keep objects visible against it."""

DISTRACTOR_ENTRIES: tuple[str, ...] = (
    "giraffe", "violin", "hexagon", "teal", "magenta", "tuxedo", "volcano", "submarine", "octopus",
    "pyramid", "saxophone", "lavender", "penguin", "skyscraper", "maroon", "snowflake",
)
"""Metadata entries that never occur in the world (MetaCLIP's metadata is mostly unmatched too)."""


def metadata_entries() -> list[str]:
    """MetaCLIP-style metadata of the world: shapes, colours, 'colour shape' pairs, backgrounds,
    size and texture words, relations, and distractors that never occur. Sorted, unique."""
    entries = {*SHAPES, *COLOURS, *SIZES, *TEXTURES, *RELATIONS, *DISTRACTOR_ENTRIES}
    entries |= {f"{c} {s}" for c in COLOURS for s in SHAPES}
    entries |= {BACKGROUND_PHRASES[b].removeprefix("a ") for b in BACKGROUNDS}
    entries |= set(BACKGROUNDS)
    return sorted(entries)
