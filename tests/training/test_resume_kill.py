"""Resume after a real kill: training runs in a child process that gets SIGKILL once a checkpoint past step 8
exists and two more steps are logged; `train(resume=True)` then continues from that checkpoint, and
metrics.jsonl holds every step once, on the curve of an uninterrupted run (the table replays its seeded
batches exactly, so the losses agree up to float noise; measured identical in 1-thread runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from training.config import TrainConfig
from training.loop import train

CHILD = r"""
import json, sys, typing
import pyarrow.parquet as pq
from training.config import TrainConfig
from training.loop import train
hints = typing.get_type_hints(TrainConfig)  # the test's overrides of the defaults, a component per mapping
cfg = TrainConfig(**{k: hints[k](**v) if isinstance(v, dict) else v for k, v in json.loads(sys.argv[1]).items()})
train(cfg, pq.read_table(sys.argv[2]), sys.argv[3])
"""

KILL_AFTER_STEP = 8


def overrides(micro_model: str) -> dict:
    """96 steps of 8 (64 rows, 12 epochs), a checkpoint every 4 steps and every step logged: the child has
    ~85 steps left when it is killed, seconds of work, so the kill always lands mid-run."""
    return {"model": micro_model, "optim": {"lr": 2e-3}, "schedule": {"epochs": 12, "warmup_steps": 4},
            "data": {"batch_size": 8, "context_length": 16, "workers": 0}, "distribution": {"device": "cpu"},
            "progress": {"log_every": 1, "checkpoint_every": 4}}


def checkpoint_step(out: Path) -> int:
    """Step of the run's newest checkpoint; -1 before the first."""
    marker = out / "checkpoints" / "latest.json"
    return int(json.loads(marker.read_text())["step"]) if marker.exists() else -1  # written atomically


def logged_step(out: Path) -> int:
    """Last step in metrics.jsonl (a line being written is not counted); -1 before the first."""
    path = out / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []  # the text after the last newline is partial
    return int(json.loads(lines[-1])["step"]) if lines else -1


def kill_past_checkpoint(proc: subprocess.Popen, out: Path, step: int, timeout: float = 120.0) -> None:
    """Poll (every 5 ms) until out_dir holds a checkpoint past `step` and metrics.jsonl two steps past that
    checkpoint (lines the resumed run must drop and redo), then SIGKILL the child."""
    deadline = time.monotonic() + timeout
    while (found := checkpoint_step(out)) <= step or logged_step(out) < found + 2:
        if proc.poll() is not None:
            pytest.fail(f"the child ended (code {proc.returncode}) before it was killed")
        if time.monotonic() > deadline:
            pytest.fail(f"no checkpoint past step {step} within {timeout} s")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_sigkilled_run_resumes_from_its_last_checkpoint_on_the_same_curve(micro_model, colour_table, tmp_path,
                                                                           reliability):
    hints = typing.get_type_hints(TrainConfig)
    cfg = TrainConfig(**{k: hints[k](**v) if isinstance(v, dict) else v for k, v in overrides(micro_model).items()})
    pq.write_table(colour_table, tmp_path / "table.parquet")
    killed = tmp_path / "killed"
    args = [json.dumps(overrides(micro_model)), str(tmp_path / "table.parquet"), str(killed)]
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        kill_past_checkpoint(proc, killed, KILL_AFTER_STEP)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL and not (killed / "final.pt").exists()
    at_kill, total = checkpoint_step(killed), 12 * 64 // 8
    assert KILL_AFTER_STEP < at_kill < logged_step(killed) < total  # steps after the checkpoint were logged

    resumed = train(cfg, colour_table, str(killed))
    whole = train(cfg, colour_table, str(tmp_path / "whole"))
    lines = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, total + 1))  # no gap, no step logged twice
    assert lines == resumed.history and resumed.steps == total
    assert resumed.samples_seen == whole.samples_seen == total * 8
    for a, b in zip(whole.history, lines, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)
    reliability.fault("SIGKILL of the training process", "train")
