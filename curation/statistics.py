"""Statistics of a metadata entry distribution before and after MetaCLIP balancing.

MetaCLIP ("Demystifying CLIP Data", Xu et al. 2023) calls entries with more than ``t`` matches the
*head* and the rest the *tail*; balancing caps every head entry near ``t`` and keeps the tail whole,
which flattens the distribution (higher entropy, smaller head share).
"""

from __future__ import annotations

import numpy as np


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy (bits) of the distribution of matches over entries."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def head_share(counts: np.ndarray, head: np.ndarray) -> float:
    """Fraction of all matches that fall on the ``head`` entries."""
    total = counts.sum()
    return float(counts[head].sum() / total) if total > 0 else 0.0


def distribution_stats(before: np.ndarray, after: np.ndarray, t: int) -> dict[str, float | int]:
    """Head/tail shares and entropies of entry counts before and after balancing at threshold ``t``."""
    head = before > t
    return {
        "t": int(t),
        "entries": int(len(before)),
        "entries_matched": int((before > 0).sum()),
        "head_entries": int(head.sum()),
        "tail_entries_matched": int(((before > 0) & ~head).sum()),
        "matches_before": int(before.sum()),
        "matches_after": int(after.sum()),
        "head_share_before": head_share(before, head),
        "head_share_after": head_share(after, head),
        "entropy_bits_before": entropy_bits(before),
        "entropy_bits_after": entropy_bits(after),
        "max_count_before": int(before.max(initial=0)),
        "max_count_after": int(after.max(initial=0)),
    }


def top_entries(entries: list[str], before: np.ndarray, after: np.ndarray, n: int = 10) -> list[dict]:
    """The ``n`` most frequent entries before balancing, with their counts after."""
    order = np.argsort(-before, kind="stable")[:n]
    return [{"entry": entries[i], "count_before": int(before[i]), "count_after": int(after[i])}
            for i in order if before[i] > 0]
