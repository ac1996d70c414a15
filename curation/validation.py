"""Row validation of the ingest stage: each raw row becomes a sample or a quarantine row, never nothing.

A reader (``curation.readers``) turns one record of a raw format into a :class:`RawRow`: the caption
as found (``bytes`` from a ``.txt`` file, ``str`` from a table, or anything else), the image bytes,
the source's uid if it has one, and any problem the reader already saw (an unsafe tar path, a missing
column). :func:`validate_rows` turns rows into the sample table of the data contract (``uid, text,
image, image_sha256, width, height``) and the quarantine table (``uid, stage, reason, detail``):
every input row lands in exactly one of the two, and no exception of one row escapes it.

Images are checked the way a decompression bomb must be: ``PIL.Image.open`` reads only the header,
the pixel count is compared with the cap, and only then does ``load()`` decode the pixels, which is
what exposes a truncated file. Only JPEG, PNG and WebP are accepted: they are what open_clip's
WebDataset loader reads (``image_key = "jpg;png;jpeg;webp"``) and what ``curation.sharding`` writes,
and restricting PIL's plugins keeps decoders such as EPS (which runs Ghostscript) out of reach.
"""

from __future__ import annotations

import hashlib
import html
import io
import re
import struct
import unicodedata
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
from PIL import Image

from curation.schema import DROPPED_SCHEMA, SAMPLE_SCHEMA

REASONS = {
    "empty_image": "the image has zero bytes",
    "undecodable_image": "PIL cannot identify the bytes as a JPEG, PNG or WebP image",
    "truncated_image": "the header reads but decoding stops part-way (the file is cut short)",
    "decompression_bomb": "width * height above the configured pixel cap (read from the header only)",
    "missing_image": "no image for the row: no image file or member, a null cell, or an unreadable path",
    "missing_caption": "no caption for the row: no .txt beside the image, or a null cell",
    "caption_not_utf8": "the caption's bytes are not valid UTF-8",
    "caption_too_long": "the caption has more characters than the configured cap",
    "path_outside_roots": "an image path or URL outside the source's allowed_roots (default: its own folder or "
                          "bucket), or an http(s) URL while the source's fetch_urls is off",
    "unsafe_path": "a tar member of the sample is absolute, climbs out with '..', or is a link or device",
    "missing_column": "a configured column (or JSON field) is absent from the file",
    "wrong_type": "a cell of the wrong type (a numeric caption, an image that is neither bytes nor a path, "
                  "a null or non-scalar uid, JSON metadata that is not an object)",
    "malformed_row": "a CSV/TSV row whose field count differs from the header's, or that the parser rejects",
    "unreadable_file": "a file that cannot be opened or parsed past some point; one row stands for its rest",
    "validation_error": "any other exception while checking the row (reported, never raised)",
}
"""Ingest quarantine reasons -> meaning (``duplicate_uid`` comes later, from the cross-partition pass)."""

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
"""PIL formats an ingested image may have (open_clip's WebDataset image_key)."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_BUFFER_REPR = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class RowProblem(Exception):
    """A row cannot be used; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Limits:
    """Per-row caps, taken from the ingest config."""

    max_pixels: int = 89_478_485
    """decompression-bomb cap on width * height (PIL's own default limit)."""
    max_caption_chars: int = 4096
    """longest caption kept, in characters."""


@dataclass(frozen=True)
class RawRow:
    """One record as a reader found it, before any check."""

    row_id: str
    """where the row comes from ("<file>#<row>", "<tar>#<key>", a folder stem): the uid of its quarantine
    row when it has no usable uid."""
    text: object
    """caption: bytes (decoded here as UTF-8), str, None (missing) or anything else (wrong type)."""
    image: object
    """encoded image bytes; None or anything else when the reader found no usable image."""
    uid: object = None
    """the source's uid (str or int); None derives it from the content (:func:`content_uid`)."""
    problem: tuple[str, str] | None = None
    """(reason, detail) the reader already found; such a row is quarantined as is."""


def content_uid(image: bytes, text: str) -> str:
    """sha256 of the image bytes, a NUL separator and the UTF-8 caption: a uid for sources without one."""
    digest = hashlib.sha256(image)
    digest.update(b"\0")
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def check_uid(value: object) -> str:
    """A source uid as a string: non-empty str, or an int (not a bool)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RowProblem("wrong_type", f"uid must be a non-empty string or an integer, got {_describe(value)}")


def decode_caption(value: object, max_chars: int) -> str:
    """The caption as a str, or :class:`RowProblem`; bytes lose one trailing newline (a text-file habit)."""
    if value is None:
        raise RowProblem("missing_caption", "no caption")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            near = value[max(0, err.start - 8):err.end + 8]
            raise RowProblem("caption_not_utf8", f"byte {err.start}: {near!r}") from err
        value = value.removeprefix("\ufeff").removesuffix("\n").removesuffix("\r")
    if not isinstance(value, str):
        raise RowProblem("wrong_type", f"caption must be text, got {_describe(value)}")
    try:
        value.encode("utf-8")  # lone surrogates: readers decode CSV with errors="surrogateescape"
    except UnicodeEncodeError as err:
        raise RowProblem("caption_not_utf8", f"invalid byte at character {err.start}") from err
    if len(value) > max_chars:
        raise RowProblem("caption_too_long", f"{len(value)} characters > {max_chars}")
    return clean_caption(value)


_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>")
_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_FORMAT_KEPT = {"\u200c", "\u200d"}  # zero-width (non-)joiners: part of emoji and Indic spelling
_WHITESPACE_KEPT = {"\t", "\n", "\r"}
_WHITESPACE = re.compile(r"\s+")


def clean_caption(text: str) -> str:
    """The caption with web markup and invisible characters taken out, by this rule:

    - an HTML tag (``<b>``, ``</a>``, ``<br/>``, ``<img src=...>``) becomes a space, and HTML entities
      (``&amp;``, ``&#39;``) become their characters: alt-text scraped with its markup reads as the words;
    - a control character (Unicode category Cc: NUL, escapes, DEL...) other than tab, newline and carriage return
      becomes a space, and a format character (Cf: bidi overrides that reorder what is displayed, zero-width
      spaces, BOMs) is removed, except the zero-width joiners that emoji and some scripts need;
    - then, only if anything changed, whitespace runs become one space and the ends are stripped.

    A caption with none of these is returned unchanged (so clean pools, the synthetic world included, keep their
    exact text). One left empty is kept, like empty alt-text: the filter stage drops it as too short."""
    out = _TAG.sub(" ", text) if "<" in text else text
    if "&" in out and _ENTITY.search(out):
        out = html.unescape(out)
    # isprintable() (C speed) is False for any Cc or Cf character: the per-character look only where one may be
    if not out.isprintable() and any(unicodedata.category(c) in ("Cc", "Cf") and c not in _WHITESPACE_KEPT
                                     for c in out):
        out = "".join(" " if unicodedata.category(c) == "Cc" and c not in _WHITESPACE_KEPT else c for c in out
                      if unicodedata.category(c) != "Cf" or c in _FORMAT_KEPT)
    return out if out == text else _WHITESPACE.sub(" ", out).strip()


def check_image_bytes(value: object) -> bytes:
    if value is None:
        raise RowProblem("missing_image", "no image")
    if not isinstance(value, bytes):
        raise RowProblem("wrong_type", f"image must be bytes, got {_describe(value)}")
    if not value:
        raise RowProblem("empty_image", "0 bytes")
    return value


def png_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if the bytes do not start like a PNG.

    Read before PIL so a bomb is named as one even when nothing follows its header (PIL cannot open that)."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    return struct.unpack(">II", data[16:24])


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise RowProblem("decompression_bomb", f"{width}x{height} = {width * height} pixels > {max_pixels}")


def inspect_image(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) of a fully decodable JPEG/PNG/WebP, checking the pixel cap before decoding pixels."""
    if (size := png_header_size(data)) is not None:
        check_pixels(*size, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as err:
        # PIL refuses outright above 2 * Image.MAX_IMAGE_PIXELS, whatever max_pixels says.
        raise RowProblem("decompression_bomb", str(err)) from err
    except Exception as err:
        raise _decode_problem(err, data, "header") from err
    width, height = image.size
    check_pixels(width, height, max_pixels)
    try:
        image.load()
    except Exception as err:
        raise _decode_problem(err, data, "pixels", truncated=True) from err
    return width, height


def riff_cut_short(data: bytes) -> bool:
    """A WebP whose RIFF header declares more bytes than there are. PIL decodes a WebP whole when it opens it, so
    a cut one fails in the header read ("could not create decoder object"), not as a truncation."""
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) < 8 + int.from_bytes(data[4:8], "little")


def _decode_problem(err: Exception, data: bytes, where: str, truncated: bool = False) -> RowProblem:
    """PIL's errors as reasons: running out of bytes is truncation, anything else undecodable."""
    message = f"{where}: {type(err).__name__}: " + _BUFFER_REPR.sub("", str(err))
    ran_out = isinstance(err, EOFError) or "truncated" in str(err).lower() or riff_cut_short(data)
    if ran_out or (truncated and isinstance(err, (OSError, SyntaxError, ValueError))):
        return RowProblem("truncated_image", f"{message} ({len(data)} bytes)")
    return RowProblem("undecodable_image", f"{message} (starts {data[:12]!r})")


def validate_row(row: RawRow, limits: Limits) -> tuple[dict | None, dict | None]:
    """(sample, None) for a usable row, (None, quarantine row) otherwise. Never raises."""
    uid = row.row_id
    try:
        if row.uid is not None:
            uid = check_uid(row.uid)
        if row.problem is not None:
            raise RowProblem(*row.problem)
        image = check_image_bytes(row.image)
        text = decode_caption(row.text, limits.max_caption_chars)
        width, height = inspect_image(image, limits.max_pixels)
    except RowProblem as problem:
        return None, quarantine_row(uid, problem.reason, problem.detail)
    except Exception as err:  # a row must never take its partition down with it
        return None, quarantine_row(uid, "validation_error", f"{type(err).__name__}: {err}")
    sample = {"uid": content_uid(image, text) if row.uid is None else uid, "text": text, "image": image,
              "image_sha256": hashlib.sha256(image).hexdigest(), "width": width, "height": height}
    return sample, None


def quarantine_row(uid: str, reason: str, detail: str, stage: str = "ingest") -> dict:
    return {"uid": uid, "stage": stage, "reason": reason, "detail": detail}


def validate_rows(rows: Iterable[RawRow], limits: Limits) -> tuple[pa.Table, pa.Table]:
    """(sample table, quarantine table) of the rows; their row counts add up to the number of rows."""
    samples: dict[str, list] = {name: [] for name in SAMPLE_SCHEMA.names}
    quarantine: dict[str, list] = {name: [] for name in DROPPED_SCHEMA.names}
    for row in rows:
        sample, bad = validate_row(row, limits)
        target, values = (samples, sample) if sample is not None else (quarantine, bad)
        for name, column in target.items():
            column.append(values[name])
    return (pa.Table.from_pydict(samples, schema=SAMPLE_SCHEMA),
            pa.Table.from_pydict(quarantine, schema=DROPPED_SCHEMA))


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
