"""Smoke test of benchmarks/bench_train.py: `--small` trains with our trainer and with open_clip_train on the same
tiny shard set (open_clip_train must read our shards unchanged) and prints every ratio line; plus the log parsers
and the implied-cost arithmetic.

No timing is asserted (a few steps on two shared cores say nothing). The benchmark runs in a fresh process, as
from the command line: `training` must be imported before torch for the OpenMP wait policy both trainers share.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_train.py"
OBJECTIVES = ("alip", "dreamlip", "negclip", "mlcd", "protoclip")
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "bench_train", module)  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module


def test_small_runs_both_trainers_on_our_shards_and_prints_ratios():
    done = subprocess.run([sys.executable, str(BENCH), "--small"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    for trainer in ("ours", "open_clip"):
        assert re.search(rf"^trainer={trainer} objectives=clip samples_per_s={NUMBER} .*timed_steps=4 ", out, re.M)
    ratio = re.search(rf"^ratio_ours_vs_open_clip={NUMBER} \(goal >= 1.0\)$", out, re.M)
    assert ratio and float(ratio.group(1)) > 0
    for name in OBJECTIVES:
        line = re.search(rf"^cost_ratio_{name} measured={NUMBER} implied={NUMBER} measured_over_implied={NUMBER} "
                         r"\(goal <= 1.15\)$", out, re.M)
        assert line, f"no cost line for {name}"
        measured, implied, over = map(float, line.groups())
        assert measured > 0 and implied >= 1.0 and over == pytest.approx(measured / implied, abs=0.011)


def test_open_clip_log_parser_reads_its_train_line(bench):
    # open_clip_train.train.train_one_epoch's format, logged every step.
    log = ("2026-01-01,00:00:00 | INFO | Train Epoch: 0 [  32/96 (33%)] Data (t): 0.010 Batch (t): 0.250, "
           "64.0000/s, 64.0000/s/gpu LR: 0.000200 Logit Scale: 14.286 Contrastive_loss: 2.7 (2.7) Loss: 2.7 (2.7)\n"
           "2026-01-01,00:00:01 | INFO | Train Epoch: 0 [  48/96 (50%)] Data (t): 0.010 Batch (t): 0.500, "
           "32.0000/s, 32.0000/s/gpu LR: 0.000400 Logit Scale: 14.286 Contrastive_loss: 2.6 (2.6) Loss: 2.6 (2.6)\n")
    assert bench.open_clip_step_seconds(log, 16) == {2: pytest.approx(0.25), 3: pytest.approx(0.5)}
    with pytest.raises(AssertionError, match="lacks steps"):
        bench.timed_steps(bench.open_clip_step_seconds(log, 16), 3, 1)


def test_implied_cost_counts_texts_and_extra_forwards(bench):
    towers = bench.TowerFlops(image=3.0, text=1.0, embed_dim=4, patches=4, width=8)
    cfg = bench.TrainConfig(data=bench.DataConfig(batch_size=2))
    assert bench.implied_cost("clip", cfg, towers) == 1.0
    assert bench.implied_cost("alip", cfg, towers) == pytest.approx(5 / 4)
    assert bench.implied_cost("negclip", cfg, towers) == pytest.approx(5 / 4)
    assert bench.implied_cost("protoclip", cfg, towers) == pytest.approx(4 / 3)  # + one no-grad forward of 3
    grouping = 2 * 4 * 8 * 4 + 4 * 7 * 4 * 4  # T = 1 raw caption + 6 sub-captions
    assert bench.implied_cost("dreamlip", cfg, towers) == pytest.approx((3 + 7 + grouping) / 4)
