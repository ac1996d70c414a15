"""The simulated vision-language captioner (the `longcap` stage's `simulated` backend, where a scene exists).

The simulated captioner stands in for a multimodal model looking at the image, so it writes from the scene's
ground truth, with an error rate: a wrong caption describes the scene with one attribute changed (a
hallucination). What it must not do is write in the evaluation's
words: if its captions reused the zero-shot prompt forms ("a photo of a {}.", "a drawing of a {}.") or the
retrieval and compositional captions ("a red star left of a blue ring on grass", "the star is left of the
ring"), a model trained on them
would score by template matching, not by what it learned (issue 8). So every frame here is its own: objects
are "set against" a backdrop rather than "on a background", relations are sentences ("The red star lies to
the left of the blue ring."), and the backdrop has names of its own. `tests/curation/world/test_captioner.py`
checks that no word 4-gram of these captions (vocabulary words masked) occurs in any eval text.

A scene is a truth row of :mod:`curation.world.scenes` as a dict: ``background``, ``objects`` (shape, colour,
size, texture, x, y) and ``relations`` (subject, relation, object).
"""

from __future__ import annotations

import copy

import numpy as np

from curation.grammar import articles
from curation.world.shapes import SHAPES
from curation.world.vocabulary import COLOURS

BACKDROPS: dict[str, str] = {
    "white": "plain white", "gray": "flat gray", "black": "deep black", "stripes": "a striped pattern",
    "checkerboard": "checkered tiles", "gradient": "a soft fade", "dots": "a spotted pattern",
    "grass": "a grassy field", "sand": "sandy ground", "water": "rippling water",
}
"""How the captioner names each background (never the eval's "on a ... background")."""

FILLS: dict[str, str] = {
    "solid": "evenly filled", "striped": "with a striped fill", "dotted": "with a dotted fill",
    "outlined": "drawn as an outline",
}
"""How the captioner describes each texture."""

RELATION_PHRASES: dict[str, str] = {
    "left of": "lies to the left of", "right of": "lies to the right of", "above": "sits above",
    "below": "sits below",
}
"""Relations as the captioner's verbs (the eval writes "X left of a Y")."""

SHORT_FRAMES: tuple[str, ...] = (
    "{p} set against {bg}", "close-up: {p} over {bg}", "one {p} shown by itself", "{p} placed over {bg}",
    "centred {p} with {bg} behind it", "illustration featuring one {p}", "{p} rendered over {bg}",
    "single {p} against {bg}",
)
"""One-object frames of the short (ALIP synthetic) caption; {p} is the object, {bg} the backdrop."""

OPENERS: tuple[str, ...] = (
    "Here we see {n} {noun} set against {bg}.", "{N} {noun} {verb} out against {bg}.",
)
"""First sentence of a long caption: how many figures, and the backdrop."""

COUNTS: tuple[str, ...] = ("no", "one", "two", "three", "four")


def _place(x: float, y: float) -> str:
    """Coarse position of a centre in [0, 1]^2, in the captioner's words ('in the upper left part')."""
    row = "upper" if y < 0.4 else "lower" if y > 0.6 else ""
    col = "left" if x < 0.4 else "right" if x > 0.6 else ""
    if not row and not col:
        return "close to the centre"
    return f"in the {' '.join(w for w in (row, col) if w)} part"


def figure(obj: dict, size: bool) -> str:
    """'large red star' (size optional; colour always, as a captioner sees it)."""
    return " ".join(w for w in (obj["size"] if size else None, obj.get("colour"), obj["shape"]) if w)


def short_caption(scene: dict, rng: np.random.Generator) -> str:
    """One short sentence about the main object (objects[0]) and the backdrop."""
    frame = SHORT_FRAMES[int(rng.integers(len(SHORT_FRAMES)))]
    obj = scene["objects"][0]
    return articles(frame.format(p=figure(obj, bool(rng.random() < 0.3)), bg=BACKDROPS[scene["background"]]))


def long_caption(scene: dict, rng: np.random.Generator) -> str:
    """Several sentences (at least three): the count and backdrop, each figure, each relation."""
    objects = scene["objects"]
    n = len(objects)
    opener = OPENERS[int(rng.integers(len(OPENERS)))]
    sentences = [opener.format(n=COUNTS[n], N=COUNTS[n].capitalize(), noun="figure" if n == 1 else "figures",
                               verb="stands" if n == 1 else "stand", bg=BACKDROPS[scene["background"]])]
    for i, obj in enumerate(objects):
        lead = "It is" if n == 1 else "One of them is" if i == 0 else "Another is"
        sentences.append(articles(f"{lead} a {figure(obj, True)}, {FILLS[obj['texture']]}, "
                                  f"{_place(obj['x'], obj['y'])}."))
    for r in scene["relations"]:
        subject, other = objects[r["subject"]], objects[r["object"]]
        sentences.append(f"The {figure(subject, False)} {RELATION_PHRASES[r['relation']]} the "
                         f"{figure(other, False)}.")
    if len(sentences) < 3:
        sentences.append("Nothing else appears in the picture.")
    return " ".join(sentences)


def corrupt(scene: dict, rng: np.random.Generator, index: int | None = None,
            avoid: frozenset[str] = frozenset()) -> dict:
    """A copy of a scene with one wrong attribute of one object (a hallucination): its colour becomes
    one absent from the scene (and from `avoid`), or its shape when the colour is unknown."""
    out = copy.deepcopy(scene)
    if not out["objects"]:
        return out
    obj = out["objects"][int(rng.integers(len(out["objects"]))) if index is None else index]
    attr, vocab = ("colour", COLOURS) if obj.get("colour") is not None else ("shape", SHAPES)
    present = {o.get(attr) for o in out["objects"]} | {out.get("background")} | avoid
    choices = [v for v in vocab if v not in present]
    obj[attr] = choices[int(rng.integers(len(choices)))]
    return out


CAPTION_STYLES = {"short": short_caption, "long": long_caption}
"""What the captioner writes: ALIP's short synthetic caption, DreamLIP's long one."""


def caption_scene(scene: dict, rng: np.random.Generator, style: str, error_rate: float) -> str:
    """A caption of a scene in one of CAPTION_STYLES; with probability `error_rate` one attribute is wrong."""
    # short captions describe objects[0], so that is where a short caption's error must land
    wrong = rng.random() < error_rate
    seen = corrupt(scene, rng, 0 if style == "short" else None) if wrong else scene
    return CAPTION_STYLES[style](seen, rng)
