"""Loading MetaCLIP metadata (JSON list or one entry a line) and the offline builder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.metadata import build_metadata, caption_words, load_metadata, mine_bigrams, save_metadata


def test_json_list(tmp_path: Path) -> None:
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(["dog", "hot dog", "café", " spaced "]), encoding="utf-8")
    assert load_metadata(str(path)) == ["dog", "hot dog", "café", " spaced "]


def test_text_file_one_entry_a_line(tmp_path: Path) -> None:
    path = tmp_path / "entries.txt"
    path.write_bytes("dog\r\nhot dog\n\nred  car\n".encode())
    assert load_metadata(str(path)) == ["dog", "hot dog", "red  car"]


def test_json_detected_by_content_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "entries"
    path.write_bytes(b"\xef\xbb\xbf  [\"a\", \"b\"]")
    assert load_metadata(str(path)) == ["a", "b"]


def test_fsspec_url(tmp_path: Path) -> None:
    save_metadata(["x", "y z"], f"file://{tmp_path}/m.json")
    assert load_metadata(f"file://{tmp_path}/m.json") == ["x", "y z"]
    save_metadata(["mem"], "memory://curaclip-test/m.json")
    assert load_metadata("memory://curaclip-test/m.json") == ["mem"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1}', "JSON list"),
        (b'["a", 3]', "entry 1 is int"),
        (b'["a", ', "invalid JSON"),
        (b"\xff\xfe bad", "not UTF-8"),
        (b"\n\n", "no entries"),
        (b"[]", "no entries"),
    ],
)
def test_bad_content(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_metadata(str(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_metadata(str(tmp_path / "nope.json"))


def test_caption_words_follow_spacing() -> None:
    assert caption_words("Hot dog, with  mustard!\tyum") == ["Hot", "dog", "with", "mustard", "yum"]


def test_mine_bigrams_by_pmi() -> None:
    texts = ["new york skyline at night"] * 6 + ["the cat", "the dog", "a cat", "a dog"] * 10
    texts += [f"the {w}" for w in ("car", "sky", "sea", "hat", "pen")] * 3
    pairs = mine_bigrams(texts, min_count=5, min_pmi=2.0)
    assert "new york" in pairs and "york skyline" in pairs
    assert "the cat" not in pairs  # frequent, but "the" goes with everything: low PMI
    assert "the cat" in mine_bigrams(texts, min_count=5, min_pmi=1.0)  # PMI ln(3.5)
    assert mine_bigrams(texts, min_count=7, min_pmi=2.0) == []


def test_build_metadata() -> None:
    texts = ["golden gate bridge at dusk"] * 8 + [None, ""]
    entries = build_metadata(texts, ["bridge", "dusk", "bridge", "", " pad"], min_count=5, min_pmi=0.5)
    assert entries[:2] == ["bridge", "dusk"]
    assert "golden gate" in entries and "gate bridge" in entries
    assert len(entries) == len(set(entries))
    assert build_metadata(texts, ["a", "b", "c"], max_entries=2) == ["a", "b"]
