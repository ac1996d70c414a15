"""The synthetic raw pool: WorldConfig and generate_pool.

The pool is long-tailed (Zipf-distributed shapes and colours, the shape of web data that MetaCLIP's
balancing corrects) and its alt-texts come from :mod:`curation.world.alttext`'s web-like mixture. The
ground truth comes back as a separate table that only the simulated captioner and the world's
evaluation sets may read.

Image i of a pool depends only on (seed, i), so any partitioning of [0, num_images) gives the same rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curation.schema import SAMPLE_SCHEMA
from curation.world import alttext
from curation.world.alttext import ALT_TEXT_KINDS
from curation.world.png import encode_png
from curation.world.rendering import render
from curation.world.scenes import TRUTH_SCHEMA, draw, sample_scene, zipf_probs
from curation.world.shapes import SHAPES
from curation.world.vocabulary import COLOURS


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
"""The pool's seed offset (the eval sets in curation.world.evaluation use offsets of a million and up)."""


def _pool_scene(cfg: WorldConfig, i: int) -> dict:
    """Scene i of the pool: a pure function of (cfg, i), so any image's truth is cheap to recompute."""
    rng = np.random.default_rng([cfg.seed + POOL_SEED_OFFSET, i, 0])
    shape_p = zipf_probs(len(SHAPES), cfg.zipf_a, cfg.seed)
    colour_p = zipf_probs(len(COLOURS), cfg.zipf_a, cfg.seed + 1)
    return sample_scene(rng, shape_p, colour_p, cfg.object_count_probs, cfg.texture_probs)


def _pool_text(cfg: WorldConfig, i: int, truth: dict) -> tuple[str, str]:
    """(alt-text, kind) of pool image i; 'other_image' borrows the caption of another pool scene."""
    rng = np.random.default_rng([cfg.seed + POOL_SEED_OFFSET, i, 1])
    kind = ALT_TEXT_KINDS[draw(rng, cfg.mixture(), 1)[0]]
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

