"""Smoke test of benchmarks/bench_cluster.py: its main runs end to end in --quick mode and prints its fields.

No timing is asserted (two shared cores make timings meaningless at this size); the figures must exist,
be finite and, where they are shares, lie in [0, 1].
"""

import json
import math

from tests.benchmarks.loading import load_benchmark

GOALS = ("ratio_time_flat_vs_two_level", "ratio_objective_two_level_vs_flat", "recall_at_k",
         "ratio_assign_exact_vs_ivf")
LINES = ("kmeans_flat seconds=", "kmeans_two_level seconds=", "assign_exact seconds=", "assign_ivf seconds=",
         "kmeans_two_level_big seconds=", "assign_ivf_big seconds=")


def test_bench_cluster_quick_prints_its_figures(capsys):
    module = load_benchmark("bench_cluster")
    result = module.main(["--quick"])
    out = capsys.readouterr().out
    for name in GOALS:
        assert f"{name}=" in out and "(goal >=" in out
        assert math.isfinite(result[name]) and result[name] > 0
    for line in LINES:
        assert line in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["bench"] == "cluster" and summary["centers"] == module.QUICK["centers"]
    for name in ("recall_at_k", "flat_objective", "two_level_objective", "big_two_level_objective", "big_recall_at_k"):
        assert 0 < summary[name] <= 1
    assert summary["big_empty_clusters"] >= 0
