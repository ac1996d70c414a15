"""Smoke test of benchmarks/bench_resume.py: its main runs end to end at a tiny size and prints its figures.

No timing is asserted; the benchmark itself fails when the skipping stream's first batch differs from the
replayed stream's batch at that position."""

import json

from tests.benchmarks.loading import load_benchmark


def test_bench_resume_runs_and_prints_its_figures(capsys):
    bench = load_benchmark("bench_resume")
    result = bench.main(["--samples", "96", "--batch-size", "8", "--skip", "3", "--repeats", "1"])
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):]) == result
    assert result["decoding"]["samples"] == 96 and result["decoding"]["ratio_ours_vs_shared_generator"] > 0
    assert result["resuming"]["skip_batches"] == 3 and result["resuming"]["speedup_skip_vs_replay"] > 0
