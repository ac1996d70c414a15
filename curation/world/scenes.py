"""Scene graphs of the synthetic world: how many objects, which shapes and colours (long-tailed or
uniform), sizes, textures, a background they stand out on, a layout, and the relations between objects
that share a row or a column. A scene is a truth row as a dict (``truth.to_pylist()[i]``):
``background``, ``objects`` (shape, colour, size, texture, x, y) and ``relations`` (subject, relation,
object); TRUTH_SCHEMA is its table."""

from __future__ import annotations

import bisect
import itertools
from functools import lru_cache

import numpy as np
import pyarrow as pa

from curation.world.shapes import SHAPES
from curation.world.vocabulary import BACKGROUND_MEAN, BACKGROUNDS, COLOUR_RGB, COLOURS, SIZES, TEXTURES

MIN_CONTRAST = 95.0
"""Least RGB distance between an object's colour and its background's mean (green on grass is out)."""

SIZE_SCALE: dict[int, tuple[float, float, float]] = {1: (0.44, 0.58, 0.74), 2: (0.36, 0.42, 0.48)}
"""Object box side / image side for (small, medium, large), alone (1) or with others (2+)."""
SIZE_PROBS: dict[int, tuple[float, float, float]] = {1: (0.15, 0.45, 0.40), 2: (0.45, 0.35, 0.20)}
"""Size distribution alone (mostly medium/large, so the silhouette is clear) and with others."""


@lru_cache(maxsize=64)
def zipf_probs(n: int, a: float, seed: int) -> tuple[float, ...]:
    """Zipf weights k^-a over n items, assigned to ranks by a seeded permutation."""
    weights = np.arange(1, n + 1, dtype=float) ** -a
    ranks = np.random.default_rng([seed, 7919]).permutation(n)
    return tuple(float(w) for w in weights[ranks] / weights.sum())


CONTRAST = np.linalg.norm(np.array([BACKGROUND_MEAN[b] for b in BACKGROUNDS], dtype=float)[:, None]
                          - np.array([COLOUR_RGB[c] for c in COLOURS], dtype=float)[None], axis=2)
"""(backgrounds, colours) RGB distance between a background's mean and an object colour."""


def _background_for(colours: np.ndarray, rng: np.random.Generator) -> str:
    """A uniform background among those on which every colour (indices) stands out, else the best one."""
    worst = CONTRAST[:, colours].min(axis=1)
    ok = np.flatnonzero(worst >= MIN_CONTRAST)
    return BACKGROUNDS[ok[rng.integers(len(ok))]] if len(ok) else BACKGROUNDS[int(worst.argmax())]


@lru_cache(maxsize=256)
def _cdf(p: tuple[float, ...]) -> tuple[tuple[float, ...], int]:
    """Cumulative probabilities of p and how many items are possible."""
    total = sum(p)
    return tuple(itertools.accumulate(q / total for q in p)), sum(q > 0 for q in p)


def draw(rng: np.random.Generator, p: tuple[float, ...], n: int, distinct: bool = False) -> list[int]:
    """n indices from probabilities p by inverse CDF (rng.choice(p=...) costs more than a render);
    `distinct` redraws repeats."""
    cdf, possible = _cdf(p)
    if distinct and n > possible:
        raise ValueError(f"cannot draw {n} distinct items from {possible} possible ones")
    out: list[int] = []
    while len(out) < n:
        k = min(bisect.bisect_right(cdf, rng.random()), len(cdf) - 1)
        if not (distinct and k in out):
            out.append(k)
    return out


def _layout(n: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Object centres (n, 2) in [0, 1]: free alone, in two halves for two, three cells of a 2x2 grid."""
    if n == 1:
        margin = 0.5 * scale * 1.05
        return rng.uniform(margin, 1 - margin, size=(1, 2))
    if n == 2:
        along = np.array([0.27, 0.73])[rng.permutation(2)] + rng.uniform(-0.03, 0.03, 2)
        across = 0.5 + rng.uniform(-0.08, 0.08, 2)
        pts = np.stack([along, across], axis=1)
        return pts if rng.random() < 0.5 else pts[:, ::-1]
    cells = np.array([(0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73)])
    return cells[rng.permutation(4)[:n]] + rng.uniform(-0.03, 0.03, size=(n, 2))


def _relations(centres: np.ndarray) -> list[dict]:
    """Relations between objects sharing a row or a column (diagonal pairs are left out)."""
    out = []
    for i in range(len(centres)):
        for j in range(i + 1, len(centres)):
            dx, dy = centres[j] - centres[i]
            if abs(dx) > 2 * abs(dy):
                out.append({"subject": i, "relation": "left of" if dx > 0 else "right of", "object": j})
            elif abs(dy) > 2 * abs(dx):
                out.append({"subject": i, "relation": "above" if dy > 0 else "below", "object": j})
    return out


def sample_scene(rng: np.random.Generator, shape_p: tuple[float, ...], colour_p: tuple[float, ...],
                 count_p: tuple[float, ...], texture_p: tuple[float, ...], distinct_colours: bool = False
                 ) -> dict:
    """A scene graph: background, objects (distinct shapes) and relations, as a truth row without uid.
    shape_p, colour_p, count_p (1, 2, 3 objects) and texture_p are probabilities, normalised here."""
    n = draw(rng, count_p, 1)[0] + 1
    shapes = draw(rng, shape_p, n, distinct=True)
    colours = draw(rng, colour_p, n, distinct=distinct_colours)
    background = _background_for(np.array(colours), rng)
    key = min(n, 2)
    sizes = draw(rng, SIZE_PROBS[key], n)
    textures = draw(rng, texture_p, n)
    centres = _layout(n, SIZE_SCALE[key][max(sizes)], rng)
    objects = [{"shape": SHAPES[s], "colour": COLOURS[c], "size": SIZES[z], "texture": TEXTURES[t],
                "x": float(x), "y": float(y)}
               for s, c, z, t, (x, y) in zip(shapes, colours, sizes, textures, centres, strict=True)]
    return {"background": background, "objects": objects, "relations": _relations(centres)}


OBJECT_TYPE = pa.struct([
    ("shape", pa.string()), ("colour", pa.string()), ("size", pa.string()), ("texture", pa.string()),
    ("x", pa.float32()), ("y", pa.float32()),
])
RELATION_TYPE = pa.struct([("subject", pa.int32()), ("relation", pa.string()), ("object", pa.int32())])
TRUTH_SCHEMA = pa.schema([
    ("uid", pa.string()), ("background", pa.string()), ("objects", pa.list_(OBJECT_TYPE)),
    ("relations", pa.list_(RELATION_TYPE)), ("text_kind", pa.string()),
])
"""The ground truth: a scene graph per image, and which ALT_TEXT_KINDS its alt-text is."""
