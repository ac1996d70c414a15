"""The synthetic world: a seeded procedural generator of small images with a known scene graph.

Each image holds one to three objects (shape, colour, size, texture) on a background, with
spatial relations between objects that share a row or a column. The raw pool is long-tailed
(Zipf-distributed shapes and colours, the shape of web data that MetaCLIP's balancing corrects)
and its alt-texts come from :mod:`curation.alttext`'s web-like mixture. The ground truth lives
in a separate table that only the simulated caption backends and `eval` may read.

Image i of a pool depends only on (seed, i), so any partitioning of [0, num_images) gives the
same rows. Shapes are silhouettes that differ at a glance: at 64x64 a small ViT cannot tell
polygons apart by their side count (a trial with such classes reached about 2x chance in seven minutes).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from curation import alttext
from curation.alttext import ALT_TEXT_KINDS, BACKGROUND_PHRASES, describe
from curation.schema import SAMPLE_SCHEMA

Primitive = tuple[str, np.ndarray, float]
"""A drawing step in unit coordinates [-1, 1]^2 (y down): ("fill" | "hole" | "line", points, width)."""


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 360.0,
         n: int = 40) -> np.ndarray:
    t = np.radians(np.linspace(a0, a1, n, endpoint=(a1 - a0) < 360))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=float)


def _poly(*points: tuple[float, float]) -> np.ndarray:
    return np.array(points, dtype=float)


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    angles = np.radians(-90 + np.arange(2 * points) * 180 / points)
    radius = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], axis=1) / 16.5


def _turn(points: np.ndarray, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return points @ np.array([[c, s], [-s, c]])


def _shape_table() -> dict[str, list[Primitive]]:
    """Every shape as drawing steps; silhouettes chosen to differ at a glance at 64x64."""
    plus = [("fill", _rect(-0.95, -0.3, 0.95, 0.3), 0), ("fill", _rect(-0.3, -0.95, 0.3, 0.95), 0)]
    return {
        "circle": [("fill", _arc(0, 0, 0.95, 0.95), 0)],
        "square": [("fill", _rect(-0.8, -0.8, 0.8, 0.8), 0)],
        "triangle": [("fill", _poly((0, -0.95), (0.95, 0.8), (-0.95, 0.8)), 0)],
        "star": [("fill", _star(5, 1.0, 0.42), 0)],
        "heart": [("fill", _heart(), 0)],
        "plus": plus,
        "cross": [(op, _turn(pts, 45), w) for op, pts, w in plus],
        "crescent": [("fill", _arc(0, 0, 0.95, 0.95), 0), ("hole", _arc(0.42, -0.2, 0.8, 0.8), 0)],
        "ring": [("fill", _arc(0, 0, 0.95, 0.95), 0), ("hole", _arc(0, 0, 0.55, 0.55), 0)],
        "arrow": [("fill", _rect(-0.95, -0.22, 0.2, 0.22), 0),
                  ("fill", _poly((0.1, -0.75), (0.98, 0), (0.1, 0.75)), 0)],
        "diamond": [("fill", _poly((0, -1), (0.62, 0), (0, 1), (-0.62, 0)), 0)],
        "ellipse": [("fill", _arc(0, 0, 1.0, 0.5), 0)],
        "pillar": [("fill", _rect(-0.28, -1, 0.28, 1), 0)],
        "dome": [("fill", _arc(0, 0.45, 1.0, 1.1, 180, 360), 0)],
        "corner": [("fill", _poly((-0.8, -0.95), (-0.25, -0.95), (-0.25, 0.4), (0.8, 0.4),
                                  (0.8, 0.95), (-0.8, 0.95)), 0)],
        "mushroom": [("fill", _arc(0, 0.05, 1.0, 0.95, 180, 360), 0),
                     ("fill", _rect(-0.28, 0, 0.28, 0.95), 0)],
        "horseshoe": [("line", np.concatenate([_poly((-0.6, -0.95)), _arc(0, 0.2, 0.6, 0.6, 180, 0, 20),
                                               _poly((0.6, -0.95))]), 0.42)],
        "hourglass": [("fill", _poly((-0.8, -0.95), (0.8, -0.95), (0.1, 0), (0.8, 0.95), (-0.8, 0.95),
                                     (-0.1, 0)), 0)],
        "lightning": [("fill", _poly((0.2, -1), (-0.6, 0.15), (-0.05, 0.15), (-0.3, 1), (0.65, -0.25),
                                     (0.1, -0.25), (0.45, -1)), 0)],
        "chevron": [("fill", _poly((-0.95, -0.7), (0, 0.1), (0.95, -0.7), (0.95, 0.05), (0, 0.85),
                                   (-0.95, 0.05)), 0)],
        "frame": [("fill", _rect(-0.9, -0.9, 0.9, 0.9), 0), ("hole", _rect(-0.5, -0.5, 0.5, 0.5), 0)],
        "droplet": [("fill", np.concatenate([_poly((0, -1)), _arc(0, 0.35, 0.62, 0.62, -20, 200, 30)]), 0)],
        "flower": [("fill", _arc(0.52 * np.cos(a), 0.52 * np.sin(a), 0.42, 0.42), 0)
                   for a in np.radians(np.arange(5) * 72 - 90)] + [("fill", _arc(0, 0, 0.4, 0.4), 0)],
        "house": [("fill", _rect(-0.7, -0.05, 0.7, 0.95), 0),
                  ("fill", _poly((-1, 0), (0, -0.95), (1, 0)), 0)],
        "bone": [("fill", _rect(-0.65, -0.2, 0.65, 0.2), 0)]
        + [("fill", _arc(sx * 0.68, sy * 0.26, 0.3, 0.3), 0) for sx in (-1, 1) for sy in (-1, 1)],
        "tree": [("fill", _poly((0, -1), (0.8, 0.45), (-0.8, 0.45)), 0),
                 ("fill", _rect(-0.18, 0.4, 0.18, 1), 0)],
    }


SHAPE_PRIMITIVES: dict[str, list[Primitive]] = _shape_table()
"""Drawing steps of every shape. Trials dropped 'cloud' and 'fish' (mistaken for dome and ellipse)."""

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "plus", "cross", "crescent", "ring", "arrow",
    "diamond", "ellipse", "pillar", "dome", "corner", "mushroom", "horseshoe", "hourglass",
    "lightning", "chevron", "frame", "droplet", "flower", "house", "bone", "tree",
)
"""Shape classes of the world (the zero-shot classes), each a distinct silhouette."""

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (245, 220, 30), "green": (40, 170, 60),
    "blue": (30, 70, 220), "purple": (130, 50, 180), "pink": (245, 120, 190), "brown": (130, 80, 35),
    "black": (20, 20, 20), "white": (250, 250, 250), "gray": (128, 128, 128), "cyan": (30, 200, 220),
}
"""Nominal RGB of each object colour (rendered with a small per-object jitter)."""
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_PHRASES)
SIZES: tuple[str, ...] = ("small", "medium", "large")
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "outlined")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

BACKGROUND_MEAN: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 242), "gray": (128, 128, 128), "black": (25, 25, 25), "stripes": (215, 215, 215),
    "checkerboard": (215, 215, 215), "gradient": (215, 215, 215), "dots": (225, 225, 225),
    "grass": (70, 140, 55), "sand": (215, 190, 140), "water": (50, 110, 190),
}
"""Nominal mean colour of each background, to keep objects visible against it."""
MIN_CONTRAST = 95.0
"""Least RGB distance between an object's colour and its background's mean (green on grass is out)."""

SIZE_SCALE: dict[int, tuple[float, float, float]] = {1: (0.44, 0.58, 0.74), 2: (0.36, 0.42, 0.48)}
"""Object box side / image side for (small, medium, large), alone (1) or with others (2+)."""
SIZE_PROBS: dict[int, tuple[float, float, float]] = {1: (0.15, 0.45, 0.40), 2: (0.45, 0.35, 0.20)}
"""Size distribution alone (mostly medium/large, so the silhouette is clear) and with others."""


@dataclass(frozen=True)
class WorldConfig:
    """The synthetic raw pool: its size, long tail and alt-text mixture."""

    num_images: int = 20000
    """images in the raw pool."""
    image_size: int = 64
    """image side in pixels (square RGB)."""
    seed: int = 0
    """world seed; image i depends only on (seed, i). Eval sets use seed + 1_000_003 and up."""
    zipf_a: float = 1.0
    """long-tail exponent: the k-th most frequent shape (and colour) has weight k^-zipf_a."""
    object_count_probs: tuple[float, ...] = (0.5, 0.3, 0.2)
    """probability of 1, 2 and 3 objects in an image."""
    texture_probs: tuple[float, ...] = (0.55, 0.15, 0.15, 0.15)
    """probability of each of TEXTURES (solid, striped, dotted, outlined)."""
    max_rotation: float = 15.0
    """objects turn uniformly in +-max_rotation degrees (small, so 'plus' and 'cross' stay apart)."""
    supersample: int = 4
    """objects are drawn at this multiple of the image size, then box-filtered down (antialiasing)."""
    p_partial: float = 0.30
    """alt-text share that is a short true caption naming the main object ('a red star')."""
    p_verbose: float = 0.16
    """share that is a full true description, with relations, sometimes several sentences."""
    p_boilerplate: float = 0.12
    """share that is shopping/SEO boilerplate around the main object's shape (10% around nothing)."""
    p_other_image: float = 0.09
    """share that is the caption of another image of the pool (wrong)."""
    p_junk: float = 0.10
    """share that is a file name ('IMG_2034.jpg', 'DSC00231')."""
    p_empty: float = 0.05
    """share that is empty."""
    p_truncated: float = 0.08
    """share that is a true full caption cut at 30-80% of its length, usually mid-word."""
    p_vague: float = 0.10
    """share that is true but names no shape ('a red shape', 'abstract red art')."""
    typo_rate: float = 0.10
    """share of non-empty, non-file-name alt-texts with one or two swapped adjacent letters."""

    def mixture(self) -> tuple[float, ...]:
        """Probabilities of ALT_TEXT_KINDS, normalised."""
        p = [float(getattr(self, f"p_{kind}")) for kind in ALT_TEXT_KINDS]
        if min(p) < 0 or sum(p) <= 0:
            raise ValueError("alt-text proportions must be non-negative and not all zero")
        return tuple(q / sum(p) for q in p)


POOL_SEED_OFFSET = 0
CLASSIFICATION_SEED_OFFSET = 1_000_003
RETRIEVAL_SEED_OFFSET = 2_000_003
COMPOSITIONAL_SEED_OFFSET = 3_000_003
"""Eval sets draw from seeds apart from the pool's, so no eval image is a pool image."""


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


def _draw(rng: np.random.Generator, p: tuple[float, ...], n: int, distinct: bool = False) -> list[int]:
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
    n = _draw(rng, count_p, 1)[0] + 1
    shapes = _draw(rng, shape_p, n, distinct=True)
    colours = _draw(rng, colour_p, n, distinct=distinct_colours)
    background = _background_for(np.array(colours), rng)
    key = min(n, 2)
    sizes = _draw(rng, SIZE_PROBS[key], n)
    textures = _draw(rng, texture_p, n)
    centres = _layout(n, SIZE_SCALE[key][max(sizes)], rng)
    objects = [{"shape": SHAPES[s], "colour": COLOURS[c], "size": SIZES[z], "texture": TEXTURES[t],
                "x": float(x), "y": float(y)}
               for s, c, z, t, (x, y) in zip(shapes, colours, sizes, textures, centres, strict=True)]
    return {"background": background, "objects": objects, "relations": _relations(centres)}


@lru_cache(maxsize=128)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (size, size) float32."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return y, x


def _pastel(rng: np.random.Generator) -> np.ndarray:
    return (0.72 * 245 + 0.28 * rng.uniform(0, 255, 3)).astype(np.float32)


@lru_cache(maxsize=256)
def _motif(name: str, size: int, cycles: int, orientation: int) -> np.ndarray:
    """Boolean (size, size) motif with `cycles` repeats per side: stripes, checks or dots."""
    y, x = _grid(size)
    period = size / cycles
    if name == "stripes":
        u = (x, y, x + y, x - y + size)[orientation]
        return (u / period) % 1 < 0.5
    if name == "checkerboard":
        return ((x // period) + (y // period)) % 2 == 0
    return (x % period - period / 2) ** 2 + (y % period - period / 2) ** 2 < (period * 0.22) ** 2


@lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed (2 size, 2 size, 1) field of standard normal grain; images take random crops of it."""
    return np.random.default_rng(20240521).standard_normal((2 * size, 2 * size, 1), dtype=np.float32)


def _crop(bank: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    oy, ox = rng.integers(0, bank.shape[0] - height + 1), rng.integers(0, bank.shape[1] - width + 1)
    return bank[oy:oy + height, ox:ox + width]


def _pattern(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """The background before grain: (size, size, 3), or (3,) for a plain colour."""
    mean = np.array(BACKGROUND_MEAN[name], dtype=np.float32)
    if name in ("stripes", "checkerboard", "dots"):
        motif = _motif(name, size, int(rng.integers(5, 9)), int(rng.integers(4)))[..., None]
        back = mean if name == "dots" else _pastel(rng) * 0.88
        return np.where(motif, _pastel(rng) * (0.85 if name == "dots" else 1.0), back)
    if name == "gradient":
        y, x = _grid(size)
        t = (x if rng.random() < 0.5 else y)[..., None] / size
        return _pastel(rng) + t * (_pastel(rng) - _pastel(rng))
    if name == "grass":  # vertical blades: grain stretched 4x along y
        streaks = np.repeat(_crop(_noise_bank(size), size // 4 + 1, size, rng), 4, axis=0)[:size]
        return mean * (1 + 0.18 * streaks)
    if name == "water":
        y, x = _grid(size)
        wave = np.sin(y * 0.9 + 2.5 * np.sin(x * 0.15 + rng.uniform(0, 6.3)))
        return mean + 22 * wave[..., None]
    return mean  # plain colours and sand


def _background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) float32 background with a random tint; patterns scale with the image side.
    Only sand is grainy: grain everywhere would triple the PNG size and its encoding time."""
    tint = rng.uniform(-8, 8, 3).astype(np.float32)
    img = np.broadcast_to(_pattern(name, size, rng) + tint, (size, size, 3))
    if name == "sand":
        return img + 10.0 * _crop(_noise_bank(size), size, size, rng)
    return img.copy()


@lru_cache(maxsize=16384)
def _mask(shape: str, side: int, degrees: int, supersample: int) -> np.ndarray:
    """Antialiased alpha (c, c) uint8 of a shape in a box of `side` pixels, turned by `degrees`.

    Cached: sides and angles are integers, so a pool reuses a few thousand masks (~2 KB each).
    """
    canvas = int(side * 1.3) + 2
    img = Image.new("L", (canvas * supersample, canvas * supersample), 0)
    draw = ImageDraw.Draw(img)
    half, centre = side / 2 * supersample, canvas / 2 * supersample
    for op, pts, width in SHAPE_PRIMITIVES[shape]:
        xy = (_turn(pts, degrees) * half + centre).ravel().tolist()
        if op == "line":
            draw.line(xy, fill=255, width=max(1, round(width * half)), joint="curve")
        else:
            draw.polygon(xy, fill=255 if op == "fill" else 0)
    return np.asarray(img.reduce(supersample))


def _erode(alpha: np.ndarray, radius: int) -> np.ndarray:
    """Grey erosion of alpha by a (2r+1)^2 square (separable running minimum)."""
    out = np.pad(alpha, radius)
    for axis in (0, 1):
        win = np.lib.stride_tricks.sliding_window_view(out, 2 * radius + 1, axis=axis)
        out = win.min(axis=-1)
    return out


def _shade(rgb: np.ndarray) -> np.ndarray:
    """The second tone of a striped or dotted object: lighter for dark colours, darker otherwise."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0.45 * rgb + 0.55 * 255 if luma < 110 else 0.55 * rgb).astype(np.float32)


@lru_cache(maxsize=1024)
def _fill_motif(texture: str, canvas: int, period: int, orientation: int) -> np.ndarray:
    """Boolean (c, c, 1): where a striped or dotted object shows its second tone."""
    y, x = _grid(canvas)
    if texture == "striped":
        u = (x + y, x - y + canvas, x)[orientation]
        return ((u / period) % 1 >= 0.55)[..., None]
    d2 = (x % period - period / 2) ** 2 + (y % period - period / 2) ** 2
    return (d2 < (period * 0.3) ** 2)[..., None]


def _pale(rgb: np.ndarray) -> np.ndarray:
    """The fill of an outlined object: a washed-out tint (a greyed one for light colours)."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0.3 * rgb + 0.7 * 245 if luma < 170 else 0.6 * rgb + 0.4 * 128).astype(np.float32)


def _paint(texture: str, rgb: np.ndarray, alpha: np.ndarray, side: int, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
    """Colour layer ((c, c, 3), or (3,) when uniform) and its alpha; texture stays inside the shape."""
    if texture in ("striped", "dotted"):
        motif = _fill_motif(texture, alpha.shape[0], max(4, side // 6), int(rng.integers(3)))
        return np.where(motif, _shade(rgb), rgb), alpha
    if texture == "outlined":  # a border in the colour around a pale fill: still a solid silhouette
        rim = (alpha - _erode(alpha, max(2, round(side * 0.09))))[..., None]
        return rim * rgb + (1 - rim) * _pale(rgb), alpha
    return rgb, alpha


def _place(img: np.ndarray, layer: np.ndarray, alpha: np.ndarray, cx: float, cy: float) -> None:
    """Alpha-composite a (c, c) layer centred at pixel (cx, cy), clipped to the image, in place."""
    size, c = img.shape[0], alpha.shape[0]
    top, left = int(round(cy - c / 2)), int(round(cx - c / 2))
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + c, size), min(left + c, size)
    if y1 <= y0 or x1 <= x0:
        return
    inner = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    region = img[y0:y1, x0:x1]
    region += ((layer[inner] if layer.ndim == 3 else layer) - region) * alpha[inner][..., None]


def render(truth: dict, size: int, rng: np.random.Generator, max_rotation: float = 15.0,
           supersample: int = 4) -> np.ndarray:
    """The (size, size, 3) uint8 image of a scene; `rng` draws only rendering noise, not content."""
    img = _background(truth["background"], size, rng)
    key = min(len(truth["objects"]), 2)
    for obj in truth["objects"]:
        scale = SIZE_SCALE[key][SIZES.index(obj["size"])] * rng.uniform(0.96, 1.04)
        side = max(8, int(round(scale * size)))
        degrees = 3 * int(round(rng.uniform(-max_rotation, max_rotation) / 3))  # 3-degree steps: masks cache
        alpha = _mask(obj["shape"], side, degrees, supersample).astype(np.float32) / 255.0
        rgb = np.clip(np.add(COLOUR_RGB[obj["colour"]], rng.uniform(-12, 12, 3)), 0, 255).astype(np.float32)
        layer, alpha = _paint(obj["texture"], rgb, alpha, side, rng)
        _place(img, layer, alpha, obj["x"] * size, obj["y"] * size)
    return np.clip(img, 0, 255).astype(np.uint8)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 array: 'Sub'-filtered rows, zlib level 1.

    Written by hand because PIL's adaptive filtering costs more than the whole render at 64x64.
    """
    height, width, _ = pixels.shape
    rows = pixels.reshape(height, width * 3)
    raw = np.empty((height, width * 3 + 1), np.uint8)
    raw[:, 0] = 1  # PNG filter type 1 ('Sub'): each byte minus the byte one pixel to its left (mod 256)
    raw[:, 1:] = rows
    raw[:, 4:] -= rows[:, :-3]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)) + _chunk(b"IEND", b""))


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


def _pool_scene(cfg: WorldConfig, i: int) -> dict:
    """Scene i of the pool: a pure function of (cfg, i), so any image's truth is cheap to recompute."""
    rng = np.random.default_rng([cfg.seed + POOL_SEED_OFFSET, i, 0])
    shape_p = zipf_probs(len(SHAPES), cfg.zipf_a, cfg.seed)
    colour_p = zipf_probs(len(COLOURS), cfg.zipf_a, cfg.seed + 1)
    return sample_scene(rng, shape_p, colour_p, cfg.object_count_probs, cfg.texture_probs)


def _pool_text(cfg: WorldConfig, i: int, truth: dict) -> tuple[str, str]:
    """(alt-text, kind) of pool image i; 'other_image' borrows the caption of another pool scene."""
    rng = np.random.default_rng([cfg.seed + POOL_SEED_OFFSET, i, 1])
    kind = ALT_TEXT_KINDS[_draw(rng, cfg.mixture(), 1)[0]]
    other = (i + 1 + int(rng.integers(max(cfg.num_images - 1, 1)))) % max(cfg.num_images, 2)
    text = alttext.alt_text(kind, truth, _pool_scene(cfg, other) if kind == "other_image" else truth, rng)
    if text and kind != "junk" and rng.random() < cfg.typo_rate:
        text = alttext.add_typos(text, rng)
    return text, kind


def _image_row(truth: dict, size: int, rng: np.random.Generator, cfg: WorldConfig) -> tuple[bytes, str]:
    png = encode_png(render(truth, size, rng, cfg.max_rotation, cfg.supersample))
    return png, hashlib.sha256(png).hexdigest()


def generate_pool(cfg: WorldConfig, start: int, stop: int) -> tuple[pa.Table, pa.Table]:
    """Images start..stop-1 of the raw pool as (samples, truth). Image i depends only on (cfg.seed, i)."""
    if not 0 <= start <= stop <= cfg.num_images:
        raise ValueError(f"need 0 <= start <= stop <= num_images, got {start}, {stop}, {cfg.num_images}")
    samples: dict[str, list] = {name: [] for name in SAMPLE_SCHEMA.names}
    truths: dict[str, list] = {name: [] for name in TRUTH_SCHEMA.names}
    for i in range(start, stop):
        uid = f"syn{cfg.seed}-{i:08d}"
        truth = _pool_scene(cfg, i)
        text, kind = _pool_text(cfg, i, truth)
        png, digest = _image_row(truth, cfg.image_size, np.random.default_rng([cfg.seed, i, 2]), cfg)
        for name, value in zip(SAMPLE_SCHEMA.names, (uid, text, png, digest, cfg.image_size, cfg.image_size),
                               strict=True):
            samples[name].append(value)
        for name, value in (("uid", uid), ("text_kind", kind), *truth.items()):
            truths[name].append(value)
    return (pa.Table.from_pydict(samples, schema=SAMPLE_SCHEMA),
            pa.Table.from_pydict(truths, schema=TRUTH_SCHEMA))


def _uniform(n: int) -> tuple[float, ...]:
    return (1.0 / n,) * n


def _eval_scene(cfg: WorldConfig, offset: int, i: int, count_p: tuple[float, ...],
                shape_p: tuple[float, ...] | None = None, distinct_colours: bool = False,
                texture_p: tuple[float, ...] | None = None) -> tuple[dict, np.random.Generator]:
    """Scene i of an eval set: uniform shapes and colours, from the seed cfg.seed + offset."""
    rng = np.random.default_rng([cfg.seed + offset, i])
    shape_p = _uniform(len(SHAPES)) if shape_p is None else shape_p
    truth = sample_scene(rng, shape_p, _uniform(len(COLOURS)), count_p,
                         cfg.texture_probs if texture_p is None else texture_p, distinct_colours)
    return truth, rng


def _png(cfg: WorldConfig, truth: dict, rng: np.random.Generator) -> bytes:
    return encode_png(render(truth, cfg.image_size, rng, cfg.max_rotation, cfg.supersample))


def classification_set(cfg: WorldConfig, per_class: int) -> pa.Table:
    """Balanced single-object images, per_class of each shape, interleaved (row i has label i % C)."""
    rows: dict[str, list] = {"uid": [], "image": [], "label": [], "classname": []}
    for i in range(per_class * len(SHAPES)):
        label = i % len(SHAPES)
        one_hot = tuple(float(k == label) for k in range(len(SHAPES)))
        truth, rng = _eval_scene(cfg, CLASSIFICATION_SEED_OFFSET, i, (1.0,), one_hot)
        rows["uid"].append(f"cls{cfg.seed}-{i:08d}")
        rows["image"].append(_png(cfg, truth, rng))
        rows["label"].append(label)
        rows["classname"].append(SHAPES[label])
    schema = pa.schema([("uid", pa.string()), ("image", pa.binary()), ("label", pa.int32()),
                        ("classname", pa.string())])
    return pa.Table.from_pydict(rows, schema=schema)


def retrieval_set(cfg: WorldConfig, n: int) -> pa.Table:
    """Images of one to three objects with a faithful one-sentence caption each."""
    rows: dict[str, list] = {"uid": [], "image": [], "caption": []}
    for i in range(n):
        truth, rng = _eval_scene(cfg, RETRIEVAL_SEED_OFFSET, i, cfg.object_count_probs)
        rows["uid"].append(f"ret{cfg.seed}-{i:08d}")
        rows["caption"].append(describe(truth, rng, "full"))
        rows["image"].append(_png(cfg, truth, rng))
    schema = pa.schema([("uid", pa.string()), ("image", pa.binary()), ("caption", pa.string())])
    return pa.Table.from_pydict(rows, schema=schema)


def _pair_caption(truth: dict, colours: tuple[str, str], order: tuple[int, int]) -> str:
    """'a red star left of a blue circle' with the given colours and subject/object order."""
    objs, rel = truth["objects"], truth["relations"][0]
    subject, obj = (rel["subject"], rel["object"])[order[0]], (rel["subject"], rel["object"])[order[1]]
    return (f"a {colours[subject]} {objs[subject]['shape']} {rel['relation']} "
            f"a {colours[obj]} {objs[obj]['shape']}")


def compositional_set(cfg: WorldConfig, n: int) -> pa.Table:
    """Two-object scenes (distinct shapes and colours) with a true and a false caption (ARO-style).

    colour_swap: the negative swaps the two objects' colours; relation_swap: it swaps subject and
    object of the relation. Kinds alternate, so any prefix is balanced.
    """
    rows: dict[str, list] = {"uid": [], "image": [], "positive": [], "negative": [], "kind": []}
    for i in range(n):
        truth, rng = _eval_scene(cfg, COMPOSITIONAL_SEED_OFFSET, i, (0.0, 1.0), distinct_colours=True,
                                 texture_p=(1.0, 0.0, 0.0, 0.0))
        colours = tuple(o["colour"] for o in truth["objects"])
        kind = ("colour_swap", "relation_swap")[i % 2]
        rows["positive"].append(_pair_caption(truth, colours, (0, 1)))
        swapped = (colours[::-1], (0, 1)) if kind == "colour_swap" else (colours, (1, 0))
        rows["negative"].append(_pair_caption(truth, *swapped))
        rows["kind"].append(kind)
        rows["uid"].append(f"cmp{cfg.seed}-{i:08d}")
        rows["image"].append(_png(cfg, truth, rng))
    schema = pa.schema([("uid", pa.string()), ("image", pa.binary()), ("positive", pa.string()),
                        ("negative", pa.string()), ("kind", pa.string())])
    return pa.Table.from_pydict(rows, schema=schema)


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
