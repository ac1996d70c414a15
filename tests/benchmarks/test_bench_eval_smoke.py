"""Smoke test of benchmarks/bench_eval.py: its main runs end to end in a tiny mode and prints its ratio.

No timing is asserted; the benchmark itself fails if the cached rerun's metrics differ from the cold run's.
"""

from tests.benchmarks.loading import load_benchmark


def test_bench_eval_runs_and_prints_its_ratio(capsys):
    module = load_benchmark("bench_eval")
    module.main(["--per-class", "3", "2", "2", "--views", "2"])
    out = capsys.readouterr().out
    assert "ratio_cold_vs_warm" in out and "encode images/s" in out
