"""Smoke test of benchmarks/bench_embed.py: its main runs end to end in a tiny mode and prints its ratio.

No timing is asserted; the benchmark itself fails if one and two actors wrote different embeddings.
"""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_embed.py"


def test_bench_embed_runs_and_prints_its_ratio(capsys):
    spec = importlib.util.spec_from_file_location("bench_embed", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--samples", "64", "--parts", "4", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "ratio_two_vs_one" in out and "images/s" in out and "gpu" in out
