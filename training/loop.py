"""The training loop: open_clip models on WebDataset shards (or an in-memory table), resumable.

Recipe after open_clip's trainer (Cherti et al. 2023; Ilharco et al. 2021): AdamW without decay on biases,
norms and the temperature, linear warmup then cosine decay, gradient clipping, the temperature clamped at
ln 100. Inside a torch.distributed process group (Ray Train, torchrun) the model is wrapped in DDP and each
rank reads its own part of the data; only rank 0 writes checkpoints and metrics.

This module is the driver: it sets the run up, feeds batches and runs the steps. The model and its objectives
are one module (training.module), a step is training.step, the metrics, checkpoints and skipped-step budget
are training.progress, and with "protoclip" the steps run in ProtoCLIP's episodes (training.episodes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import pyarrow as pa
import torch
from torch import nn

from training import METRICS_FILE
from training.checkpoints import latest_checkpoint, model_state, save_atomic
from training.config import TrainConfig
from training.data import ShardData, batch_fields, shard_loader, table_loader
from training.distributed import DistContext, resolve_device, wrap_ddp
from training.episodes import EpisodeFeed
from training.models import create_model, embed_dim, image_transform
from training.module import TrainModule
from training.objectives import WeightedObjectives
from training.optim import cosine_lr, make_optimizer, optimizer_settings, set_lr
from training.progress import Progress, after_step, progress_bar, read_history, record, restore
from training.run import Run
from training.step import to_device, train_step


@dataclass
class TrainResult:
    checkpoint: str
    steps: int
    samples_seen: int
    final_loss: float
    samples_per_second: float
    history: list[dict] = field(default_factory=list)
    skipped_steps: int = 0
    optimizer: dict = field(default_factory=dict)
    """The optimiser's settings as used (training.optim.OptimizerSettings), unset config values filled in."""


def configure_threads() -> int:
    """torch intra-op threads = OMP_NUM_THREADS when set (Ray sets it to the task's num_cpus), else the CPUs
    this process may run on."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def samples_per_step(cfg: TrainConfig, world_size: int) -> int:
    """Samples of one optimiser step over all ranks: batch_size x world_size x accum_freq."""
    return cfg.data.batch_size * world_size * cfg.distribution.accum_freq


def steps_per_epoch(num_samples: int, cfg: TrainConfig, world_size: int) -> int:
    """Optimiser steps (of samples_per_step samples) per pass over the data (at least one)."""
    return max(1, num_samples // samples_per_step(cfg, world_size))


def batch_stream(data: ShardData | pa.Table, cfg: TrainConfig, tokenizer: Callable, transform: Callable,
                 start_step: int, dist: DistContext) -> Iterator[dict]:
    """Endless training batches for this rank, starting at `start_step`.

    Tables and shards alike replay an undisturbed run's stream exactly, so a resumed run sees the batches it
    would have seen: a table skips to the resume step's batch of its seeded epoch; shards keep the run's seed
    and skip the batches already trained on without decoding them (training.data.shard_loader). This differs on
    purpose from open_clip_train, which restarts a resumed WebDataset stream mid-epoch on fresh samples: a
    resumed curaclip run's loss curve is the undisturbed one's (tests/flows/test_kill_matrix.py).
    """
    data_cfg, fields, per_step = cfg.data, batch_fields(cfg), cfg.distribution.accum_freq  # micro-batches per step
    if isinstance(data, pa.Table):
        per_epoch = steps_per_epoch(data.num_rows, cfg, dist.world_size) * per_step
        start = start_step * per_step
        for epoch in count(start // per_epoch):
            skip = start % per_epoch if epoch == start // per_epoch else 0
            yield from table_loader(data, data_cfg.batch_size, tokenizer, True, seed=cfg.seed * 100_003 + epoch,
                                    transform=transform, text_sampler=data_cfg.text_sampler, rank=dist.rank,
                                    world_size=dist.world_size, start_batch=skip, stop_batch=per_epoch,
                                    fields=fields)
        return
    total = steps_per_epoch(data.num_samples, cfg, dist.world_size) * cfg.schedule.epochs
    samples = total * per_step * data_cfg.batch_size * dist.world_size
    yield from shard_loader(data.urls, data_cfg.batch_size, samples, tokenizer, True, data_cfg.workers,
                            seed=cfg.seed * 100_003, transform=transform, text_sampler=data_cfg.text_sampler,
                            shuffle_buffer=data_cfg.shuffle_buffer, rank=dist.rank, world_size=dist.world_size,
                            fields=fields, skip_batches=start_step * per_step)


def setup(cfg: TrainConfig, data: ShardData | pa.Table, out_dir: str, log: Callable[[dict], None] | None,
          on_checkpoint: Callable[[str | None], None] | None) -> tuple[Run, Callable, Callable]:
    """Build the run: seeded model, objectives, optimiser, device and DDP; returns (run, tokenizer, transform)."""
    configure_threads()
    if cfg.distribution.accum_freq < 1:
        raise ValueError(f"distribution.accum_freq must be >= 1, got {cfg.distribution.accum_freq}")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    dist, device = DistContext.current(), resolve_device(cfg.distribution.device)
    model, _, tokenizer = create_model(cfg.model, context_length=cfg.data.context_length)
    transform = image_transform(model, True, cfg.data.crop_scale_min)
    core = TrainModule(model, WeightedObjectives(cfg, embed_dim(cfg.model)), dist).to(device)
    module: nn.Module = core
    if dist.world_size > 1:
        module = wrap_ddp(core, device, [f"objectives.{name}" for name in core.objectives.sharded()],
                          core.may_leave_parameters_unused())
    num_samples = data.num_rows if isinstance(data, pa.Table) else data.num_samples
    per_epoch = steps_per_epoch(num_samples, cfg, dist.world_size)
    run = Run(cfg, Path(out_dir), dist, module, core, make_optimizer(core, cfg.optim), device, per_epoch,
              per_epoch * cfg.schedule.epochs, log, on_checkpoint)
    return run, tokenizer, transform


class BatchFeed:
    """Each step's accum_freq micro-batches, straight from the stream."""

    def __init__(self, stream: Iterator[dict], cfg: TrainConfig) -> None:
        self.stream, self.accum_freq = stream, cfg.distribution.accum_freq

    def take(self, step: int) -> list[dict]:
        return [next(self.stream) for _ in range(self.accum_freq)]


def make_feed(run: Run, stream: Iterator[dict]) -> BatchFeed | EpisodeFeed:
    if "protoclip" in run.core.objectives.terms:
        return EpisodeFeed(stream, run)
    return BatchFeed(stream, run.cfg)


def run_steps(run: Run, progress: Progress, feed: BatchFeed | EpisodeFeed) -> None:
    """Train from progress.step to the last step, skipping (and counting) non-finite steps."""
    cfg, clock = run.cfg, {"last": time.perf_counter(), "seen": float(progress.samples_seen)}
    peak_lr = optimizer_settings(cfg.optim).lr  # optim.lr may be unset: the optimiser's default then
    schedule, per_step = cfg.schedule, samples_per_step(cfg, run.dist.world_size)
    bar = progress_bar(run, progress)
    try:
        while progress.step < run.total_steps:
            batches = [to_device(b, run.device) for b in feed.take(progress.step)]
            lr = cosine_lr(progress.step, peak_lr, schedule.warmup_steps, run.total_steps, schedule.min_lr_ratio)
            set_lr(run.optimizer, lr)
            metrics = train_step(run.module, run.optimizer, batches, cfg, run.dist)
            progress.step += 1
            progress.samples_seen += per_step
            record(progress, metrics, cfg.progress)
            if bar is not None:
                bar.set_postfix(loss=f"{metrics['loss']:.4f}" if metrics else "skipped", lr=f"{lr:.2e}",
                                refresh=False)
                bar.update(1)
            after_step(run, progress, lr, clock)
    finally:
        if bar is not None:
            bar.close()


def train(cfg: TrainConfig, data: ShardData | pa.Table, out_dir: str, log: Callable[[dict], None] | None = None,
          resume: bool = True, on_checkpoint: Callable[[str | None], None] | None = None) -> TrainResult:
    """Train `cfg.model` on shards or a table (`image` bytes + `text`) into out_dir: checkpoints/epoch_<n>.pt,
    checkpoints/latest.pt, final.pt (open_clip format) and metrics.jsonl. With `resume`, continues from the
    newest checkpoint in out_dir. `on_checkpoint(path)` hears of each checkpoint (e.g. to report it to Ray Train)."""
    run, tokenizer, transform = setup(cfg, data, out_dir, log, on_checkpoint)
    run.out.mkdir(parents=True, exist_ok=True)
    progress = restore(latest_checkpoint(run.out) if resume else None, run.core, run.optimizer)
    start = progress.step
    progress.samples_seen = start * samples_per_step(cfg, run.dist.world_size)
    progress.history = read_history(run.out / METRICS_FILE, start)
    if run.dist.rank == 0:
        (run.out / METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in progress.history))
    began = time.perf_counter()
    stream = batch_stream(data, cfg, tokenizer, transform, start, run.dist)
    try:
        run_steps(run, progress, make_feed(run, stream))
    finally:
        stream.close()  # stops the dataloader workers
    elapsed = time.perf_counter() - began
    final = str(run.out / "final.pt")
    if run.dist.rank == 0:
        save_atomic(model_state(run.core.model, cfg.model, progress.step // run.per_epoch, progress.step), final)
    last = progress.history[-1] if progress.history else {}
    speed = (progress.samples_seen - start * samples_per_step(cfg, run.dist.world_size)) / elapsed \
        if progress.step > start \
        else float(last.get("samples_per_second", 0.0))
    return TrainResult(final, progress.step, progress.samples_seen, float(last.get("loss", math.nan)), speed,
                       progress.history, progress.skipped, dataclasses.asdict(optimizer_settings(cfg.optim)))
