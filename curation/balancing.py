"""MetaCLIP balancing: flatten the entry distribution by capping every entry at ``t`` samples.

From "Demystifying CLIP Data" (Xu et al., 2023), Algorithm 1: count, over the whole pool, the
captions that match each metadata entry; an entry seen ``count`` times keeps each of its captions
with ``p_e = min(1, t / count)``; a caption is kept with ``1 - prod_e (1 - p_e)`` over the entries
it matches (MetaCLIP draws one uniform per matched entry and keeps on the first success, which has
exactly this probability); captions matching nothing are dropped. Head entries are thus sampled
down to about ``t`` captions while tail entries (``count <= t``) keep all of theirs.

The keep decision here draws its uniform from a hash of ``(seed, uid)`` instead of a running RNG,
so the kept set is the same whatever the partitioning or the number of workers, and ``keep_prob`` is
stored so a loader can redraw the decision each epoch (MetaCLIP's on-the-fly curation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.matching import hash_strings
from curation.metadata import MetadataBuilderConfig, builder_version

Matched = Sequence[Sequence[int]] | pa.ListArray | pa.ChunkedArray


@dataclass(frozen=True)
class CurateConfig:
    """Configuration of the curate stage (MetaCLIP substring matching and balancing)."""

    t: int = 60
    """Balancing threshold: each entry's captions are sampled down to about t. MetaCLIP uses t=20k
    for its 400M set and 170k for 2.5B (Xu et al., 2023). t sets where the head starts, so for a
    smaller pool scale it with the entry-count distribution rather than the pool size: pick the t
    that leaves a similar share of entries above it, or that keeps the fraction of matched captions
    wanted. On the default 20k-image synthetic pool (390 entries, 15,720 captions matched) t=60
    keeps 55% of the matched captions (t=40: 46%, 100: 65%, 300: 82%)."""
    seed: int = 0
    """Seed of the per-uid keep decision (a 64-bit hash of seed and uid)."""
    metadata: str | None = None
    """metadata.json (JSON list of entries) or text file (one entry a line), local or fsspec URL;
    None uses the synthetic world's own entries when every source is synthetic, and otherwise builds
    an English metadata offline from `builder` (wordfreq unigrams + the pool's PMI bigrams)."""
    builder: MetadataBuilderConfig = MetadataBuilderConfig()
    """The offline metadata builder, used only when `metadata` is None and a source is not synthetic."""


def _flatten(matched: Matched) -> tuple[np.ndarray, np.ndarray, int]:
    """(row of each match, entry id of each match, number of rows), duplicates within a row removed."""
    if isinstance(matched, pa.ChunkedArray):
        matched = matched.combine_chunks()
    if isinstance(matched, pa.Array):
        rows = pc.list_parent_indices(matched).to_numpy().astype(np.int64)
        entries = pc.list_flatten(matched).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        lengths = np.fromiter(map(len, matched), dtype=np.int64, count=len(matched))
        rows = np.repeat(np.arange(len(matched), dtype=np.int64), lengths)
        entries = np.fromiter((e for ids in matched for e in ids), dtype=np.int64, count=int(lengths.sum()))
    if entries.size and entries.min() < 0:
        raise ValueError("matched entry ids must be non-negative")
    # match_batch output is strictly increasing within a row: skip the sort then
    same_row = rows[1:] == rows[:-1]
    if np.any(same_row & (entries[1:] <= entries[:-1])):
        span = int(entries.max()) + 1
        keys = np.sort(rows * span + entries)
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
        rows, entries = np.divmod(keys, span)
    return rows, entries, len(matched)


def count_entries(matched: Matched, num_entries: int) -> np.ndarray:
    """Captions matching each entry (int64, length ``num_entries``); a caption counts an entry once.

    Counts of partitions add up to the count of the pool, so partitions can be counted apart.
    """
    _, entries, _ = _flatten(matched)
    if entries.size and entries.max() >= num_entries:
        raise ValueError(f"entry id {int(entries.max())} out of range for {num_entries} entries")
    return np.bincount(entries, minlength=num_entries).astype(np.int64)


def entry_probs(counts: np.ndarray, t: int) -> np.ndarray:
    """MetaCLIP balancing: an entry seen ``count`` times is kept with t / max(count, t) (1 if unseen)."""
    if t <= 0:
        raise ValueError(f"t must be positive, got {t}")
    return t / np.maximum(np.asarray(counts, dtype=np.float64), t)


def keep_probs(matched: Matched, probs: np.ndarray) -> np.ndarray:
    """Per caption ``1 - prod_e (1 - p_e)`` over its matched entries (float32); 0 with no match."""
    rows, entries, num_rows = _flatten(matched)
    with np.errstate(divide="ignore"):
        log_miss = np.log1p(-np.asarray(probs, dtype=np.float64)[entries])  # -inf where p_e = 1
    total = np.bincount(rows, weights=log_miss, minlength=num_rows)
    return (1.0 - np.exp(total)).astype(np.float32)


def uniform_from_uid(uids: Sequence[str] | pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A uniform in [0, 1) per uid from a 64-bit hash of (seed, uid): same uid and seed, same number."""
    bits = hash_strings(uids, seed)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53  # 53 random bits: exact doubles


def keep_mask(uids: Sequence[str] | pa.Array | pa.ChunkedArray, keep_prob: np.ndarray, seed: int) -> np.ndarray:
    """Keep a caption when its uid's uniform falls below its keep probability (bool per caption)."""
    keep_prob = np.asarray(keep_prob, dtype=np.float64)
    if len(keep_prob) != len(uids):
        raise ValueError(f"{len(uids)} uids but {len(keep_prob)} keep probabilities")
    return uniform_from_uid(uids, seed) < keep_prob


def curate_key_config(cfg: CurateConfig, synthetic_only: bool) -> object:
    """What the curate artifact's key hashes beyond its inputs: the config, and, when `metadata` is None, which
    metadata that means (the synthetic world's, or the builder's, whose word list has a version of its own)."""
    if cfg.metadata:
        return cfg
    return (cfg, synthetic_only) if synthetic_only else (cfg, synthetic_only, builder_version())


def entry_count_table(entries: Sequence[str], before: np.ndarray, after: np.ndarray, probs: np.ndarray) -> pa.Table:
    """The curate artifact's `entry_counts`: each entry's matches before and after balancing and its keep
    probability."""
    return pa.table({
        "entry_id": np.arange(len(entries), dtype=np.int32), "entry": list(entries),
        "count_before": np.asarray(before).astype(np.int64), "count_after": np.asarray(after).astype(np.int64),
        "prob": np.asarray(probs).astype(np.float32),
    })
