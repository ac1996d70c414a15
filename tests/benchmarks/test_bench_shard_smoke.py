"""Smoke test of benchmarks/bench_shard.py: its main runs end to end in a tiny mode and prints its ratios.

No timing is asserted (two shared cores make timings meaningless at this size); the benchmark itself
fails if any tar the stage writes differs from the tarfile reference's, here with parts of several
row groups and shards that span parts.
"""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_shard.py"
RATIOS = ("ratio_one_worker_vs_tarfile", "ratio_two_workers_vs_tarfile", "ratio_two_vs_one_worker")


def _load_benchmark(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_shard", BENCH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_shard", module)  # Ray pickles its warm-up task by value from here
    spec.loader.exec_module(module)
    return module


def test_bench_shard_runs_and_prints_ratios(capsys, monkeypatch):
    bench = _load_benchmark(monkeypatch)
    result = bench.main(["--samples", "45", "--parts", "3", "--samples-per-shard", "20", "--repeats", "1",
                         "--row-group-rows", "4"])
    out = capsys.readouterr().out
    for name in RATIOS:
        assert f"{name}=" in out and "(goal >=" in out
        assert result[name] > 0
    for line in ("tarfile_one_process samples_per_s=", "shard_stage_1_worker samples_per_s=",
                 "shard_stage_2_worker samples_per_s="):
        assert line in out
