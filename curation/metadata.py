"""Metadata for MetaCLIP curation: load a list of entries, or build an English one offline.

MetaCLIP ("Demystifying CLIP Data", Xu et al., 2023) builds its 500k entries from WordNet synsets,
Wikipedia unigrams seen at least 100 times, Wikipedia bigrams with pointwise mutual information of
at least 30, and Wikipedia article titles, and releases them as ``metadata.json`` (a JSON list of
strings); the entry id is its position in that list. ``load_metadata`` reads that file or a text
file of one entry per line, from any fsspec URL.

``build_english_metadata`` is an offline stand-in for that recipe when no metadata is given. How it
differs from MetaCLIP's:

- unigrams come from the ``wordfreq`` package's English list (``top_n_list("en", n)``, a blend of
  Wikipedia, subtitles, news, books, web text and social media; Speer, 2022) instead of a
  Wikipedia count: alphabetic words (``str.isalpha``) of a minimum length whose Zipf frequency
  (log10 of occurrences per billion words) is at least ``min_zipf``; the default 1.5 (about 30 per
  billion) is close to MetaCLIP's 100 occurrences in English Wikipedia's 3-4 billion words;
- wordfreq folds case, so its words are lowercase, while MetaCLIP's matching is case-sensitive:
  ``capitalized`` adds each word's capitalised form after it (``dog``, ``Dog``), as a
  case-sensitive Wikipedia count would have listed both;
- bigrams are mined from the pool's own captions, not Wikipedia, with PMI in natural log over the
  pool's word and pair frequencies (MetaCLIP's threshold of 30 is on its own scale, not comparable);
- there are no WordNet synsets and no Wikipedia titles (multiword names come only from the bigrams).

Entries are capped like MetaCLIP's at 500k; unigrams come first, most frequent first.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import fsspec

from curation.matching import spacing
from curation.world.vocabulary import metadata_entries

MAX_ENTRIES = 500_000
"""MetaCLIP's metadata size."""


@dataclass(frozen=True)
class MetadataBuilderConfig:
    """Offline English metadata (``build_english_metadata``) for pools that bring none."""

    unigrams: int = 500_000
    """Most frequent wordfreq English words considered before filtering (the list holds ~320k)."""
    min_zipf: float = 1.5
    """Least Zipf frequency (log10 per billion words) of a unigram; 1.5 is ~100 Wikipedia counts."""
    min_length: int = 2
    """Fewest characters of a unigram (1 would add single letters)."""
    ascii_only: bool = False
    """Keep only ASCII unigrams (drops e.g. "café", "naïve")."""
    capitalized: bool = False
    """Also add each unigram's capitalised form ("Dog" after "dog"): matching is case-sensitive."""
    bigram_min_count: int = 5
    """Fewest occurrences of a caption word pair to become an entry."""
    bigram_min_pmi: float = 3.0
    """Least pointwise mutual information (natural log) of a caption word pair."""
    max_entries: int = MAX_ENTRIES
    """Cap on the entries (MetaCLIP: 500k)."""


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


def _is_word(token: str) -> bool:
    return any(c.isalnum() for c in token)


def count_words_and_pairs(texts: Iterable[str | None]) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    """Word counts and adjacent word-pair counts of the captions, as MetaCLIP's matching tokenises them.

    A pair is two words next to each other in the spaced caption, so ``"a b"`` is only counted where
    it can match: not across punctuation (``"a, b"``) nor a double space. Counters of several
    partitions add up (``+``) to those of the whole pool.
    """
    words: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    for text in texts:
        tokens = spacing(text or "").split(" ")
        is_word = [_is_word(token) for token in tokens]
        words.update(token for token, w in zip(tokens, is_word) if w)
        pairs.update((a, b) for a, b, wa, wb in zip(tokens, tokens[1:], is_word, is_word[1:]) if wa and wb)
    return words, pairs


def pmi_bigrams(words: Counter[str], pairs: Counter[tuple[str, str]], min_count: int = 5,
                min_pmi: float = 3.0) -> list[str]:
    """Pairs whose PMI ``log(p(a b) / (p(a) p(b)))`` (natural log) is at least ``min_pmi`` and which
    occur at least ``min_count`` times, most frequent first (ties in string order)."""
    total_words, total_pairs = sum(words.values()), sum(pairs.values())
    kept = []
    for (a, b), count in pairs.items():
        if count < min_count:
            continue
        pmi = math.log(count / total_pairs) - math.log(words[a] / total_words) - math.log(words[b] / total_words)
        if pmi >= min_pmi:
            kept.append((-count, f"{a} {b}"))
    return [pair for _, pair in sorted(kept)]


def merge_entries(unigrams: Sequence[str], bigrams: Sequence[str], max_entries: int) -> list[str]:
    """Unigrams in order (empty or space-padded ones dropped), then bigrams, unique, at most ``max_entries``."""
    entries = dict.fromkeys(u for u in unigrams if u and u.strip() == u)
    for pair in bigrams:
        entries.setdefault(pair)
    return list(entries)[:max_entries]


def english_unigrams(n: int = 500_000, min_zipf: float = 1.5, min_length: int = 2, ascii_only: bool = False,
                     capitalized: bool = False) -> list[str]:
    """wordfreq's most frequent English words that metadata entries can use, most frequent first.

    Of ``top_n_list("en", n)``: words of letters only (no digits, apostrophes or dots: ``"it's"``,
    ``"u.s"``), at least ``min_length`` long, with a Zipf frequency of at least ``min_zipf``; with
    ``capitalized``, each followed by its capitalised form. The data ships inside the package, so
    this reads no network.
    """
    import wordfreq  # a dependency of this builder only; loading the metadata needs none

    frequency = wordfreq.get_frequency_dict("en")
    # Zipf = log10(frequency * 1e9); wordfreq stores frequencies in centibels, so allow rounding at the cut
    min_frequency = 10.0 ** (min_zipf - 9) * (1 - 1e-9)
    words = []
    for word in wordfreq.top_n_list("en", n, ascii_only=ascii_only):
        if frequency.get(word, 0.0) < min_frequency:
            break  # the list is in decreasing frequency
        if len(word) >= min_length and word.isalpha():
            words.append(word)
            if capitalized and word.capitalize() != word:
                words.append(word.capitalize())
    return list(dict.fromkeys(words))


def build_english_metadata(texts: Iterable[str | None], cfg: MetadataBuilderConfig = MetadataBuilderConfig()
                           ) -> list[str]:
    """MetaCLIP-like English metadata, offline: ``english_unigrams`` then the captions' PMI bigrams,
    unique and capped at ``cfg.max_entries``."""
    return english_metadata_from_counts(*count_words_and_pairs(texts), cfg)


def english_metadata_from_counts(words: Counter[str], pairs: Counter[tuple[str, str]],
                                 cfg: MetadataBuilderConfig = MetadataBuilderConfig()) -> list[str]:
    """``build_english_metadata`` from ``count_words_and_pairs`` counts (summed over a pool's partitions)."""
    unigrams = english_unigrams(cfg.unigrams, cfg.min_zipf, cfg.min_length, cfg.ascii_only, cfg.capitalized)
    bigrams = pmi_bigrams(words, pairs, cfg.bigram_min_count, cfg.bigram_min_pmi)
    return merge_entries(unigrams, bigrams, cfg.max_entries)


def builder_version() -> str:
    """What the offline builder's output depends on beyond its config: the wordfreq word list's version."""
    return f"wordfreq {importlib.metadata.version('wordfreq')}"


def choose_metadata(path: str | None, synthetic_only: bool, builder: MetadataBuilderConfig,
                    count_captions: Callable[[], tuple[Counter, Counter]]) -> tuple[list[str], str]:
    """The curate stage's metadata entries and where they came from: the file at `path`, the synthetic world's own
    entries, or (real data without metadata) the offline English builder over the pool's word and pair counts,
    which `count_captions()` supplies (the stage counts its parts in parallel)."""
    if path:
        return load_metadata(path), path
    if synthetic_only:
        return metadata_entries(), "synthetic world"
    words, pairs = count_captions()
    entries = english_metadata_from_counts(words, pairs, builder)
    return entries, f"built: wordfreq unigrams + PMI bigrams of the pool ({len(entries)} entries)"
