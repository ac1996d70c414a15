"""Web images to upright 8-bit RGB (curation/images.py): EXIF orientation, 16-bit grayscale, palette
transparency, alpha, CMYK and grayscale, each built here and checked against what the image shows, and the
decoders training, embedding, eval and the caption backends use go through it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curation.captions.local import decode_image as caption_decode
from curation.images import decode_rgb
from training.data import decode_image as training_decode

RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
COMPOSITED = "kept, composited over white"
"""The outcome the reliability ledger (tests/conftest.py) records for an image with transparency."""


def encoded(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def near(pixel, colour, tolerance=40) -> bool:
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def red_left_blue_right() -> Image.Image:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = RED
    pixels[:, 20:] = BLUE
    return Image.fromarray(pixels)


@pytest.mark.parametrize(("orientation", "size", "top_left", "bottom_right"), [
    (1, (40, 20), RED, BLUE),    # as stored
    (3, (40, 20), BLUE, RED),    # stored upside down: turned 180 degrees
    (6, (20, 40), RED, BLUE),    # stored lying on its side: turned 90 degrees clockwise, red on top
    (8, (20, 40), BLUE, RED),    # the other side: turned 90 degrees counter-clockwise, blue on top
])
def test_exif_orientation_is_applied(orientation, size, top_left, bottom_right, reliability):
    exif = Image.Exif()
    exif[0x0112] = orientation  # EXIF Orientation
    image = decode_rgb(encoded(red_left_blue_right(), "JPEG", exif=exif, quality=95))
    assert image.mode == "RGB" and image.size == size
    w, h = size
    assert near(image.getpixel((2, 2)), top_left) and near(image.getpixel((w - 3, h - 3)), bottom_right)
    if orientation != 1:  # 1 is stored upright
        reliability.bad_input("JPEG stored rotated (EXIF orientation)", "rotated upright")


def test_16_bit_grayscale_is_scaled_not_clipped(reliability):
    samples = np.full((8, 8), 40000, np.uint16)  # 61% grey
    data = encoded(Image.fromarray(samples), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0)) == WHITE  # the clipping this fixes
    assert decode_rgb(data).getpixel((0, 0)) == (156, 156, 156)  # 40000 / 256
    reliability.bad_input("16-bit grayscale PNG", "kept, scaled to 8-bit RGB")


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_alpha_is_composited_over_white(fmt, reliability):
    pixels = np.zeros((4, 8, 4), np.uint8)  # black everywhere...
    pixels[:, :4, 3] = 0                    # ...invisible on the left
    pixels[:, 4:, 3] = 255                  # ...opaque on the right
    image = decode_rgb(encoded(Image.fromarray(pixels, "RGBA"), fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    assert image.mode == "RGB" and image.getpixel((1, 1)) == WHITE and image.getpixel((6, 1)) == BLACK
    reliability.bad_input(f"{fmt} with an alpha channel", COMPOSITED)


def test_palette_transparency_and_grey_alpha(reliability):
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((3, 3), 1)
    image = decode_rgb(encoded(palette, "PNG", transparency=0))  # index 0 (black) is transparent
    assert image.getpixel((0, 0)) == WHITE and image.getpixel((3, 3)) == RED
    grey = Image.fromarray(np.stack([np.zeros((2, 2), np.uint8), np.array([[0, 255], [0, 255]], np.uint8)], -1), "LA")
    image = decode_rgb(encoded(grey, "PNG"))
    assert image.getpixel((0, 0)) == WHITE and image.getpixel((1, 0)) == BLACK
    reliability.bad_input("palette PNG with a transparent colour", COMPOSITED)
    reliability.bad_input("grayscale PNG with alpha", COMPOSITED)


def test_cmyk_and_grayscale_jpegs(reliability):
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    assert near(decode_rgb(encoded(cmyk, "JPEG", quality=95)).getpixel((1, 1)), RED)
    assert decode_rgb(encoded(Image.new("L", (4, 4), 200), "PNG")).getpixel((0, 0)) == (200, 200, 200)
    reliability.bad_input("CMYK JPEG", "kept, converted to RGB")
    reliability.bad_input("grayscale PNG", "kept, converted to RGB")


def test_every_decoder_of_sample_bytes_goes_through_it():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(red_left_blue_right(), "JPEG", exif=exif, quality=95)
    for decode in (training_decode, caption_decode):  # training, embedding and eval use training's
        assert decode(data).size == (20, 40)
