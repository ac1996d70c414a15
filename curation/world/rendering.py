"""Rendering a scene graph to pixels: patterned backgrounds, antialiased silhouettes, textures.

Only rendering noise is drawn here (tints, jitter, rotation, pattern phases): a scene's content comes
from :mod:`curation.world.scenes`, so the same scene and generator always give the same pixels.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from curation.world.scenes import SIZE_SCALE
from curation.world.shapes import SHAPE_PRIMITIVES, turn
from curation.world.vocabulary import BACKGROUND_MEAN, COLOUR_RGB, SIZES


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
        xy = (turn(pts, degrees) * half + centre).ravel().tolist()
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

