"""Text side of the synthetic world: faithful descriptions of a scene and web-like alt-texts.

A scene is a truth row of :mod:`curation.world.scenes` as a dict (``truth.to_pylist()[i]``):
``background``, ``objects`` (shape, colour, size, texture, x, y) and ``relations``
(subject, relation, object). Nothing here renders or draws scenes, so :func:`describe` works on any
truth row (the eval sets' retrieval captions use it).

The alt-text mixture imitates what CLIP-scale web crawls hold (cf. the noise taxonomy of
DataComp and MetaCLIP): partial but true captions, verbose ones, shopping boilerplate around a
concept, captions of other images, file names, empty or truncated text, and typos.

Fixed template words avoid containing any vocabulary word as a substring ("covered" holds "red",
"across" holds "cross"), so MetaCLIP's substring matching counts only the concepts placed there.
"""

from __future__ import annotations

import numpy as np

from curation.grammar import articles
from curation.world.vocabulary import BACKGROUND_PHRASES

TEXTURE_PHRASES: dict[str, str] = {
    "solid": "filled solid",
    "striped": "striped inside",
    "dotted": "dotted inside",
    "outlined": "outlined around a pale fill",
}
"""How a long caption describes each texture (naming the texture word, for substring matching)."""

COUNT_WORDS: tuple[str, ...] = ("no", "one", "two", "three", "four")

SHORT_TEMPLATES: tuple[str, ...] = (
    "a {obj}", "{obj}", "a photo of a {obj}", "a drawing of a {obj}", "a {obj} on {bg}",
    "a picture of a {obj}", "{obj} on {bg}", "a simple {obj}",
)
"""One-object captions (the zero-shot prompts of the eval stage are among them)."""

BOILERPLATE: tuple[str, ...] = (
    "Buy {c} {s} sticker online - free shipping!",
    "{S} clipart free download",
    "{c} {s} icon vector illustration isolated",
    "Vintage {s} pattern wallpaper HD",
    "Shop the best {s} decals | fast delivery",
    "{s} png transparent image",
    "Cute {c} {s} t-shirt design for kids",
    "How to draw a {s} - easy step by step tutorial",
    "{S} emoji meaning, copy and paste",
    "Stock photo: {c} {s} on {bg}",
    "{c} {s} logo template - editable vector",
    "Top 10 {s} ideas you will love",
)
"""Shopping and SEO boilerplate around a concept ({s} shape, {S} capitalised, {c} colour)."""

CONCEPTLESS_BOILERPLATE: tuple[str, ...] = (
    "Best deals of the week - click here",
    "{c} wallpaper hd free download",
    "Home decor ideas 2021",
    "Image may contain: text",
    "Sale! 50% off all items",
)
"""Boilerplate that names no shape."""

VAGUE_TEMPLATES: tuple[str, ...] = (
    "a {c} shape", "something {c}", "abstract {c} art", "a thing on {bg}", "simple shapes",
    "{c} object, {bg}", "geometric art", "untitled",
)
"""True but uninformative captions that name no shape."""


PARTIAL_COLOUR_RATE = 0.35
"""Share of partial (one-object) alt-texts that name the object's colour."""


def object_phrase(obj: dict, size: bool = False, texture: bool = False, colour: bool = True) -> str:
    """'small striped red star': optional size, (non-solid) texture and colour, then the shape."""
    words = [obj["size"]] if size else []
    if texture and obj["texture"] != "solid":
        words.append(obj["texture"])
    if colour:
        words.append(obj["colour"])
    return " ".join([*words, obj["shape"]])


def _position_phrase(x: float, y: float) -> str:
    """Coarse position of a centre in [0, 1]^2, e.g. 'towards the top left'."""
    row = "top" if y < 0.4 else "bottom" if y > 0.6 else ""
    col = "left" if x < 0.4 else "right" if x > 0.6 else ""
    where = " ".join(w for w in (row, col) if w)
    return f"towards the {where}" if where else "near the middle"


def _join(parts: list[str]) -> str:
    if len(parts) <= 2:
        return " and ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _short(truth: dict, rng: np.random.Generator, colour_rate: float = 1.0) -> str:
    """One-object caption of the main object (objects[0])."""
    obj = truth["objects"][0]
    template = SHORT_TEMPLATES[rng.integers(len(SHORT_TEMPLATES))]
    with_size = bool(rng.random() < 0.25)
    # Web alt-text often names the object alone ("star clipart"); captions that always name the colour
    # let a contrastive model match on colour and never learn shape (measured: zero-shot at chance).
    with_colour = bool(rng.random() < colour_rate)
    phrase = object_phrase(obj, size=with_size, texture=bool(rng.random() < 0.25), colour=with_colour)
    return template.format(obj=phrase, bg=BACKGROUND_PHRASES[truth["background"]])


def _full(truth: dict, rng: np.random.Generator) -> str:
    """One sentence naming every object, every relation and the background."""
    objects, named = truth["objects"], set()

    def ref(i: int) -> str:
        if i in named:
            return "the " + object_phrase(objects[i])
        named.add(i)
        return "a " + object_phrase(objects[i], size=True, texture=True)

    parts = [f"{ref(r['subject'])} {r['relation']} {ref(r['object'])}" for r in truth["relations"]]
    parts += [ref(i) for i in range(len(objects)) if i not in named]
    return f"{_join(parts)} on {BACKGROUND_PHRASES[truth['background']]}"


def _long(truth: dict, rng: np.random.Generator) -> str:
    """Several sentences (at least three): count and background, each object, relations."""
    objects = truth["objects"]
    noun = "object" if len(objects) == 1 else "objects"
    opener = ("The image shows {n} {noun} on {bg}.", "This picture contains {n} {noun} on {bg}.")
    sentences = [opener[rng.integers(2)].format(
        n=COUNT_WORDS[len(objects)], noun=noun, bg=BACKGROUND_PHRASES[truth["background"]])]
    for i, obj in enumerate(objects):
        lead = "There is" if i == 0 else "There is also"
        sentences.append(f"{lead} a {obj['size']} {obj['colour']} {obj['shape']} "
                         f"{_position_phrase(obj['x'], obj['y'])}, {TEXTURE_PHRASES[obj['texture']]}.")
    for r in truth["relations"]:
        subject, obj = objects[r["subject"]], objects[r["object"]]
        sentences.append(f"The {object_phrase(subject)} is {r['relation']} the {object_phrase(obj)}.")
    if len(sentences) < 3:
        sentences.append(f"Nothing else is in the scene besides {BACKGROUND_PHRASES[truth['background']]}.")
    return " ".join(sentences)


DESCRIBE_STYLES = {"short": _short, "full": _full, "long": _long}
"""Caption styles of :func:`describe`: one object, one full sentence, several sentences."""


def describe(truth: dict, rng: np.random.Generator, style: str) -> str:
    """A faithful caption of a truth row in one of DESCRIBE_STYLES."""
    if style not in DESCRIBE_STYLES:
        raise ValueError(f"unknown caption style {style!r}; choose from {sorted(DESCRIBE_STYLES)}")
    return articles(DESCRIBE_STYLES[style](truth, rng))


def boilerplate(truth: dict, rng: np.random.Generator, conceptless_rate: float = 0.1) -> str:
    """Shopping/SEO text around the main object's concept (sometimes around nothing)."""
    obj = truth["objects"][0]
    pool = CONCEPTLESS_BOILERPLATE if rng.random() < conceptless_rate else BOILERPLATE
    template = pool[rng.integers(len(pool))]
    return articles(template.format(s=obj["shape"], S=obj["shape"].capitalize(), c=obj["colour"],
                                    bg=BACKGROUND_PHRASES[truth["background"]]))


def vague(truth: dict, rng: np.random.Generator) -> str:
    """A true caption that names a colour or the background but no shape."""
    template = VAGUE_TEMPLATES[rng.integers(len(VAGUE_TEMPLATES))]
    colour, background = truth["objects"][0]["colour"], BACKGROUND_PHRASES[truth["background"]]
    return articles(template.format(c=colour, bg=background))


def junk(rng: np.random.Generator) -> str:
    """A camera or download file name, as alt-text often is."""
    n = int(rng.integers(10, 99999))
    forms = (
        f"IMG_{n:04d}.jpg", f"DSC{n:05d}", f"image ({n % 20}).png", f"untitled-{n % 9}",
        f"photo_{2010 + n % 14}-{1 + n % 12:02d}-{1 + n % 28:02d}.jpeg", f"thumb_{n}_500x500",
        f"Screenshot {2015 + n % 9}-0{1 + n % 9} at {n % 24}.{n % 60:02d}", f"{n:x}.webp",
    )
    return forms[rng.integers(len(forms))]


def truncate(text: str, rng: np.random.Generator) -> str:
    """Cut a caption at 30-80% of its length, usually mid-word (broken scraping)."""
    if len(text) < 4:
        return text
    cut = int(len(text) * rng.uniform(0.3, 0.8))
    return text[:max(cut, 1)]


def add_typos(text: str, rng: np.random.Generator, max_swaps: int = 2) -> str:
    """Swap one or two pairs of adjacent letters (keyboard slips)."""
    chars = list(text)
    spots = [i for i in range(len(chars) - 1) if chars[i].isalpha() and chars[i + 1].isalpha()]
    if not spots:
        return text
    for _ in range(int(rng.integers(1, max_swaps + 1))):
        i = spots[rng.integers(len(spots))]
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def alt_text(kind: str, truth: dict, other: dict, rng: np.random.Generator) -> str:
    """An alt-text of one ALT_TEXT_KINDS kind for a scene; `other` is another image's scene."""
    if kind == "partial":
        return articles(_short(truth, rng, colour_rate=PARTIAL_COLOUR_RATE))
    if kind == "verbose":
        return describe(truth, rng, "long" if rng.random() < 0.3 else "full")
    if kind == "boilerplate":
        return boilerplate(truth, rng)
    if kind == "other_image":
        return describe(other, rng, "full" if rng.random() < 0.3 else "short")
    if kind == "junk":
        return junk(rng)
    if kind == "empty":
        return ""
    if kind == "truncated":
        return truncate(describe(truth, rng, "full"), rng)
    if kind == "vague":
        return vague(truth, rng)
    raise ValueError(f"unknown alt-text kind {kind!r}; choose from {ALT_TEXT_KINDS}")


ALT_TEXT_KINDS: tuple[str, ...] = (
    "partial", "verbose", "boilerplate", "other_image", "junk", "empty", "truncated", "vague",
)
"""The alt-text mixture's components, in the order of WorldConfig's proportion fields."""
