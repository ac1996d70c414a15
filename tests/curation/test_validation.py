"""Tests of curation/validation.py: every raw row becomes a sample or a quarantine row with its reason."""

import hashlib
import importlib.util
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ImageFile

from curation import validation as V
from curation.schema import DROPPED_SCHEMA, SAMPLE_SCHEMA
from curation.validation import REASONS, Limits, RawRow, validate_row, validate_rows

_spec = importlib.util.spec_from_file_location("ingest_corpus", Path(__file__).with_name("ingest_corpus.py"))
C = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(C)

LIMITS = Limits()


def reason_of(row: RawRow, limits: Limits = LIMITS) -> str | None:
    sample, bad = validate_row(row, limits)
    assert (sample is None) != (bad is None)
    return None if bad is None else bad["reason"]


def test_reasons_include_every_reason_the_issue_names():
    named = {"empty_image", "undecodable_image", "truncated_image", "decompression_bomb", "missing_caption",
             "caption_not_utf8", "caption_too_long", "unsafe_path", "missing_column", "wrong_type", "missing_image"}
    assert named <= set(REASONS)
    assert "duplicate_uid" not in REASONS  # the cross-partition pass owns it


@pytest.mark.parametrize("ext", ["jpg", "png", "webp"])
def test_good_image_survives_byte_exact(ext):
    image = C.good_images()[ext]
    sample, bad = validate_row(RawRow("f#0", b"a red star\n", image), LIMITS)
    assert bad is None
    assert sample["image"] == image and sample["text"] == "a red star"
    assert sample["image_sha256"] == hashlib.sha256(image).hexdigest()
    assert (sample["width"], sample["height"]) == {"jpg": (64, 64), "png": (48, 48), "webp": (32, 32)}[ext]
    assert sample["uid"] == V.content_uid(image, "a red star")


@pytest.mark.parametrize("name", sorted(C.CORRUPT_IMAGES))
def test_corrupt_images_get_their_reason(name, reliability):
    make, reason = C.CORRUPT_IMAGES[name]
    sample, bad = validate_row(RawRow("f#3", "a caption", make(), uid="k3"), LIMITS)
    assert sample is None
    assert (bad["uid"], bad["stage"], bad["reason"]) == ("k3", "ingest", reason)
    assert bad["detail"]
    reliability.bad_input(C.KIND[name], reason)


def test_truncated_png_and_header_only_bomb(reliability):
    png = C.encoded("PNG", 96, 4)
    assert reason_of(RawRow("r", "t", png[: len(png) * 2 // 3])) == "truncated_image"
    # Nothing after the IHDR: PIL cannot open it, the IHDR read still names the bomb.
    assert reason_of(RawRow("r", "t", C.bomb_png(idat=False))) == "decompression_bomb"
    assert reason_of(RawRow("r", "t", C.bomb_png(side=9000))) == "truncated_image"  # 81M px is under PIL's cap
    reliability.bad_input("truncated PNG", "truncated_image")
    reliability.bad_input("decompression bomb (a PNG header and nothing else)", "decompression_bomb")
    reliability.bad_input("PNG claiming 9000x9000 pixels, with a few bytes of them", "truncated_image")


def test_a_cut_webp_is_truncated_and_a_garbled_one_undecodable(reliability):
    webp = C.encoded("WEBP", 96, 5)
    assert reason_of(RawRow("r", "t", webp[: len(webp) // 2])) == "truncated_image"
    garbled = webp[:20] + bytes(len(webp) - 20)  # every byte there, the bitstream zeroed
    assert reason_of(RawRow("r", "t", garbled)) == "undecodable_image"
    reliability.bad_input("truncated WebP", "truncated_image")
    reliability.bad_input("WebP with its bitstream zeroed", "undecodable_image")


def test_pixel_cap_is_checked_before_decoding(reliability):
    bombs = 20
    for _ in range(bombs):
        assert reason_of(RawRow("r", "t", C.bomb_png())) == "decompression_bomb"
    # Decoding 20000x20000 RGB would allocate 1.2 GB; the cap is checked on the header's size.
    assert reason_of(RawRow("r", "t", C.good_images()["jpg"]), Limits(max_pixels=64 * 64 - 1)) == "decompression_bomb"
    assert reason_of(RawRow("r", "t", C.good_images()["jpg"]), Limits(max_pixels=64 * 64)) is None
    reliability.bad_input(C.KIND["bomb"], "decompression_bomb", count=bombs)
    reliability.bad_input("image over max_pixels", "decompression_bomb")


def test_only_jpeg_png_webp_are_accepted(reliability):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    assert reason_of(RawRow("r", "t", buf.getvalue())) == "undecodable_image"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # else PIL pads truncated images silently
    reliability.bad_input("GIF (not JPEG, PNG or WebP)", "undecodable_image")


@pytest.mark.parametrize("text, reason, kind", [
    (None, "missing_caption", C.KIND["notext"]),
    (C.BAD_UTF8, "caption_not_utf8", C.KIND["badtext"]),
    ("caf\udce9", "caption_not_utf8", C.KIND["badtext"]),  # a CSV's invalid byte (errors="surrogateescape")
    ("x" * 4097, "caption_too_long", "caption over max_caption_chars"),
    (42, "wrong_type", "caption of the wrong type (int)"),
    (["a", "list"], "wrong_type", "caption of the wrong type (list)"),
    ("x" * 4096, None, None),
    ("", None, None),  # empty alt-text is the filter stage's business, not a broken row
    ("\ufeffhello\r\n".encode(), None, None),
])
def test_caption_checks(text, reason, kind, reliability):
    assert reason_of(RawRow("r", text, C.good_images()["png"])) == reason
    if kind:
        reliability.bad_input(kind, reason)


def test_caption_bytes_lose_one_newline_and_a_bom_only():
    assert V.decode_caption("\ufeffa b\n\n".encode(), 100) == "a b\n"
    assert V.decode_caption("  spaced  ", 100) == "  spaced  "


@pytest.mark.parametrize("uid, expected", [("abc", "abc"), (7, "7")])
def test_given_uids_are_kept(uid, expected):
    sample, _ = validate_row(RawRow("r", "t", C.good_images()["png"], uid=uid), LIMITS)
    assert sample["uid"] == expected


@pytest.mark.parametrize("uid", ["", True, 1.5, ["k"]])
def test_bad_uids_are_wrong_type_under_the_row_id(uid, reliability):
    _, bad = validate_row(RawRow("file.parquet#9", "t", C.good_images()["png"], uid=uid), LIMITS)
    assert (bad["uid"], bad["reason"]) == ("file.parquet#9", "wrong_type")
    reliability.bad_input("empty uid" if uid == "" else f"uid of the wrong type ({type(uid).__name__})", "wrong_type")


@pytest.mark.parametrize("image, reason", [(None, "missing_image"), ("a/path.jpg", "wrong_type"), (12, "wrong_type")])
def test_image_cell_types(image, reason, reliability):
    assert reason_of(RawRow("r", "t", image)) == reason
    kind = C.KIND["noimage"] if image is None else f"image cell of the wrong type ({type(image).__name__})"
    reliability.bad_input(kind, reason)


def test_reader_problems_pass_through_and_keep_the_uid():
    _, bad = validate_row(RawRow("t.tar#../evil", None, None, uid="k", problem=("unsafe_path", "'../evil.jpg'")),
                          LIMITS)
    assert bad == {"uid": "k", "stage": "ingest", "reason": "unsafe_path", "detail": "'../evil.jpg'"}


def test_content_uid_depends_on_image_and_text():
    a, b = C.good_images()["jpg"], C.good_images()["png"]
    assert len({V.content_uid(a, "x"), V.content_uid(a, "y"), V.content_uid(b, "x")}) == 3


def test_an_unexpected_exception_is_quarantined_not_raised(monkeypatch, reliability):
    def boom(data, max_pixels):
        raise RuntimeError("decoder crashed")

    monkeypatch.setattr(V, "inspect_image", boom)
    _, bad = validate_row(RawRow("r", "t", C.good_images()["png"], uid="u"), LIMITS)
    assert (bad["reason"], bad["detail"]) == ("validation_error", "RuntimeError: decoder crashed")
    reliability.fault("image decoder raising an unexpected error", "ingest (row quarantined)")


def test_validate_rows_tables_and_order():
    images = C.good_images()
    rows = [RawRow("a", "one", images["jpg"]), RawRow("b", None, images["png"]), RawRow("c", "three", images["webp"])]
    samples, quarantine = validate_rows(rows, LIMITS)
    assert samples.schema == SAMPLE_SCHEMA and quarantine.schema == DROPPED_SCHEMA
    assert samples.column("text").to_pylist() == ["one", "three"]
    assert quarantine.column("uid").to_pylist() == ["b"]
    empty_samples, empty_quarantine = validate_rows([], LIMITS)
    assert empty_samples.num_rows == empty_quarantine.num_rows == 0


_IMAGES = st.sampled_from([C.good_images()["png"], b"", C.truncated_jpeg(), C.bomb_png(), None, 3]) | st.binary(
    max_size=64)
_TEXTS = st.none() | st.text(max_size=20) | st.binary(max_size=20) | st.integers()
_UIDS = st.none() | st.text(max_size=5) | st.integers() | st.booleans()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_IMAGES, _TEXTS, _UIDS), max_size=12))
def test_every_row_is_accounted_for_once(cells):
    rows = [RawRow(f"f#{i}", text, image, uid) for i, (image, text, uid) in enumerate(cells)]
    samples, quarantine = validate_rows(rows, Limits(max_caption_chars=10))
    assert samples.num_rows + quarantine.num_rows == len(rows)
    assert set(quarantine.column("reason").to_pylist()) <= set(REASONS)
    assert set(quarantine.column("stage").to_pylist()) <= {"ingest"}


MARKUP = ("caption with HTML markup", "kept, markup removed")
INVISIBLE = ("caption with control or invisible characters", "kept, characters removed")
"""The reliability ledger's (bad input, outcome) of the captions cleaned below."""


@pytest.mark.parametrize("raw, cleaned, recorded", [
    ("a <b>red</b> square", "a red square", MARKUP),
    ("line<br/>break &amp; more", "line break & more", MARKUP),
    ('<img src="x.jpg" alt="a"> a cat', "a cat", MARKUP),
    ("caf&#233; &#x41;", "café A", ("caption with HTML entities", "kept, entities decoded")),
    ("nul\x00and\x1b[31mescape", "nul and [31mescape", INVISIBLE),
    ("right\u202eto left", "rightto left", INVISIBLE),  # a bidi override: what is shown would differ from what is read
    ("zero\u200bwidth\ufeff", "zerowidth", INVISIBLE),
    ("family \U0001f468\u200d\U0001f469", "family \U0001f468\u200d\U0001f469", None),  # the emoji's joiner stays
    ("a < b and c > d", "a < b and c > d", None),   # not a tag
    ("tom & jerry", "tom & jerry", None),           # not an entity
    ("  spaced\ttab\nline  ", "  spaced\ttab\nline  ", None),  # nothing to clean: unchanged, whitespace and all
    ("<p></p>", "", MARKUP),                        # empty now: the filter stage drops it as too short
])
def test_captions_lose_markup_and_invisible_characters_by_the_documented_rule(raw, cleaned, recorded, reliability):
    assert V.decode_caption(raw, 100) == cleaned
    assert V.decode_caption(raw.encode(), 100) == cleaned
    if recorded:
        reliability.bad_input(*recorded)


def test_a_one_megabyte_caption_is_quarantined_without_being_cleaned(reliability):
    assert reason_of(RawRow("r", "<b>" + "x" * 1_000_000, C.good_images()["png"])) == "caption_too_long"
    reliability.bad_input("1 MB caption with markup", "caption_too_long")
