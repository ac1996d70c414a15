"""Parity of the vectorised matcher with a plain transcription of MetaCLIP's algorithm."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.matching import EntryMatcher, _IntTable, spacing


def metaclip_spacing(text: str) -> str:
    """MetaCLIP's ``spacing`` written out as in substr_matching.py."""
    spaced_text = f" {text} "
    for punct_to_wrap in [",", ".", ";", ":", "?", "!", "`"]:
        spaced_text = spaced_text.replace(punct_to_wrap, f" {punct_to_wrap} ")
    for char_to_space in ["\t", "\n", "\r"]:
        spaced_text = spaced_text.replace(char_to_space, " ")
    return spaced_text


def reference(entries: list[str], texts: list[str | None]) -> list[list[int]]:
    """MetaCLIP's substr_matching: every entry whose padded form is in the spaced text."""
    out = []
    for text in texts:
        spaced = "" if text is None else metaclip_spacing(text)
        out.append([i for i, e in enumerate(entries) if text is not None and f" {e} " in spaced])
    return out


# a small alphabet with every character spacing treats specially, so matches are frequent
ALPHABET = "ab é字 ,.;:?!`\t\n\r-'"
small_text = st.text(alphabet=ALPHABET, max_size=24)
long_word = st.text(alphabet="ab", min_size=7, max_size=20)  # around the 8- and 16-byte word edges


@st.composite
def entries_and_texts(draw: st.DrawFn) -> tuple[list[str], list[str | None]]:
    pieces = st.one_of(small_text, long_word, st.sampled_from(["a", "b", "a b", " a", "a ", "", "  "]))
    entries = draw(st.lists(pieces, min_size=1, max_size=12))
    joined = st.lists(st.one_of(pieces, st.sampled_from(entries)), max_size=6).map(" ".join)
    texts = draw(st.lists(st.one_of(st.none(), small_text, joined), min_size=1, max_size=10))
    return entries, texts


def test_spacing_is_metaclips() -> None:
    for text in ["", "a,b", "a\tb\r\nc", "x.y;z:w?v!u`t", "  lots  of   space ", "ünï,cödé"]:
        assert spacing(text) == metaclip_spacing(text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries_and_texts())
def test_match_batch_equals_reference(case: tuple[list[str], list[str | None]]) -> None:
    entries, texts = case
    assert EntryMatcher(entries).match_batch(texts) == reference(entries, texts)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=8), st.lists(st.text(max_size=30), max_size=8))
def test_any_unicode_equals_reference(entries: list[str], texts: list[str]) -> None:
    assert EntryMatcher(entries).match_batch(texts) == reference(entries, texts)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("red dog", ["red", "dog", "red dog"]),
        ("red,dog", ["red", "dog", "red , dog"]),  # spacing cuts at the comma, the pair never matches
        ("Red dog", ["dog"]),  # case-sensitive
        ("reddog", []),
        ("red  dog", ["red", "dog", ""]),  # double space: an empty token, so the empty entry
        ("red\tdog\n", ["red", "dog", "red dog", ""]),  # trailing newline becomes a space
        ("", [""]),  # MetaCLIP pads "" to "  ", which holds " " + "" + " "
        ("a.b.c", []),
        ("façade 字", ["façade", "字"]),
        ("un verre d'eau", ["d'eau"]),
    ],
)
def test_edge_cases(text: str, expected: list[str]) -> None:
    entries = ["red", "dog", "red dog", "red , dog", "", "façade", "字", "d'eau", "a.b", "red,dog"]
    got = EntryMatcher(entries).match_batch([text])[0]
    assert got == sorted(entries.index(e) for e in expected)
    assert got == reference(entries, [text])[0]


def test_none_and_arrow_inputs() -> None:
    entries = ["a", "", "b c"]
    texts = [None, "a b c", "", None, "x"]
    matcher = EntryMatcher(entries)
    expected = [[], [0, 2], [1], [], []]
    assert matcher.match_batch(texts) == expected
    assert matcher.match_batch(pa.array(texts)) == expected
    assert matcher.match_batch(pa.chunked_array([texts[:2], texts[2:]])) == expected
    assert matcher.match_batch(pa.array(texts).slice(1, 3)) == expected[1:4]
    assert matcher.match_batch([]) == []


def test_repeated_entries_all_match() -> None:
    entries = ["dog", "cat", "dog", "dog cat", "dog cat"]
    assert EntryMatcher(entries).match_batch(["dog cat!"]) == [[0, 1, 2, 3, 4]]


def test_lone_surrogate_text() -> None:
    entries = ["a", "\ud800"]
    texts = ["a \ud800", "\ud800a"]
    assert EntryMatcher(entries).match_batch(texts) == reference(entries, texts)


def test_match_arrays_is_csr_of_match_batch() -> None:
    entries = ["a", "b", "a b"]
    texts = ["a b a", None, "b", "c"]
    matcher = EntryMatcher(entries)
    offsets, ids = matcher.match_arrays(texts)
    assert offsets.tolist() == [0, 3, 3, 4, 4]
    assert ids.tolist() == [0, 1, 2, 1]


def test_rejects_non_string_entries() -> None:
    with pytest.raises(ValueError, match="strings"):
        EntryMatcher(["a", None])  # type: ignore[list-item]


def test_synthetic_scale_parity() -> None:
    """A few thousand web-like captions against a metadata of a few thousand entries."""
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)] + ["photo", "of", "the", "a", "red", "blue", "IMG_0001.jpg"]
    entries = sorted({rng.choice(words) for _ in range(200)} | {f"{rng.choice(words)} {rng.choice(words)}"
                                                                 for _ in range(300)})
    seps = [" ", " ", " ", ", ", ". ", "  ", "\t", "!", ": "]
    texts = ["".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(0, 12)))
             for _ in range(2000)]
    assert EntryMatcher(entries).match_batch(texts) == reference(entries, texts)


@pytest.mark.parametrize("length", [7, 8, 9, 15, 16, 17, 24, 25])
def test_long_tokens_differing_in_one_byte(length: int) -> None:
    """Tokens are keyed by 8-byte words: every byte of every word must count."""
    base = "a" * length
    variants = [base[:i] + "b" + base[i + 1 :] for i in range(length)]
    entries = [base, *variants, base + "a", base[:-1]]
    texts = [base, *variants[::3], f"{base} {variants[-1]}"]
    assert EntryMatcher(entries).match_batch(texts) == reference(entries, texts)


def test_pieces_join_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches are matched piece by piece: results must not depend on where the pieces are cut."""
    import curation.matching as matching

    entries = ["a", "b", "a b", ""]
    texts = ["a b", None, "", "b", "a  b", None, "a", "x"] * 3
    whole = EntryMatcher(entries).match_batch(texts)
    for chunk_texts, chunk_bytes in [(1, 1 << 19), (3, 1 << 19), (1 << 13, 2), (5, 7)]:
        monkeypatch.setattr(matching, "_CHUNK_TEXTS", chunk_texts)
        monkeypatch.setattr(matching, "_CHUNK_BYTES", chunk_bytes)
        assert EntryMatcher(entries).match_batch(texts) == whole == reference(entries, texts)


def python_hash(value: str, seed: int) -> int:
    """hash_strings written out per string with Python ints."""
    mask = 2**64 - 1

    def mix(x: int) -> int:
        x ^= x >> 33
        x = (x * 0xFF51AFD7ED558CCD) & mask
        return x ^ (x >> 33)

    data = value.encode("utf-8", "surrogatepass")
    h = mix(len(data) ^ mix((seed + 1) * 0x9E3779B97F4A7C15 % 2**64))
    for k in range(0, max(len(data), 1), 8):
        h = mix(h ^ int.from_bytes(data[k : k + 8], "little"))
    return mix(h ^ (h >> 29))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=20), st.integers(-(2**70), 2**70))
def test_hash_strings_is_the_written_out_hash(values: list[str], seed: int) -> None:
    from curation.matching import hash_strings

    assert hash_strings(values, seed).tolist() == [python_hash(v, seed) for v in values]


def test_hash_strings_spreads_similar_strings() -> None:
    from curation.matching import hash_strings

    values = [f"{i:09d}" for i in range(5000)]
    hashes = hash_strings(values, 0)
    assert len(set(hashes.tolist())) == len(values)
    assert not np.array_equal(hashes, hash_strings(values, 1))
    top_bits = (hashes >> np.uint64(60)).astype(int)
    assert np.bincount(top_bits, minlength=16).min() > 250  # ~312 expected per bucket


def test_empty_metadata_matches_nothing() -> None:
    assert EntryMatcher([]).match_batch(["a", None, "", "\t"]) == [[], [], [], []]
    offsets, ids = EntryMatcher([]).match_arrays(["a b"])
    assert offsets.tolist() == [0, 0] and ids.tolist() == []


def test_null_slots_holding_bytes() -> None:
    """Arrow lets a null slot span bytes: they must be ignored."""
    from curation.matching import hash_strings

    validity = pa.py_buffer(np.packbits([0, 1], bitorder="little").tobytes())
    offsets = pa.py_buffer(np.array([0, 3, 6], dtype=np.int64).tobytes())
    array = pa.Array.from_buffers(pa.large_string(), 2, [validity, offsets, pa.py_buffer(b"dogcat")])
    assert array.to_pylist() == [None, "cat"]
    assert EntryMatcher(["dog", "cat"]).match_batch(array) == [[], [1]]
    assert hash_strings(array, 0).tolist() == hash_strings(["", "cat"], 0).tolist()


@given(st.lists(st.integers(0, 2**64 - 2), min_size=1, max_size=300, unique=True), st.data())
@settings(max_examples=60, deadline=None)
def test_int_table_finds_every_key_and_refuses_a_repeated_one(keys, data):
    values = np.arange(len(keys), dtype=np.int64) * 7
    table = _IntTable(np.array(keys, dtype=np.uint64), values)
    assert table.lookup(np.array(keys, dtype=np.uint64)).tolist() == values.tolist()
    absent = np.array([k for k in (0, 1, 2**63, 2**64 - 2) if k not in set(keys)], dtype=np.uint64)
    assert (table.lookup(absent) == -1).all()
    repeated = keys + [data.draw(st.sampled_from(keys))]
    with pytest.raises(ValueError, match="distinct"):
        _IntTable(np.array(repeated, dtype=np.uint64), np.arange(len(repeated)))


def test_int_table_refuses_a_repeat_among_colliding_keys():
    keys = np.arange(64, dtype=np.uint64) << np.uint64(40)  # many share home slots in a small table
    _IntTable(keys, np.arange(64))
    with pytest.raises(ValueError, match="distinct"):
        _IntTable(np.concatenate([keys, keys[37:38]]), np.arange(65))


@pytest.mark.parametrize("entries", [["cat", 3], ["cat", None], [b"cat"]])
def test_entries_that_are_not_strings_are_refused(entries):
    with pytest.raises(ValueError, match="strings"):
        EntryMatcher(entries)
