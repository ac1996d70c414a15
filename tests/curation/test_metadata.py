"""Loading MetaCLIP metadata (JSON list or one entry a line) and the offline builder."""

from __future__ import annotations

import json
import socket
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import wordfreq

from curation.matching import EntryMatcher
from curation.metadata import (
    MAX_ENTRIES,
    MetadataBuilderConfig,
    build_english_metadata,
    count_words_and_pairs,
    english_unigrams,
    load_metadata,
    merge_entries,
    pmi_bigrams,
    save_metadata,
)


def _mine(texts, min_count: int, min_pmi: float) -> list[str]:
    return pmi_bigrams(*count_words_and_pairs(texts), min_count=min_count, min_pmi=min_pmi)


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


def test_mine_bigrams_by_pmi() -> None:
    texts = ["new york skyline at night"] * 6 + ["the cat", "the dog", "a cat", "a dog"] * 10
    texts += [f"the {w}" for w in ("car", "sky", "sea", "hat", "pen")] * 3
    pairs = _mine(texts, min_count=5, min_pmi=2.0)
    assert "new york" in pairs and "york skyline" in pairs
    assert "the cat" not in pairs  # frequent, but "the" goes with everything: low PMI
    assert "the cat" in _mine(texts, min_count=5, min_pmi=1.0)  # PMI ln(3.5)
    assert _mine(texts, min_count=7, min_pmi=2.0) == []


def test_merge_entries_keeps_unigrams_first_then_mined_pairs() -> None:
    texts = ["golden gate bridge at dusk"] * 8 + [None, ""]
    pairs = pmi_bigrams(*count_words_and_pairs(texts), min_count=5, min_pmi=0.5)
    entries = merge_entries(["bridge", "dusk", "bridge", "", " pad"], pairs, max_entries=100)
    assert entries[:2] == ["bridge", "dusk"]
    assert "golden gate" in entries and "gate bridge" in entries
    assert len(entries) == len(set(entries))
    assert merge_entries(["a", "b", "c"], pairs, max_entries=2) == ["a", "b"]


def test_caption_pairs_only_where_matching_can_see_them() -> None:
    words, pairs = count_words_and_pairs(["a, b  c d", "c d!", None])
    assert pairs == Counter({("c", "d"): 2})  # not across the comma nor the double space
    assert words == Counter({"a": 1, "b": 1, "c": 2, "d": 2})


def test_word_and_pair_counts_add_over_partitions() -> None:
    texts = ["New York at night", "a cat in New York", "", None, "cat, cat cat"]
    whole = count_words_and_pairs(texts)
    first, second = count_words_and_pairs(texts[:2]), count_words_and_pairs(texts[2:])
    assert (first[0] + second[0], first[1] + second[1]) == whole
    assert pmi_bigrams(*whole, min_count=2, min_pmi=0.0) == _mine(texts, min_count=2, min_pmi=0.0)


def test_mined_bigrams_match_their_captions() -> None:
    texts = ["New York, at night", "New York  skyline", "Photo: New York!"] * 3 + ["York New"]
    pairs = _mine(texts, min_count=3, min_pmi=0.0)
    assert pairs == ["New York", "at night"]  # 9 and 3 occurrences; "York New" once
    matched = Counter(i for ids in EntryMatcher(pairs).match_batch(texts) for i in ids)
    assert matched == Counter({0: 9, 1: 3})  # every counted occurrence is one MetaCLIP matching finds


def test_english_unigrams_frequent_alphabetic_words() -> None:
    words = english_unigrams(n=100_000, min_zipf=3.0)
    assert words[:3] == ["the", "to", "and"]
    assert {"dog", "water", "photo", "house", "beautiful"} <= set(words[:5000])
    assert all(w.isalpha() and len(w) >= 2 for w in words)
    assert "it's" not in words and "a" not in words and "u.s" not in words
    assert all(wordfreq.zipf_frequency(w, "en") >= 3.0 for w in words[-50:])
    assert len(words) == len(set(words))
    rarer = english_unigrams(n=100_000, min_zipf=2.5)
    assert rarer[: len(words)] == words and len(rarer) > len(words)
    assert english_unigrams(n=100, min_zipf=0.0, min_length=1)[4] == "a"


def test_english_unigrams_capitalized_and_ascii() -> None:
    words = english_unigrams(n=3000, capitalized=True)
    assert words[:4] == ["the", "The", "to", "To"]
    assert words.index("Dog") == words.index("dog") + 1
    assert len(words) == 2 * len(english_unigrams(n=3000))
    assert all(w.isascii() for w in english_unigrams(n=50_000, ascii_only=True))
    assert not all(w.isascii() for w in english_unigrams(n=320_000))


POOL = ["Golden Gate Bridge at dusk", "the Golden Gate from a boat", "a dog on the beach"] * 4


def test_build_english_metadata() -> None:
    cfg = MetadataBuilderConfig(unigrams=5000, bigram_min_count=4, bigram_min_pmi=0.5)
    entries = build_english_metadata(POOL, cfg)
    assert entries[:3] == ["the", "to", "and"] and "dog" in entries and "beach" in entries
    assert {"Golden Gate", "Gate Bridge"} <= set(entries)
    assert entries.index("Golden Gate") > entries.index("beach")  # unigrams first
    assert len(entries) == len(set(entries))
    assert entries == build_english_metadata(list(POOL), cfg)  # deterministic
    capped = build_english_metadata(POOL, replace(cfg, max_entries=100))
    assert capped == entries[:100]


def test_build_english_metadata_default_size() -> None:
    entries = build_english_metadata(POOL)
    assert 100_000 < len(entries) <= MAX_ENTRIES  # ~160k wordfreq words at Zipf >= 1.5


def test_builder_reads_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the metadata builder tried to reach the network")

    for name in ("top_n_list", "get_frequency_dict", "get_frequency_list"):
        getattr(wordfreq, name).cache_clear()  # make it read its data files again, now
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    assert "Golden Gate" in build_english_metadata(POOL, MetadataBuilderConfig(unigrams=1000, bigram_min_count=4,
                                                                                 bigram_min_pmi=0.5))


def test_choose_metadata_takes_the_file_the_world_or_the_builder(tmp_path) -> None:
    from curation.metadata import MetadataBuilderConfig, choose_metadata
    from curation.world.vocabulary import metadata_entries

    def never() -> tuple[Counter, Counter]:
        raise AssertionError("the pool is counted only for the builder")

    path = tmp_path / "m.json"
    save_metadata(["hot dog", "bridge"], str(path))
    assert choose_metadata(str(path), True, MetadataBuilderConfig(), never) == (["hot dog", "bridge"], str(path))
    assert choose_metadata(None, True, MetadataBuilderConfig(), never) == (metadata_entries(), "synthetic world")
    words = Counter({"bridge": 9, "golden": 8, "gate": 8})
    pairs = Counter({("golden", "gate"): 8})
    builder = MetadataBuilderConfig(unigrams=1000, bigram_min_count=2, bigram_min_pmi=0.1)
    entries, source = choose_metadata(None, False, builder, lambda: (words, pairs))
    assert "golden gate" in entries and source.startswith("built:")
