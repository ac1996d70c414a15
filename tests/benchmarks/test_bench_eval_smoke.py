"""Smoke test of benchmarks/bench_eval.py: its main runs end to end in a tiny mode and prints its ratio.

No timing is asserted; the benchmark itself fails if the cached rerun's metrics differ from the cold run's.
"""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_eval.py"


def test_bench_eval_runs_and_prints_its_ratio(capsys):
    spec = importlib.util.spec_from_file_location("bench_eval", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--per-class", "3", "2", "2", "--views", "2"])
    out = capsys.readouterr().out
    assert "ratio_cold_vs_warm" in out and "encode images/s" in out
