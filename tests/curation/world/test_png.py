"""The hand-written PNG encoder decodes back to its pixels."""

import io

import numpy as np
from PIL import Image

from curation.world.png import encode_png
from curation.world.pool import WorldConfig

CFG = WorldConfig(num_images=5000, seed=3)


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_png_encoder_round_trips():
    pixels = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    assert np.array_equal(_decode(encode_png(pixels)), pixels)
