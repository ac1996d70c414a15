"""Smoke test of benchmarks/bench_embed.py: its main runs end to end in a tiny mode and prints its ratio.

No timing is asserted; the benchmark itself fails if one and two actors wrote different embeddings.
"""

from tests.benchmarks.loading import load_benchmark


def test_bench_embed_runs_and_prints_its_ratio(capsys):
    module = load_benchmark("bench_embed")
    module.main(["--samples", "64", "--parts", "4", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "ratio_two_vs_one" in out and "images/s" in out and "gpu" in out
