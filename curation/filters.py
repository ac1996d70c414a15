"""Basic quality filters of the filter stage, after DataComp's "basic filtering" baseline.

DataComp (Gadre et al., 2023, "DataComp: In search of the next generation of multimodal datasets")
keeps a sample when its caption has at least 2 words and 5 characters and its image's shorter side
is at least 200 pixels with an aspect ratio at most 3 (plus English-only captions, not done here).
Thresholds here default to the caption rules and a 32-pixel side that suits the 64x64 synthetic
world. On top, exact duplicates (same image bytes; same image and caption) and, optionally,
near-duplicate images by perceptual hash (pHash: Zauner, 2010) are removed, keeping the first
occurrence in uid order so the result does not depend on partitioning.

Every row of the input is either kept or returned with a reason: ``caption_too_short_words``,
``caption_too_short_chars``, ``caption_too_long``, ``image_too_small``, ``aspect_ratio``,
``duplicate_image``, ``duplicate_image_text`` or ``near_duplicate_image``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image


@dataclass(frozen=True)
class FilterConfig:
    """Configuration of the filter stage (DataComp basic filtering plus deduplication)."""

    min_caption_words: int = 2
    """Fewest whitespace-separated words a caption may have (DataComp: 2); 0 disables."""
    min_caption_chars: int = 5
    """Fewest characters (code points) a caption may have (DataComp: 5); 0 disables."""
    max_caption_chars: int = 1000
    """Most characters a caption may have; 0 disables."""
    min_image_side: int = 32
    """Fewest pixels of the image's shorter side (DataComp: 200; the synthetic world is 64x64); 0 disables."""
    max_aspect_ratio: float = 3.0
    """Largest longer-side / shorter-side ratio (DataComp: 3); 0 disables."""
    dedup_images: bool = True
    """Remove exact duplicate images (same image_sha256), keeping the first uid."""
    dedup_image_text: bool = True
    """Remove exact duplicate (image_sha256, caption) pairs, keeping the first uid."""
    phash_hamming: int = -1
    """Remove images whose 64-bit pHash is within this Hamming distance of an earlier one; -1 disables."""


def _caption_reasons(text: pa.ChunkedArray | pa.Array, cfg: FilterConfig) -> list[tuple[str, bool, np.ndarray]]:
    """(reason, failing mask) per caption rule, in the order rules are checked."""
    text = pc.fill_null(text, "")
    chars = pc.utf8_length(text).to_numpy(zero_copy_only=False)
    words = pc.list_value_length(pc.utf8_split_whitespace(text)).to_numpy(zero_copy_only=False)
    return [
        ("caption_too_short_words", cfg.min_caption_words > 0, words < cfg.min_caption_words),
        ("caption_too_short_chars", cfg.min_caption_chars > 0, chars < cfg.min_caption_chars),
        ("caption_too_long", cfg.max_caption_chars > 0, chars > cfg.max_caption_chars),
    ]


def _image_reasons(width: pa.ChunkedArray, height: pa.ChunkedArray, cfg: FilterConfig
                   ) -> list[tuple[str, bool, np.ndarray]]:
    w = pc.fill_null(width, 0).to_numpy(zero_copy_only=False).astype(np.float64)
    h = pc.fill_null(height, 0).to_numpy(zero_copy_only=False).astype(np.float64)
    short, long = np.minimum(w, h), np.maximum(w, h)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(short > 0, long / np.maximum(short, 1), np.inf)
    return [
        ("image_too_small", cfg.min_image_side > 0, short < cfg.min_image_side),
        ("aspect_ratio", cfg.max_aspect_ratio > 0, ratio > cfg.max_aspect_ratio),
    ]


def row_filters(table: pa.Table, cfg: FilterConfig) -> tuple[np.ndarray, list[str | None]]:
    """Partition-local rules: (keep mask, first failing reason per row or None).

    Caption rules are checked before image rules; a null caption has no words, a null size no pixels.
    """
    rules = _caption_reasons(table.column("text"), cfg)
    rules += _image_reasons(table.column("width"), table.column("height"), cfg)
    reason = np.full(table.num_rows, None, dtype=object)
    for name, enabled, failing in reversed(rules):  # earlier rules overwrite later ones
        if enabled:
            reason[failing] = name
    keep = np.array([r is None for r in reason], dtype=bool)
    return keep, reason.tolist()


def row_details(table: pa.Table, reasons: list[str | None]) -> list[str]:
    """The measured value behind each row reason ('3 words, 14 characters', '20x64 px'); '' for kept rows."""
    text = table.column("text").to_pylist()
    width, height = table.column("width").to_pylist(), table.column("height").to_pylist()
    details = []
    for i, reason in enumerate(reasons):
        if reason is None:
            details.append("")
        elif reason.startswith("caption"):
            caption = text[i] or ""
            details.append(f"{len(caption.split())} words, {len(caption)} characters")
        else:
            details.append(f"{width[i]}x{height[i]} px")
    return details


def phash(image: bytes) -> int | None:
    """64-bit perceptual hash: signs of the 8x8 lowest DCT frequencies of a 32x32 grey image
    against their median (the pHash of Zauner, 2010, as the imagehash package computes it).
    None when the bytes do not decode."""
    try:
        with Image.open(io.BytesIO(image)) as img:
            grey = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    n = np.arange(32)
    dct = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 64)  # DCT-II basis, (32, 32)
    low = (dct @ grey @ dct.T)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Label of each node: the smallest node index connected to it through ``pairs`` (m, 2)."""
    label = np.arange(n)
    while True:
        low = np.minimum(label[pairs[:, 0]], label[pairs[:, 1]])
        new = label.copy()
        np.minimum.at(new, pairs[:, 0], low)
        np.minimum.at(new, pairs[:, 1], low)
        new = new[new]  # pointer jumping
        if np.array_equal(new, label):
            return label
        label = new


def _near_pairs(hashes: np.ndarray, distance: int) -> np.ndarray:
    """Index pairs (i < j) of distinct hashes within ``distance`` bits.

    Pigeonhole: two 64-bit hashes within d bits agree exactly on at least one of d + 1 bit blocks,
    so only hashes sharing a block are compared.
    """
    blocks = np.linspace(0, 64, min(distance, 63) + 2).astype(int)
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    for lo, hi in zip(blocks[:-1], blocks[1:], strict=True):
        key = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(key, kind="stable")
        group_start = np.flatnonzero(np.concatenate([[True], key[order][1:] != key[order][:-1]]))
        for a, b in zip(group_start, [*group_start[1:], len(order)], strict=True):
            if b - a > 1:
                members = np.sort(order[a:b])
                i, j = np.triu_indices(b - a, k=1)
                pairs.append(np.stack([members[i], members[j]], axis=1))
    pairs = np.unique(np.concatenate(pairs), axis=0)
    close = np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]) <= distance
    return pairs[close]


def _near_duplicates(images: list[bytes | None], distance: int) -> np.ndarray:
    """Index of the first image each image is a near duplicate of (its own index when none)."""
    hashes = [None if image is None else phash(image) for image in images]
    ok = np.array([h is not None for h in hashes], dtype=bool)
    rows = np.flatnonzero(ok)
    values = np.array([h for h in hashes if h is not None], dtype=np.uint64)
    first = np.arange(len(images))
    if len(rows) < 2:
        return first
    distinct, inverse = np.unique(values, return_inverse=True)
    labels = _components(len(distinct), _near_pairs(distinct, distance))
    # rows are in uid order, so the first row of a component is the one kept
    _, first_of_group, group = np.unique(labels[inverse], return_index=True, return_inverse=True)
    first[rows] = rows[first_of_group[group]]
    return first


def _exact_duplicates(table: pa.Table, order: np.ndarray, cfg: FilterConfig) -> tuple[list, list]:
    """(reason, uid of the first occurrence) per row for exact image and image+caption duplicates."""
    uids = table.column("uid").to_pylist()
    sha = table.column("image_sha256").to_pylist()
    text = table.column("text").to_pylist() if "text" in table.column_names else [None] * len(uids)
    reasons: list[str | None] = [None] * len(uids)
    firsts = [""] * len(uids)
    first_image: dict[str, str] = {}
    first_pair: dict[tuple[str, str | None], str] = {}
    for i in order.tolist():
        if sha[i] is None:
            continue
        pair_first = first_pair.setdefault((sha[i], text[i]), uids[i])
        image_first = first_image.setdefault(sha[i], uids[i])
        if cfg.dedup_image_text and pair_first != uids[i]:
            reasons[i], firsts[i] = "duplicate_image_text", pair_first
        elif cfg.dedup_images and image_first != uids[i]:
            reasons[i], firsts[i] = "duplicate_image", image_first
    return reasons, firsts


def _duplicates(table: pa.Table, cfg: FilterConfig) -> tuple[list[str | None], list[str]]:
    """(reason or None, detail) per row for every duplicate rule, first occurrences in uid order kept."""
    order = np.asarray(pc.sort_indices(table.column("uid")))
    reasons, firsts = _exact_duplicates(table, order, cfg)
    details = [f"first seen as uid {f}" if f else "" for f in firsts]
    if cfg.phash_hamming >= 0 and table.num_rows:
        rows = np.array([i for i in order.tolist() if reasons[i] is None], dtype=np.int64)
        images = table.column("image").take(pa.array(rows)).to_pylist() if len(rows) else []
        first = _near_duplicates(images, cfg.phash_hamming)
        uids = table.column("uid").to_pylist()
        for k in np.flatnonzero(first != np.arange(len(rows))).tolist():
            i = rows[k]
            reasons[i] = "near_duplicate_image"
            details[i] = f"pHash within {cfg.phash_hamming} bits (by links) of uid {uids[rows[first[k]]]}"
    return reasons, details


def duplicate_reasons(table: pa.Table, cfg: FilterConfig) -> tuple[list[str | None], list[str]]:
    """Duplicate rules over the whole table (columns uid, image_sha256, text, and image for pHash): every row
    but the first in uid order of each duplicate group gets a reason and a detail (the first occurrence's
    uid), the others None and ''."""
    return _duplicates(table, cfg)
