"""Smoke test of benchmarks/bench_curate.py: its main runs end to end at --small size and prints its ratios.

No timing is asserted (two shared cores make timings meaningless at this size); the benchmark itself
fails unless one Ray worker, two Ray workers and the one-process, one-partition reference keep the
same uids (``check_kept``, tested here on its own).
"""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_curate.py"
RATIOS = ("ratio_two_vs_one_worker", "ratio_two_vs_one_worker_match_pass", "ratio_two_vs_one_worker_balance_pass",
          "stage_1_worker_over_match_batch")


def _load_benchmark(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_curate", BENCH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_curate", module)  # Ray pickles its tasks by value from here
    spec.loader.exec_module(module)
    return module


def test_bench_curate_small_runs_and_prints_ratios(capsys, monkeypatch):
    bench = _load_benchmark(monkeypatch)
    result = bench.main(["--small"])
    out = capsys.readouterr().out
    for name in RATIOS:
        assert f"{name}=" in out
        assert result[name] > 0
    assert "(goal >= 1.7)" in out and "load_avg_1m_5m_15m=" in out
    assert "curate_stage_1_worker texts_per_s=" in out and "curate_stage_2_worker texts_per_s=" in out
    assert 0 < result["kept"] < bench.SMALL["texts"]  # balancing at t=20 drops some captions, keeps others


def test_kept_sets_must_be_identical(monkeypatch):
    bench = _load_benchmark(monkeypatch)
    bench.check_kept({1: ["a", "b"], 2: ["a", "b"]}, ["a", "b"])
    with pytest.raises(AssertionError, match="2 worker"):
        bench.check_kept({1: ["a", "b"], 2: ["b"]}, ["a", "b"])
    with pytest.raises(AssertionError, match="1 worker"):
        bench.check_kept({1: ["a", "c"]}, ["a", "b"])
