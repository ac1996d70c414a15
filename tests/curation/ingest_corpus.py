"""Raw-format writers and the corrupt-input corpus shared by the ingest tests.

Everything is made here from PIL images and hand-written bytes. The test modules load this file by
path (``load_corpus``), since pytest's importlib mode puts no test folder on sys.path.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def encoded(fmt: str, size: int = 64, seed: int = 0) -> bytes:
    """A noise image (so JPEG scan data is most of the file) encoded as JPEG, PNG or WEBP."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def bomb_png(side: int = 20000, idat: bool = True) -> bytes:
    """A PNG whose valid IHDR claims side x side RGB pixels, followed by a tiny IDAT (or by nothing)."""
    header = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    return header + (png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + png_chunk(b"IEND", b"") if idat else b"")


def truncated_jpeg() -> bytes:
    """The first half of a real 128x128 JPEG: its header reads, its scan data stops part-way."""
    data = encoded("JPEG", 128, seed=7)
    return data[: len(data) // 2]


BAD_UTF8 = b"caf\xe9 au lait"
"""A Latin-1 caption: not valid UTF-8."""

CORRUPT_IMAGES = {
    "truncated": (truncated_jpeg, "truncated_image"),
    "empty": (lambda: b"", "empty_image"),
    "bomb": (bomb_png, "decompression_bomb"),
    "garbage": (lambda: b"this is not an image at all", "undecodable_image"),
}
"""name -> (bytes maker, expected quarantine reason)."""

KIND = {
    "truncated": "truncated JPEG", "empty": "zero-byte image", "bomb": "decompression bomb (20000x20000 PNG header)",
    "garbage": "bytes that are no image", "badtext": "caption not UTF-8", "notext": "sample without a caption",
    "noimage": "sample without an image", "../evil": "tar member climbing out with '..'",
    "/etc/x": "tar member with an absolute path", "link": "tar symlink member", "badjson": "unparsable JSON sidecar",
}
"""Corpus name -> what the reliability ledger (tests/conftest.py) calls that bad input, in every ingest test."""


def write_tar(path: Path, members: list[tuple[str, bytes]], links: tuple[tuple[str, str], ...] = ()) -> Path:
    """A tar of regular members in the given order, then symbolic-link members ``(name, target)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def sample_members(key: str, image: bytes | None, text: bytes | None, ext: str = "jpg",
                   meta: dict | None = None) -> list[tuple[str, bytes]]:
    """img2dataset's members of one sample: ``<key>.<ext>``, ``<key>.txt``, ``<key>.json``."""
    out = [(f"{key}.{ext}", image)] if image is not None else []
    out += [(f"{key}.txt", text)] if text is not None else []
    return out + [(f"{key}.json", json.dumps(meta or {"key": key, "status": "success"}).encode())]


def write_parquet(path: Path, columns: dict[str, list], schema: pa.Schema | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[bytes | str]], delimiter: bytes = b",") -> Path:
    """A CSV/TSV written byte by byte (so a row can hold invalid UTF-8); fields are written as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [delimiter.join(h.encode() for h in header)]
    lines += [delimiter.join(f if isinstance(f, bytes) else f.encode() for f in row) for row in rows]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def good_images() -> dict[str, bytes]:
    """Three valid images, one per accepted format, keyed by file extension."""
    return {"jpg": encoded("JPEG", 64, 1), "png": encoded("PNG", 48, 2), "webp": encoded("WEBP", 32, 3)}

