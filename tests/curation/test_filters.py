"""DataComp basic filtering and deduplication: reasons, reconciliation, partition independence."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from curation.filters import (
    FilterConfig,
    _components,
    _near_pairs,
    duplicate_reasons,
    phash,
    row_filters,
)
from tests.curation.filters_reference import apply_filters


def picture(seed: int, size: int = 64) -> Image.Image:
    """A coloured background with a few random discs."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(x) for x in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = (int(v) for v in rng.integers(0, size - 10, 2))
        x1, y1 = x0 + int(rng.integers(8, 30)), y0 + int(rng.integers(8, 30))
        draw.ellipse([x0, y0, x1, y1], fill=tuple(int(x) for x in rng.integers(0, 256, 3)))
    return img


def encode(img: Image.Image, fmt: str = "PNG", **kwargs: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def table(rows: list[dict]) -> pa.Table:
    cols = {
        "uid": [r["uid"] for r in rows],
        "text": [r.get("text", "a red circle") for r in rows],
        "image": [r.get("image", b"") for r in rows],
        "image_sha256": [r.get("sha", r["uid"]) for r in rows],
        "width": [r.get("w", 64) for r in rows],
        "height": [r.get("h", 64) for r in rows],
    }
    schema = pa.schema([("uid", pa.string()), ("text", pa.string()), ("image", pa.binary()),
                        ("image_sha256", pa.string()), ("width", pa.int32()), ("height", pa.int32())])
    return pa.table(cols, schema=schema)


def test_row_rules_and_their_order() -> None:
    t = table([
        {"uid": "ok"},
        {"uid": "one_word", "text": "circle"},
        {"uid": "short", "text": "a b"},
        {"uid": "none", "text": None},
        {"uid": "long", "text": "word " * 300},
        {"uid": "small", "w": 16, "h": 64},
        {"uid": "wide", "w": 200, "h": 40},
        {"uid": "both", "text": "x", "w": 1, "h": 1},  # the caption rule is reported first
        {"uid": "nosize", "w": None, "h": None},
    ])
    keep, reasons = row_filters(t, FilterConfig())
    assert reasons == [None, "caption_too_short_words", "caption_too_short_chars", "caption_too_short_words",
                       "caption_too_long", "image_too_small", "aspect_ratio", "caption_too_short_words",
                       "image_too_small"]
    assert keep.tolist() == [r is None for r in reasons]


def test_rules_switch_off() -> None:
    t = table([{"uid": "a", "text": "x", "w": 2, "h": 60}])
    off = FilterConfig(min_caption_words=0, min_caption_chars=0, max_caption_chars=0, min_image_side=0,
                       max_aspect_ratio=0)
    assert row_filters(t, off)[1] == [None]
    assert row_filters(t, FilterConfig(min_caption_words=0, min_caption_chars=0))[1] == ["image_too_small"]
    assert row_filters(t, FilterConfig(min_caption_words=0, min_caption_chars=0, min_image_side=0))[1] == [
        "aspect_ratio"]


def test_exact_duplicates_keep_first_uid() -> None:
    t = table([
        {"uid": "c", "sha": "X", "text": "red circle"},
        {"uid": "a", "sha": "X", "text": "blue circle"},
        {"uid": "b", "sha": "X", "text": "blue circle"},
        {"uid": "d", "sha": "Y", "text": "blue circle"},
    ])
    assert duplicate_reasons(t, FilterConfig())[0] == ["duplicate_image", None, "duplicate_image_text", None]
    only_pairs = FilterConfig(dedup_images=False)
    assert duplicate_reasons(t, only_pairs)[0] == [None, None, "duplicate_image_text", None]
    assert duplicate_reasons(t, FilterConfig(dedup_images=False, dedup_image_text=False))[0] == [None] * 4


def test_duplicates_need_only_key_columns() -> None:
    keys = pa.table({"uid": ["b", "a"], "image_sha256": ["s", "s"], "text": ["t", "t"]})
    assert duplicate_reasons(keys, FilterConfig())[0] == ["duplicate_image_text", None]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["a cat", "a dog", "x", None]),
                          st.integers(8, 80)), min_size=1, max_size=30), st.randoms())
def test_reconciles_and_ignores_row_order(rows: list, rnd) -> None:
    t = table([{"uid": f"u{i:03d}", "sha": f"s{s}", "text": text, "w": w} for i, (s, text, w) in enumerate(rows)])
    kept, removed = apply_filters(t, FilterConfig())
    assert kept.num_rows + removed.num_rows == t.num_rows
    assert set(kept.column("uid").to_pylist()).isdisjoint(removed.column("uid").to_pylist())
    assert None not in removed.column("reason").to_pylist()
    # exact duplicates are gone from what is kept
    pairs = list(zip(kept.column("image_sha256").to_pylist(), kept.column("text").to_pylist(), strict=True))
    assert len(set(p[0] for p in pairs)) == len(pairs)
    # the decision depends on uids, not on where rows sit
    shuffled = t.take(pa.array(rnd.sample(range(t.num_rows), t.num_rows)))
    kept2, _ = apply_filters(shuffled, FilterConfig())
    assert sorted(kept2.column("uid").to_pylist()) == sorted(kept.column("uid").to_pylist())


def test_short_rows_do_not_make_later_copies_duplicates() -> None:
    t = table([{"uid": "a", "sha": "X", "text": "x"}, {"uid": "b", "sha": "X", "text": "a fine caption"}])
    kept, removed = apply_filters(t, FilterConfig())
    assert kept.column("uid").to_pylist() == ["b"]
    assert removed.to_pylist() == [{"uid": "a", "reason": "caption_too_short_words",
                                    "detail": "1 words, 1 characters"}]


def test_phash_near_duplicates() -> None:
    base, other = encode(picture(1)), encode(picture(2))
    near = encode(picture(1), "JPEG", quality=70)  # re-encoded: other bytes, same picture
    assert base != near
    assert bin(phash(base) ^ phash(near)).count("1") <= 4
    assert bin(phash(base) ^ phash(encode(picture(1).resize((60, 60))))).count("1") <= 4
    assert bin(phash(base) ^ phash(other)).count("1") > 10
    assert phash(b"not an image") is None
    t = table([
        {"uid": "b", "image": near, "sha": "n"},
        {"uid": "a", "image": base, "sha": "b"},
        {"uid": "c", "image": other, "sha": "o"},
        {"uid": "d", "image": b"junk", "sha": "j"},
    ])
    assert duplicate_reasons(t, FilterConfig())[0] == [None] * 4  # pHash is off by default
    assert duplicate_reasons(t, FilterConfig(phash_hamming=4))[0] == ["near_duplicate_image", None, None, None]
    _, removed = apply_filters(t, FilterConfig(phash_hamming=4))
    assert removed.column("detail").to_pylist() == ["pHash within 4 bits (by links) of uid a"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=2, max_size=40, unique=True), st.integers(0, 12))
def test_near_pairs_is_brute_force(values: list[int], distance: int) -> None:
    hashes = np.array(values, dtype=np.uint64)
    # make close hashes frequent: flip a few bits of earlier ones
    rng = np.random.default_rng(len(values))
    for i in range(1, len(hashes), 2):
        flips = rng.choice(64, size=rng.integers(0, 8), replace=False)
        hashes[i] = hashes[i - 1] ^ np.uint64(sum(1 << int(f) for f in flips))
    hashes = np.unique(hashes)
    got = {tuple(p) for p in _near_pairs(hashes, distance).tolist()}
    expected = {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
                if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= distance}
    assert got == expected


def test_components() -> None:
    labels = _components(6, np.array([[4, 5], [1, 2], [2, 4]]))
    assert labels.tolist() == [0, 1, 1, 3, 1, 1]
    assert _components(3, np.zeros((0, 2), dtype=np.int64)).tolist() == [0, 1, 2]


@pytest.mark.parametrize("cfg", [FilterConfig(), FilterConfig(phash_hamming=2)])
def test_empty_table(cfg: FilterConfig) -> None:
    kept, removed = apply_filters(table([]), cfg)
    assert kept.num_rows == removed.num_rows == 0


def test_the_partitioned_filter_stage_equals_the_plain_reference_with_its_details(tmp_path) -> None:
    """FilterKeys on each part -> global_filter_reasons -> ApplyReasons keeps and drops what the
    single-table reference does, with the same reason and detail for every dropped row."""
    from curation import partitions as P

    specs = [("a cat on a mat", "A", 64), ("x", "B", 64), ("a dog", "C", 20), ("a cat on a mat", "A", 64),
             ("a bird in the sky", "D", 64), ("two words", "E", 64), ("a dog", "C", 64),
             ("another caption", "D", 64), ("fine caption here", "F", 64), ("ok", "G", 40)]
    rows = [{"uid": f"u{i:02d}", "sha": sha, "text": text, "w": w} for i, (text, sha, w) in enumerate(specs)]
    t = table(rows)
    cfg = FilterConfig(min_caption_chars=3)
    kept, removed = apply_filters(t, cfg)
    halves = [t.slice(0, 4), t.slice(4)]
    for i, half in enumerate(halves):
        P.write_table(half, tmp_path / "in" / P.part_name(i))
        P.FilterKeys(str(tmp_path / "in" / P.part_name(i)), cfg, str(tmp_path / "keys" / P.part_name(i))).run()
    P.write_table(P.global_filter_reasons(P.list_parts(tmp_path / "keys"), cfg), tmp_path / "reasons.parquet")
    for i in range(2):
        P.ApplyReasons(str(tmp_path / "in" / P.part_name(i)), str(tmp_path / "reasons.parquet"), "filter",
                       str(tmp_path / "out" / P.part_name(i)), str(tmp_path / "dropped" / P.part_name(i))).run()
    got_kept = pa.concat_tables([P.read_table(p) for p in P.list_parts(tmp_path / "out")])
    got_dropped = pa.concat_tables([P.read_table(p) for p in P.list_parts(tmp_path / "dropped")])
    assert got_kept.column("uid").to_pylist() == kept.column("uid").to_pylist()
    assert sorted(got_dropped.select(["uid", "reason", "detail"]).to_pylist(), key=lambda r: r["uid"]) == \
        sorted(removed.to_pylist(), key=lambda r: r["uid"])
    details = dict(zip(removed.column("uid").to_pylist(), removed.column("detail").to_pylist()))
    assert details["u01"] == "1 words, 1 characters" and details["u02"] == "20x64 px"
    assert details["u03"] == "first seen as uid u00"  # same image and caption, in the other part
    reasons = dict(zip(removed.column("uid").to_pylist(), removed.column("reason").to_pylist()))
    assert reasons["u07"] == "duplicate_image" and details["u07"] == "first seen as uid u04"
    assert "u06" in kept.column("uid").to_pylist()  # its first copy (u02) was too small, so it is no duplicate
