import numpy as np
import pytest

from curation.statistics import distribution_stats, entropy_bits, head_share, top_entries


def test_entropy_of_uniform_and_point_masses():
    assert entropy_bits(np.array([5, 5, 5, 5])) == pytest.approx(2.0)
    assert entropy_bits(np.array([0, 9, 0])) == 0.0
    assert entropy_bits(np.zeros(3)) == 0.0


def test_balancing_flattens_head():
    before = np.array([1000, 500, 20, 5, 0])
    after = np.minimum(before, 50)
    stats = distribution_stats(before, after, t=50)
    assert stats["head_entries"] == 2 and stats["tail_entries_matched"] == 2
    assert stats["head_share_before"] == pytest.approx(1500 / 1525)
    assert stats["head_share_after"] == pytest.approx(100 / 125)
    assert stats["entropy_bits_after"] > stats["entropy_bits_before"]
    assert head_share(before, before > 10_000) == 0.0


def test_top_entries_order_and_skip_zero():
    rows = top_entries(["a", "b", "c"], np.array([1, 7, 0]), np.array([1, 3, 0]), n=5)
    assert rows == [{"entry": "b", "count_before": 7, "count_after": 3},
                    {"entry": "a", "count_before": 1, "count_after": 1}]
