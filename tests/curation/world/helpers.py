"""What the world tests share: the world's config and a PNG decoder."""

import io

import numpy as np
from PIL import Image

from curation.world.pool import WorldConfig

CFG = WorldConfig(num_images=5000, seed=3)


def decode(png: bytes) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an encoded image."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
