"""Smoke test of benchmarks/bench_captions.py: its main runs end to end at --small size and prints its ratios.
No ratio is asserted beyond being a positive number: timings on two shared cores prove nothing at this size."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_captions.py"


def test_bench_captions_small_runs_and_prints_its_ratios(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_captions", BENCH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_captions", module)
    spec.loader.exec_module(module)
    result = module.main(["--small"])
    out = capsys.readouterr().out
    assert result["requests"] == 128
    for name in ("in_flight_share", "throughput_share", "stage_over_bare_pool"):
        assert result[name] > 0 and f'"{name}"' in out
