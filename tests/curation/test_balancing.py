"""MetaCLIP balancing: counts, probabilities and the partition-independent keep decision."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.balancing import (
    CurateConfig,
    count_entries,
    entry_probs,
    keep_mask,
    keep_probs,
    uniform_from_uid,
)

NUM_ENTRIES = 12
matched_lists = st.lists(
    st.lists(st.integers(0, NUM_ENTRIES - 1), max_size=5, unique=True).map(sorted), min_size=1, max_size=60
)


def naive_counts(matched: list[list[int]], num_entries: int) -> np.ndarray:
    counts = np.zeros(num_entries, dtype=np.int64)
    for ids in matched:
        for e in set(ids):
            counts[e] += 1
    return counts


def direct_keep_prob(ids: list[int], probs: np.ndarray) -> float:
    miss = 1.0
    for e in set(ids):
        miss *= 1.0 - probs[e]
    return 1.0 - miss if ids else 0.0


@settings(max_examples=200, deadline=None)
@given(matched_lists)
def test_count_entries_is_naive_count(matched: list[list[int]]) -> None:
    expected = naive_counts(matched, NUM_ENTRIES)
    np.testing.assert_array_equal(count_entries(matched, NUM_ENTRIES), expected)
    arrow = pa.array(matched, type=pa.list_(pa.int32()))
    np.testing.assert_array_equal(count_entries(arrow, NUM_ENTRIES), expected)


def test_count_entries_counts_a_caption_once_per_entry() -> None:
    np.testing.assert_array_equal(count_entries([[2, 2, 0], [2]], 3), [1, 0, 2])
    with pytest.raises(ValueError, match="out of range"):
        count_entries([[3]], 3)


def test_entry_probs() -> None:
    np.testing.assert_allclose(entry_probs(np.array([0, 1, 10, 20, 40, 1000]), 20),
                               [1, 1, 1, 1, 0.5, 0.02])
    with pytest.raises(ValueError):
        entry_probs(np.array([1]), 0)


@settings(max_examples=200, deadline=None)
@given(matched_lists, st.integers(1, 30))
def test_keep_probs_is_direct_formula(matched: list[list[int]], t: int) -> None:
    probs = entry_probs(count_entries(matched, NUM_ENTRIES), t)
    got = keep_probs(matched, probs)
    assert got.dtype == np.float32
    expected = [direct_keep_prob(ids, probs) for ids in matched]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@settings(max_examples=200, deadline=None)
@given(matched_lists, st.integers(1, 30), st.integers(0, 2**31))
def test_no_entry_at_or_below_t_loses_a_caption(matched: list[list[int]], t: int, seed: int) -> None:
    counts = count_entries(matched, NUM_ENTRIES)
    keep_prob = keep_probs(matched, entry_probs(counts, t))
    uids = [f"u{i}" for i in range(len(matched))]
    keep = keep_mask(uids, keep_prob, seed)
    for i, ids in enumerate(matched):
        if any(counts[e] <= t for e in ids):
            assert keep_prob[i] == 1.0
            assert keep[i]


@settings(max_examples=200, deadline=None)
@given(matched_lists, st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**31))
def test_larger_t_never_keeps_fewer(matched: list[list[int]], t1: int, t2: int, seed: int) -> None:
    small, large = sorted((t1, t2))
    counts = count_entries(matched, NUM_ENTRIES)
    uids = [f"sample-{i}" for i in range(len(matched))]
    keep_small = keep_mask(uids, keep_probs(matched, entry_probs(counts, small)), seed)
    keep_large = keep_mask(uids, keep_probs(matched, entry_probs(counts, large)), seed)
    assert np.all(keep_large[keep_small])  # the kept set only grows with t
    assert keep_large.sum() >= keep_small.sum()


@settings(max_examples=100, deadline=None)
@given(matched_lists, st.integers(1, 30), st.integers(0, 2**31), st.data())
def test_same_seed_same_kept_set_whatever_the_partitioning(
    matched: list[list[int]], t: int, seed: int, data: st.DataObject
) -> None:
    uids = [f"uid-{i:05d}" for i in range(len(matched))]
    whole_probs = entry_probs(count_entries(matched, NUM_ENTRIES), t)
    whole = set(np.asarray(uids)[keep_mask(uids, keep_probs(matched, whole_probs), seed)])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(matched)), max_size=6)))
    parts = [(a, b) for a, b in zip([0, *cuts], [*cuts, len(matched)], strict=True)]
    # counts are summed over partitions (as Ray workers do), then each partition decides alone
    counts = sum(count_entries(matched[a:b], NUM_ENTRIES) for a, b in parts)
    kept: set[str] = set()
    for a, b in parts:
        prob = keep_probs(matched[a:b], entry_probs(counts, t))
        kept |= set(np.asarray(uids[a:b], dtype=object)[keep_mask(uids[a:b], prob, seed)])
    assert kept == whole


def test_no_match_means_dropped() -> None:
    keep_prob = keep_probs([[], [0], []], np.array([1.0]))
    np.testing.assert_array_equal(keep_prob, [0, 1, 0])
    np.testing.assert_array_equal(keep_mask(["a", "b", "c"], keep_prob, 0), [False, True, False])


def test_uniforms_are_uniform_and_seeded() -> None:
    uids = [f"{i}" for i in range(20000)]
    u = uniform_from_uid(uids, seed=3)
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 1800
    np.testing.assert_array_equal(u, uniform_from_uid(pa.array(uids), seed=3))
    assert not np.array_equal(u, uniform_from_uid(uids, seed=4))


def test_keep_rate_follows_keep_prob() -> None:
    uids = [f"x{i}" for i in range(20000)]
    keep = keep_mask(uids, np.full(len(uids), 0.3, dtype=np.float32), seed=0)
    assert abs(keep.mean() - 0.3) < 0.015


def test_head_is_flattened_to_about_t() -> None:
    """A Zipf pool: after balancing no entry keeps much more than t captions, tail entries keep all."""
    rng = np.random.default_rng(0)
    num_entries, t = 200, 50
    draws = rng.zipf(1.3, size=(20000, 2)) - 1
    matched = [sorted({e for e in row[: rng.integers(1, 3)] if e < num_entries}) for row in draws.tolist()]
    counts = count_entries(matched, num_entries)
    keep_prob = keep_probs(matched, entry_probs(counts, t))
    keep = keep_mask([str(i) for i in range(len(matched))], keep_prob, seed=1)
    after = count_entries([m for m, k in zip(matched, keep, strict=True) if k], num_entries)
    head = counts > 10 * t
    assert head.any()
    # a head entry keeps about t of its own captions plus those kept through other entries
    assert np.all(after[head] < 0.25 * counts[head])
    assert after.max() < counts.max() / 5
    np.testing.assert_array_equal(after[counts <= t], counts[counts <= t])


def test_config_defaults() -> None:
    cfg = CurateConfig()
    assert cfg.t > 0 and cfg.seed == 0 and cfg.metadata is None


def test_curate_key_config_and_entry_count_table() -> None:
    from curation.balancing import CurateConfig, curate_key_config, entry_count_table
    from curation.metadata import builder_version

    cfg = CurateConfig(t=3)
    assert curate_key_config(cfg, True) == (cfg, True)  # the synthetic world's metadata
    assert curate_key_config(cfg, False) == (cfg, False, builder_version())  # the builder, with its word list
    with_file = CurateConfig(t=3, metadata="m.json")
    assert curate_key_config(with_file, False) is with_file
    table = entry_count_table(["a", "b"], np.array([5, 1]), np.array([3, 1]), np.array([0.6, 1.0]))
    assert table.to_pylist() == [
        {"entry_id": 0, "entry": "a", "count_before": 5, "count_after": 3, "prob": pytest.approx(0.6)},
        {"entry_id": 1, "entry": "b", "count_before": 1, "count_after": 1, "prob": 1.0}]
