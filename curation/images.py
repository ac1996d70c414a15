"""Encoded image bytes to the upright 8-bit RGB image every model sees.

``Image.convert("RGB")`` alone, what open_clip's transform does, is wrong for three kinds of web image: a photo
with an EXIF orientation tag comes out lying on its side (the camera stored it rotated); a 16-bit grayscale PNG
is clipped to white (PIL maps I;16 to L by clipping, not scaling); and a transparent PNG or WebP shows whatever
colour its invisible pixels happen to hold (often black). :func:`to_rgb` rotates by the EXIF tag as
``ImageOps.exif_transpose`` does, scales 16-bit samples to 8 bits, and composites alpha (palette transparency
included) over white. CMYK, L, LA and P follow. Ingest keeps the bytes as they came (shards hold the original
file); every decoder of those bytes (training, embedding, evaluation, the caption backends) goes through here.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)
"""What a transparent pixel becomes."""
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` upright (EXIF orientation applied) as 8-bit RGB, alpha composited over :data:`BACKGROUND`. The
    orientation is applied to ``image`` itself (no copy of every decoded image): pass one you own."""
    ImageOps.exif_transpose(image, in_place=True)  # no copy for the common image without an orientation tag
    if image.mode in SIXTEEN_BIT:
        samples = np.asarray(image).astype(np.uint32)
        image = Image.fromarray((np.clip(samples, 0, 65535) >> 8).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def decode_rgb(data: bytes) -> Image.Image:
    """PNG/JPEG/WebP bytes as an upright 8-bit RGB image (fully decoded: a truncated file raises here)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return to_rgb(image)
