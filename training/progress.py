"""A run's bookkeeping: its progress counters, metrics lines (metrics.jsonl), resumable checkpoints (only rank 0
writes; every rank joins the gathers) and the budget of skipped non-finite steps."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as torch_dist

from training import METRICS_FILE
from training.checkpoints import (
    gather_sharded_state,
    load_checkpoint,
    prune_epoch_checkpoints,
    restore_rng,
    slice_sharded_optimizer_state,
    training_state,
    write_checkpoint,
)
from training.config import ProgressConfig
from training.distributed import DistContext
from training.module import TrainModule
from training.run import Run


class NonFiniteLossError(RuntimeError):
    """More steps had a non-finite loss or gradient than train.progress.max_nonfinite_steps allows."""


@dataclass
class Progress:
    """Mutable run state: what a checkpoint restores and the result reports."""

    step: int = 0
    samples_seen: int = 0
    skipped: int = 0
    history: list[dict] = field(default_factory=list)
    window: list[dict] = field(default_factory=list)


def read_history(path: Path, until_step: int) -> list[dict]:
    """Metrics lines up to a resumed step; later lines (from after the checkpoint) are dropped."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [m for m in lines if m["step"] <= until_step]


def restore(path: str | None, module: TrainModule, optimizer: torch.optim.Optimizer) -> Progress:
    """Load a resumable checkpoint into the module and optimiser; a fresh Progress without one."""
    if path is None:
        return Progress()
    state = load_checkpoint(path)
    module.model.load_state_dict(state["state_dict"])
    module.objectives.load_state_dict(state["objectives"])  # sharded rows are cut to this rank's by a hook
    shards = module.objectives.sharded()
    optimizer.load_state_dict(slice_sharded_optimizer_state(state["optimizer"], optimizer, module.objectives, shards))
    restore_rng(state["rng"])
    return Progress(step=int(state["step"]), skipped=int(state["skipped_steps"]))


def summarize(progress: Progress, epoch: float, lr: float, samples_per_second: float,
              dist: DistContext | None = None, device: torch.device | None = None) -> dict:
    """One metrics line: the mean of each loss term over the steps since the last line, and throughput."""
    window = progress.window or [{}]
    keys = sorted({k for m in window for k in m})
    line = {"step": progress.step, "epoch": round(epoch, 4), "lr": lr, "samples_seen": progress.samples_seen,
            "skipped_steps": progress.skipped}
    line.update({k: sum(m[k] for m in window) / len(window) for k in keys})
    if dist is not None and dist.world_size > 1 and keys:
        # Each rank's loss covers its own rows (against the global batch); the global batch's is their mean.
        means = torch.tensor([line[k] for k in keys], dtype=torch.float64, device=device)
        torch_dist.all_reduce(means)
        line.update(zip(keys, (means / dist.world_size).tolist()))
    line["samples_per_second"] = samples_per_second
    return line


def save_progress(run: Run, progress: Progress, filename: str) -> None:
    """A resumable checkpoint from rank 0 (every rank joins in gathering rank-local parameters), then older
    epoch checkpoints pruned and the hook told."""
    objectives, optimizer = gather_sharded_state(run.core.objectives, run.optimizer, run.core.objectives.sharded(),
                                                 run.dist)
    path = None
    if run.dist.rank == 0:
        state = training_state(run.core.model, objectives, optimizer, run.cfg,
                               progress.step // run.per_epoch, progress.step, progress.skipped)
        path = write_checkpoint(run.out, filename, state)
        prune_epoch_checkpoints(run.out, run.cfg.progress.keep_epoch_checkpoints)
    if run.on_checkpoint is not None:  # on every rank: a collective hook (ray.train.report) needs them all
        run.on_checkpoint(path)


def after_step(run: Run, progress: Progress, lr: float, clock: dict[str, float]) -> None:
    """Metrics every log_every steps and at the end; a checkpoint at each epoch end and every checkpoint_every."""
    step, cfg = progress.step, run.cfg.progress
    if step % cfg.log_every == 0 or step == run.total_steps:
        now = time.perf_counter()
        speed = (progress.samples_seen - clock["seen"]) / max(now - clock["last"], 1e-9)
        line = summarize(progress, step / run.per_epoch, lr, speed, run.dist,
                         run.device if run.device.type == "cuda" else None)  # NCCL reduces on the GPU
        clock.update(last=now, seen=progress.samples_seen)
        progress.window.clear()
        progress.history.append(line)
        if run.dist.rank == 0:
            with open(run.out / METRICS_FILE, "a") as f:
                f.write(json.dumps(line) + "\n")
            if run.log is not None:
                run.log(line)
    if step % run.per_epoch == 0:
        save_progress(run, progress, f"epoch_{step // run.per_epoch}.pt")
    elif cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
        save_progress(run, progress, "latest.pt")


def progress_bar(run: Run, progress: Progress):  # noqa: ANN201 - tqdm or None
    """A tqdm bar over the steps on rank 0 when stderr is a terminal (tqdm ships with open_clip)."""
    if run.dist.rank != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=run.total_steps, initial=progress.step, unit="step", dynamic_ncols=True, file=sys.stderr)


def record(progress: Progress, metrics: dict[str, float] | None, cfg: ProgressConfig) -> None:
    """Keep a step's metrics for the next metrics line, or count it as skipped (too many abort)."""
    if metrics is not None:
        progress.window.append(metrics)
        return
    progress.skipped += 1
    if progress.skipped > cfg.max_nonfinite_steps:
        raise NonFiniteLossError(
            f"{progress.skipped} steps had a non-finite loss or gradient "
            f"(max_nonfinite_steps={cfg.max_nonfinite_steps}); the last at step {progress.step}")
