"""Metadata for MetaCLIP curation: load a list of entries, or build an English one offline.

MetaCLIP ("Demystifying CLIP Data", Xu et al., 2023) builds its 500k entries from WordNet synsets,
Wikipedia unigrams seen at least 100 times, Wikipedia bigrams with pointwise mutual information of
at least 30, and Wikipedia article titles, and releases them as ``metadata.json`` (a JSON list of
strings); the entry id is its position in that list. ``load_metadata`` reads that file or a text
file of one entry per line, from any fsspec URL.

``build_metadata`` is a small offline stand-in for that recipe when no metadata is given: unigrams
from a word-frequency list (e.g. the ``wordfreq`` package's ``top_n_list("en", n)``, passed in)
plus word pairs mined from the pool's own captions by PMI, capped like MetaCLIP's at 500k.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence

import fsspec

from curation.matching import spacing

MAX_ENTRIES = 500_000
"""MetaCLIP's metadata size."""


def _decode(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"metadata {path}: not UTF-8 ({err})") from err


def _parse_json(text: str, path: str) -> list[str]:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"metadata {path}: invalid JSON ({err})") from err
    if not isinstance(entries, list):
        raise ValueError(f"metadata {path}: expected a JSON list of strings, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise ValueError(f"metadata {path}: entry {i} is {type(entry).__name__} {entry!r}, not a string")
    return entries


def load_metadata(path: str) -> list[str]:
    """Entries of a MetaCLIP ``metadata.json`` or of a text file (one entry a line), local or fsspec.

    A file ending in ``.json``, or whose first non-blank character is ``[`` or ``{``, is read as
    JSON and must be a list of strings; otherwise each line is an entry (``\\n`` or ``\\r\\n`` ends a line,
    blank lines are skipped, other spaces are kept: they are part of the entry in MetaCLIP's
    matching). The order is kept, since an entry's id is its position.
    """
    with fsspec.open(path, "rb") as f:
        text = _decode(f.read(), path)
    if path.endswith(".json") or text.lstrip().startswith(("[", "{")):
        entries = _parse_json(text, path)
    else:
        entries = [line.removesuffix("\r") for line in text.split("\n")]
        entries = [entry for entry in entries if entry]
    if not entries:
        raise ValueError(f"metadata {path}: no entries")
    return entries


def save_metadata(entries: Sequence[str], path: str) -> None:
    """Write entries as a MetaCLIP-style ``metadata.json``."""
    with fsspec.open(path, "w", encoding="utf-8") as f:
        json.dump(list(entries), f, ensure_ascii=False)


def caption_words(text: str) -> list[str]:
    """Word tokens of a caption as MetaCLIP's matching sees them: spaced, split, punctuation dropped."""
    return [token for token in spacing(text).split(" ") if token and any(c.isalnum() for c in token)]


def mine_bigrams(texts: Iterable[str | None], min_count: int = 5, min_pmi: float = 3.0) -> list[str]:
    """Adjacent word pairs of the captions whose PMI ``log(p(a b) / (p(a) p(b)))`` (natural log)
    is at least ``min_pmi`` and which occur at least ``min_count`` times, most frequent first."""
    words: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    for text in texts:
        tokens = caption_words(text or "")
        words.update(tokens)
        pairs.update(zip(tokens, tokens[1:], strict=False))
    total_words, total_pairs = sum(words.values()), sum(pairs.values())
    kept = []
    for (a, b), count in pairs.items():
        if count < min_count:
            continue
        pmi = math.log(count / total_pairs) - math.log(words[a] / total_words) - math.log(words[b] / total_words)
        if pmi >= min_pmi:
            kept.append((-count, f"{a} {b}"))
    return [pair for _, pair in sorted(kept)]


def build_metadata(texts: Iterable[str | None], unigrams: Sequence[str], min_count: int = 5,
                   min_pmi: float = 3.0, max_entries: int = MAX_ENTRIES) -> list[str]:
    """Unigrams (in the given order, e.g. most frequent first) then PMI bigrams mined from ``texts``,
    unique, at most ``max_entries``."""
    entries = dict.fromkeys(u for u in unigrams if u and u.strip() == u)
    for pair in mine_bigrams(texts, min_count, min_pmi):
        entries.setdefault(pair)
    return list(entries)[:max_entries]
