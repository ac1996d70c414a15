"""Substring matching of captions against metadata entries, with MetaCLIP's exact semantics.

MetaCLIP ("Demystifying CLIP Data", Xu et al., 2023) pads a caption as ``" text "``, puts spaces
around ``, . ; : ? ! ``` and turns tabs, newlines and carriage returns into spaces (``spacing``);
entry ``e`` matches when ``" e "`` is a substring of that spaced text, case-sensitively.

Why a token trie is exact: a match of ``" e "`` starts and ends on a space of the spaced text, so
``e`` is a run of whole space-separated tokens of the spaced text (empty tokens included, one per
extra space). Hence ``e`` matches iff ``e.split(" ")`` occurs as a contiguous run of
``spacing(text)[1:-1].split(" ")``. This holds for every entry: one with a token that no spaced
text can hold (``"a,b"``, ``"a\tb"``) simply never matches, as in MetaCLIP.

``EntryMatcher.match_batch`` vectorises that over a batch, in cache-sized pieces: the captions'
UTF-8 bytes are split in numpy (every byte that spacing touches is ASCII, so it never sits inside
a multi-byte character); each token gets a uint64 key (its bytes when under 8 bytes, else a hash
verified word by word) that a numpy open-addressing table maps to the metadata's token ids; and a
trie of entries as token-id sequences is walked one level at a time for all positions at once.
``benchmarks/bench_matching.py`` times it against MetaCLIP's pyahocorasick matcher and checks the
outputs are identical; ``tests/curation/test_matching.py`` checks it against the plain algorithm.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
from numpy.lib.stride_tricks import as_strided

PUNCTUATION = ",.;:?!`"
"""MetaCLIP's ``puncts_to_wrap``: each becomes ``" p "``."""
SPACED_CONTROLS = "\t\n\r"
"""MetaCLIP's ``chars_to_space``: each becomes a space."""

_EMPTY_KEY = np.uint64(2**64 - 1)
_FIB = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing multiplier (Knuth): spreads structured keys
_MIX = np.uint64(0xFF51AFD7ED558CCD)  # murmur3's 64-bit finaliser constant
_TOP_BIT = np.uint64(1 << 63)
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [2**64 - 1], dtype=np.uint64)
# Batches are matched in pieces so the intermediate arrays stay in cache: pieces of ~512 KiB ran
# ~20% faster than whole 1e5-caption batches in benchmarks/bench_matching.py.
_CHUNK_BYTES = 1 << 19
_CHUNK_TEXTS = 1 << 13
_ENDS = 1  # trie node flags: an entry ends here; a longer entry continues from here
_PARENT = 2
_WORD = 0  # byte classes of the splitting tables
_SEP = 1
_PUNCT = 2


def spacing(text: str) -> str:
    """MetaCLIP's text normalisation, padded with one space on each side."""
    spaced = f" {text} "
    for punct in PUNCTUATION:
        spaced = spaced.replace(punct, f" {punct} ")
    for control in SPACED_CONTROLS:
        spaced = spaced.replace(control, " ")
    return spaced


def _byte_classes(separators: str, punctuation: str) -> np.ndarray:
    """Class of each byte value: word, separator or punctuation."""
    classes = np.full(256, _WORD, dtype=np.uint8)
    classes[[ord(c) for c in separators]] = _SEP
    classes[[ord(c) for c in punctuation]] = _PUNCT
    return classes


# Captions split as MetaCLIP spaces them; entries split on the plain space only (they are padded,
# never spaced). Every byte that matters is ASCII, so it never occurs inside a UTF-8 sequence.
_CAPTION_CLASSES = _byte_classes(" " + SPACED_CONTROLS, PUNCTUATION)
_ENTRY_CLASSES = _byte_classes(" ", "")


def _as_binary(values: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """Strings as one large_binary Arrow array of their UTF-8 bytes (nulls kept)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        try:
            values = pa.array(values, type=pa.large_string())
        except (UnicodeEncodeError, pa.ArrowException):
            # lone surrogates: keep their bytes so they still compare exactly with the entries'
            values = pa.array(
                [None if v is None else v.encode("utf-8", "surrogatepass") for v in values],
                type=pa.large_binary(),
            )
    return values.cast(pa.large_binary())


def _arrow_bytes(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets) of a large_binary array, offsets rebased to 0 (a null's bytes are arbitrary)."""
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[values.offset : values.offset + len(values) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return data[offsets[0] : offsets[-1]], offsets - offsets[0]


def split_tokens(data: np.ndarray, offsets: np.ndarray, classes: np.ndarray, gap: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split every string at once: (token starts, token lengths) in ``data``, and tokens per string.

    A separator byte ends a token; a punctuation byte is a token of its own, as MetaCLIP's
    ``" p "`` makes it. A string with c separators and p punctuation bytes yields c + 2p + 1 tokens
    (empty ones included), in order: the tokens of ``spacing(s)[1:-1].split(" ")``. With ``gap``,
    one more empty slot follows every string's tokens.
    """
    top = int(np.flatnonzero(classes != _WORD).max(initial=0))  # a Python int keeps the test uint8
    maybe = np.flatnonzero(data <= top)  # every special byte is ASCII and small: test few bytes
    kind = classes.take(data.take(maybe))
    special = np.flatnonzero(kind)  # _WORD is 0
    cut_at, is_punct = maybe.take(special), kind.take(special) == _PUNCT
    first_cut = np.searchsorted(cut_at, offsets)  # cuts before each string; (n + 1,)
    puncts_before = np.zeros(len(cut_at) + 1, dtype=np.int64)  # punctuation cuts before each cut
    np.cumsum(is_punct, out=puncts_before[1:])
    n, spread = len(offsets) - 1, 1 + int(gap)
    starts = np.zeros(n * spread + len(cut_at) + int(puncts_before[-1]), dtype=np.int64)
    ends = np.zeros_like(starts)
    # token index of the gap before cut j: earlier strings (and slots), cuts and punctuation tokens
    before_cut = np.repeat(np.arange(0, n * spread, spread), np.diff(first_cut))
    before_cut += np.arange(len(cut_at)) + puncts_before[:-1]
    ends[before_cut] = cut_at
    after_cut = cut_at + 1
    before_cut += 1  # now the token after cut j: a punctuation token, else the next gap
    starts[before_cut + is_punct] = after_cut
    punct = np.flatnonzero(is_punct)
    punct_token, punct_at = before_cut.take(punct), cut_at.take(punct)
    starts[punct_token] = punct_at
    ends[punct_token] = punct_at + 1
    text = np.arange(0, n * spread, spread)
    starts[text + first_cut[:-1] + puncts_before[first_cut[:-1]]] = offsets[:-1]
    ends[text + first_cut[1:] + puncts_before[first_cut[1:]]] = offsets[1:]
    counts = np.diff(first_cut) + np.diff(puncts_before[first_cut]) + 1
    return starts, ends - starts, counts


def _mix(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser (wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(33))
    x *= _MIX
    return x ^ (x >> np.uint64(33))


def _word_view(data: np.ndarray) -> np.ndarray:
    """``view[i]``: bytes i..i+7 of ``data`` as a little-endian uint64 (zeros past the end).

    An unaligned strided view over a padded copy: reading the words at any offsets is one gather.
    """
    padded = np.zeros(len(data) + 16, dtype=np.uint8)
    padded[: len(data)] = data
    whole = np.frombuffer(padded.data, dtype="<u8", count=len(padded) // 8)
    return as_strided(whole, shape=(len(data) + 1,), strides=(1,), writeable=False)


def hash_strings(values: Sequence[str | None] | pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A 64-bit hash of each string's UTF-8 bytes (murmur3's finaliser chained over 8-byte words),
    the same on every machine and run; a null hashes like the empty string. Vectorised: ~50x
    faster than hashlib in a Python loop."""
    binary = _as_binary(values)
    data, offsets = _arrow_bytes(binary.fill_null(b"") if binary.null_count else binary)
    starts, lens = offsets[:-1], np.diff(offsets)
    words = _word_view(data)
    salt = _mix(np.array([(seed + 1) * int(_FIB) % 2**64], dtype=np.uint64))
    hashes = _mix(lens.astype(np.uint64) ^ salt)
    which, k = np.arange(len(lens)), 0
    while len(which):
        word = words[starts[which] + 8 * k] & _BYTE_MASKS[np.minimum(lens[which] - 8 * k, 8)]
        hashes[which] = _mix(hashes[which] ^ word)
        k += 1
        which = which[lens[which] > 8 * k]
    return _mix(hashes ^ (hashes >> np.uint64(29)))


class _Tokens:
    """A uint64 key per token, equal for equal tokens: exact below 8 bytes, a checked hash above.

    A token under 8 bytes is its bytes with its length in the top byte, so its key is exact and
    needs no check. A longer token's key is a hash of its length and 8-byte words with the top bit
    set (so it never equals an exact key); its words are kept, level by level, to verify any hit.
    Words are read at any byte offset through an unaligned strided uint64 view: one gather, no copy.
    """

    def __init__(self, data: np.ndarray, starts: np.ndarray, lens: np.ndarray, seed: int):
        words = _word_view(data)
        head = words.take(starts) & _BYTE_MASKS.take(np.minimum(lens, 8))
        self.keys = head | (lens.view(np.uint64) << np.uint64(56))  # lengths are >= 0: the view is exact
        self.long = np.flatnonzero(lens >= 8)
        self.long_lens = lens.take(self.long)
        # level k: (positions in ``long`` of the tokens longer than 8k bytes, their word k)
        self.levels = [(np.arange(len(self.long)), head.take(self.long))]
        hashes = _mix(self.levels[0][1] ^ _mix(self.long_lens.view(np.uint64) + np.uint64(seed) * _FIB))
        which, k = np.flatnonzero(self.long_lens > 8), 1
        while len(which):
            at, left = starts[self.long[which]] + 8 * k, self.long_lens[which] - 8 * k
            self.levels.append((which, words[at] & _BYTE_MASKS[np.minimum(left, 8)]))
            hashes[which] = _mix(hashes[which] ^ self.levels[-1][1])
            k += 1
            which = which[self.long_lens[which] > 8 * k]
        self.keys[self.long] = hashes | _TOP_BIT


class _Vocabulary:
    """The distinct tokens of the entries, found by key in a numpy hash table, long ones verified."""

    def __init__(self, data: np.ndarray, starts: np.ndarray, lens: np.ndarray):
        for seed in range(64):
            tokens = _Tokens(data, starts, lens, seed)
            # any occurrence of a key may stand for it (its words are verified), so no stable sort: 4x faster
            order = np.argsort(tokens.keys)
            sorted_keys = tokens.keys[order]
            new = np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]])
            self.token_ids = np.empty(len(order), dtype=np.int64)
            self.token_ids[order] = np.cumsum(new) - 1
            self._keep_words(tokens, order[new])
            # two long tokens sharing a hash (odds ~1e-9) would merge: take another seed then
            if not np.any(sorted_keys == _EMPTY_KEY) and np.all(self.verify(tokens, self.token_ids.copy()) >= 0):
                break
        else:
            raise RuntimeError("no collision-free token hash seed found")
        self.seed, self.size = seed, int(new.sum())
        self.table = _IntTable(sorted_keys[new], np.arange(self.size))

    def _keep_words(self, tokens: _Tokens, first: np.ndarray) -> None:
        """Length and words of each distinct long token, from its first occurrence ``first[v]``."""
        vocab_of = np.full(len(tokens.keys), -1, dtype=np.int64)
        vocab_of[first] = np.arange(len(first))
        long_vocab = vocab_of[tokens.long]  # vocabulary id where a long token is a first occurrence
        self.lens = np.zeros(len(first), dtype=np.int64)
        self.lens[long_vocab[long_vocab >= 0]] = tokens.long_lens[long_vocab >= 0]
        self.word_start = np.concatenate([[0], np.cumsum((self.lens + 7) // 8)[:-1]]).astype(np.int64)
        self.words = np.zeros(int(((self.lens + 7) // 8).sum()), dtype=np.uint64)
        for k, (which, word) in enumerate(tokens.levels):
            v = long_vocab[which]
            self.words[self.word_start[v[v >= 0]] + k] = word[v >= 0]

    def verify(self, tokens: _Tokens, ids: np.ndarray) -> np.ndarray:
        """Sets ``ids`` to -1, in place, wherever a long token is not byte for byte the token it hit."""
        v = ids[tokens.long]
        same = (v >= 0) & (self.lens[np.maximum(v, 0)] == tokens.long_lens)
        for k, (which, word) in enumerate(tokens.levels):
            check = which[same[which]]  # equal lengths here, so equal word counts
            same[check] = self.words[self.word_start[v[check]] + k] == word[same[which]]
        ids[tokens.long[~same]] = -1
        return ids

    def lookup(self, data: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Vocabulary id of every token (int64), -1 for a token in no entry."""
        tokens = _Tokens(data, starts, lens, self.seed)
        return self.verify(tokens, self.table.lookup(tokens.keys))


class _IntTable:
    """Exact uint64 -> int64 map as a numpy open-addressing table with linear probing.

    Keys and values sit side by side in one structured array: a probe is one cache line.
    """

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        bits = max(3, int(np.ceil(np.log2(max(1, len(keys)) * 2))) + 1)  # load factor <= 1/4
        self.shift = np.uint64(64 - bits)
        self.mask = np.int64((1 << bits) - 1)
        self.slots = np.zeros(1 << bits, dtype=[("key", "<u8"), ("value", "<i8")])
        self.slots["key"] = _EMPTY_KEY
        self.slots["value"] = -1
        self._insert(keys.astype(np.uint64), values.astype(np.int64))

    def _slot(self, keys: np.ndarray) -> np.ndarray:
        return ((keys * _FIB) >> self.shift).view(np.int64)  # below 2**bits: the view is exact

    def _insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        if np.any(keys == _EMPTY_KEY):
            raise ValueError("key 2**64 - 1 marks empty slots")
        slot = self._slot(keys)
        pending = np.arange(len(keys))
        owner = np.full(len(self.slots), -1, dtype=np.int64)
        held = self.slots["key"][slot]
        while len(pending):
            cand = pending[held == _EMPTY_KEY]
            # several pending keys may aim at one free slot: the one the scatter leaves there wins this round
            owner[slot[cand]] = cand
            won = cand[owner[slot[cand]] == cand]
            self.slots["key"][slot[won]] = keys[won]
            self.slots["value"][slot[won]] = values[won]
            placed = np.zeros(len(keys), dtype=bool)
            placed[won] = True
            pending = pending[~placed[pending]]
            # equal keys stay on the same probe slot until one is placed: the other then finds it there
            if np.any(self.slots["key"][slot[pending]] == keys[pending]):
                raise ValueError("keys must be distinct")
            # every key still pending sits on a taken slot (this round's winners took the free ones): probe on
            slot[pending] = (slot[pending] + 1) & self.mask
            held = self.slots["key"][slot[pending]]

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Value per key, -1 where absent."""
        keys = keys.view(np.uint64) if keys.dtype == np.int64 else keys.astype(np.uint64, copy=False)
        slot = self._slot(keys)
        held = self.slots.take(slot)
        out = np.where(held["key"] == keys, held["value"], -1)  # most keys settle at the first probe
        active = np.flatnonzero((out < 0) & (held["key"] != _EMPTY_KEY))
        slot = slot.take(active)
        while len(active):
            slot = (slot + 1) & self.mask
            held = self.slots.take(slot)
            hit = held["key"] == keys.take(active)
            out[active[hit]] = held["value"][hit]
            more = np.flatnonzero(~hit & (held["key"] != _EMPTY_KEY))
            active, slot = active.take(more), slot.take(more)
        return out


class _EntryTrie:
    """Trie of entries as vocabulary-id sequences; the node of first token ``v`` is ``v + 1``."""

    def __init__(self, ids: np.ndarray, lengths: np.ndarray, vocab_size: int):
        self.stride = np.int64(vocab_size + 1)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        node = ids[starts] + 1
        parents, children, num_nodes = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], vocab_size + 1
        for depth in range(1, int(lengths.max(initial=1))):
            longer = np.flatnonzero(lengths > depth)
            keys = node[longer] * self.stride + ids[starts[longer] + depth]
            order = np.argsort(keys)  # node ids follow the distinct keys' ranks: stability is not needed
            new = np.concatenate([[True], keys[order][1:] != keys[order][:-1]])
            node[longer[order]] = num_nodes + np.cumsum(new) - 1
            parents.append(keys[order][new])
            children.append(num_nodes + np.arange(int(new.sum())))
            num_nodes += int(new.sum())
        edge_keys = np.concatenate(parents)
        self.edges = _IntTable(edge_keys, np.concatenate(children))
        self.flags = np.zeros(num_nodes, dtype=np.uint8)
        self.flags[edge_keys // self.stride] |= _PARENT
        # follows[v + 1]: token v is a later token of some entry (index 0: the -1 of unknown tokens)
        self.follows = np.zeros(vocab_size + 1, dtype=bool)
        self.follows[edge_keys % self.stride + 1] = True
        # CSR from a node to the entries ending there (several only when entries repeat)
        self.entries = np.argsort(node, kind="stable")
        ending = np.bincount(node, minlength=num_nodes)
        self.entry_start = np.concatenate([[0], np.cumsum(ending)])
        self.flags[ending > 0] |= _ENDS
        self.unique_ends = bool(ending.max(initial=0) <= 1)
        self.first_entry = np.where(ending > 0, self.entries[np.minimum(self.entry_start[:-1], len(node) - 1)], -1)

    def walk(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start position, node) wherever an entry ends; a -1 after every caption stops n-grams.

        Filters go through index arrays and ``take``: one nonzero serves several arrays.
        """
        node = ids + 1  # unknown tokens land on the root, which ends and starts nothing
        flags = self.flags.take(node)
        first = np.flatnonzero(flags & _ENDS)
        found_pos, found_node = [first], [node.take(first)]
        pos = np.flatnonzero(flags & _PARENT)
        node, depth = node.take(pos), 1
        while len(pos):
            nxt = ids.take(pos + depth)
            keep = np.flatnonzero(self.follows.take(nxt + 1))  # skips most lookups that would miss
            pos, node, nxt = pos.take(keep), node.take(keep), nxt.take(keep)
            child = self.edges.lookup(node * self.stride + nxt)
            hit = np.flatnonzero(child >= 0)
            pos, node = pos.take(hit), child.take(hit)
            flags = self.flags.take(node)
            ends = np.flatnonzero(flags & _ENDS)
            found_pos.append(pos.take(ends))
            found_node.append(node.take(ends))
            more = np.flatnonzero(flags & _PARENT)
            pos, node, depth = pos.take(more), node.take(more), depth + 1
        return np.concatenate(found_pos), np.concatenate(found_node)

    def entries_at(self, pos: np.ndarray, node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, entry id) for every entry ending at each (position, node) the walk found."""
        if self.unique_ends:
            return pos, self.first_entry[node]
        counts = self.entry_start[node + 1] - self.entry_start[node]
        which = np.repeat(np.arange(len(node)), counts)
        rank = np.arange(len(which)) - np.repeat(np.cumsum(counts) - counts, counts)
        return pos[which], self.entries[self.entry_start[node][which] + rank]


def _chunk_bounds(offsets: np.ndarray) -> np.ndarray:
    """Caption indices that cut a batch into pieces of about ``_CHUNK_BYTES`` / ``_CHUNK_TEXTS``."""
    n = len(offsets) - 1
    by_bytes = np.searchsorted(offsets, np.arange(_CHUNK_BYTES, offsets[-1], _CHUNK_BYTES))
    by_count = np.arange(_CHUNK_TEXTS, n, _CHUNK_TEXTS)
    return np.unique(np.concatenate([[0, n], by_bytes, by_count]))


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Building 1e5 small lists triggers full garbage collections that cost more than the building."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class EntryMatcher:
    """Batch matcher: the metadata entries each caption contains, with MetaCLIP's semantics."""

    def __init__(self, entries: Sequence[str]):
        entries = list(entries)
        kinds = set(map(type, entries))  # C-speed: a generator of isinstance calls took 0.1 s per 300k entries
        if not kinds <= {str} and not all(isinstance(e, str) for e in entries):
            raise ValueError("metadata entries must all be strings")
        self.num_entries = len(entries)
        # with no metadata every caption matches nothing: one never-matching entry keeps the code uniform
        data, offsets = _arrow_bytes(_as_binary(entries or ["\t"]))
        starts, lens, lengths = split_tokens(data, offsets, _ENTRY_CLASSES)
        self._vocab = _Vocabulary(data, starts, lens)
        self._trie = _EntryTrie(self._vocab.token_ids, lengths, self._vocab.size)

    def match_arrays(self, texts: Sequence[str | None] | pa.Array | pa.ChunkedArray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Matches as CSR: (offsets, length len(texts) + 1; sorted unique entry ids per caption, int64)."""
        binary = _as_binary(texts)
        data, offsets = _arrow_bytes(binary)
        valid = binary.is_valid().to_numpy(zero_copy_only=False) if binary.null_count else None
        per_text, entries = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for a, b in itertools.pairwise(_chunk_bounds(offsets).tolist()):
            piece = data[offsets[a] : offsets[b]], offsets[a : b + 1] - offsets[a]
            counts, ids = self._match_piece(*piece, None if valid is None else valid[a:b])
            per_text.append(counts)
            entries.append(ids)
        return np.concatenate([[0], np.cumsum(np.concatenate(per_text))]), np.concatenate(entries)

    def _match_piece(self, data: np.ndarray, offsets: np.ndarray, valid: np.ndarray | None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(matches per caption, their sorted unique entry ids) for captions ``data[offsets[i]:offsets[i+1]]``."""
        starts, lens, counts = split_tokens(data, offsets, _CAPTION_CLASSES, gap=True)
        ids = self._vocab.lookup(data, starts, lens)
        stops = np.cumsum(counts + 1) - 1  # the slot after each caption
        ids[stops] = -1
        pos, entry = self._trie.entries_at(*self._trie.walk(ids))
        text = np.repeat(np.arange(len(counts)), counts + 1)[pos]
        if valid is not None:
            text, entry = text[valid[text]], entry[valid[text]]
        # one sort of (caption, entry) keys groups by caption, orders the ids and finds repeats
        span = max(1, self.num_entries)
        keys = np.sort(text * span + entry)
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys
        text, entry = np.divmod(keys, span)
        return np.bincount(text, minlength=len(counts)), entry

    def match_batch(self, texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> list[list[int]]:
        """Sorted unique matched entry ids per caption; a None caption matches nothing."""
        offsets, entries = self.match_arrays(texts)
        flat, bounds = entries.tolist(), offsets.tolist()
        with _gc_paused():
            return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
