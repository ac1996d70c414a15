"""The training loop: open_clip models on WebDataset shards (or an in-memory table), resumable.

Recipe after open_clip's trainer (Cherti et al. 2023; Ilharco et al. 2021): AdamW without decay on biases,
norms and the temperature, linear warmup then cosine decay, gradient clipping, the temperature clamped at
ln 100. A step whose loss or gradient norm is not finite is skipped and counted (too many abort). Inside a
torch.distributed process group (Ray Train, torchrun) the model is wrapped in DDP and each rank reads its
own part of the data; only rank 0 writes checkpoints and metrics.
"""

from __future__ import annotations

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
import torch.distributed as torch_dist
from torch import nn

from training.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    model_state,
    prune_epoch_checkpoints,
    restore_rng,
    save_atomic,
    training_state,
    write_checkpoint,
)
from training.config import TrainConfig
from training.data import ShardData, shard_loader, table_loader
from training.losses import DistContext, WeightedObjectives
from training.models import create_model, embed_dim, image_transform, unwrap
from training.optim import clamp_logit_scale, cosine_lr, make_optimizer, set_lr


class NonFiniteLossError(RuntimeError):
    """More steps had a non-finite loss or gradient than TrainConfig.max_nonfinite_steps allows."""


@dataclass
class TrainResult:
    checkpoint: str
    steps: int
    samples_seen: int
    final_loss: float
    samples_per_second: float
    history: list[dict] = field(default_factory=list)
    skipped_steps: int = 0


@dataclass
class Progress:
    """Mutable run state: what a checkpoint restores and the result reports."""

    step: int = 0
    samples_seen: int = 0
    skipped: int = 0
    history: list[dict] = field(default_factory=list)
    window: list[dict] = field(default_factory=list)


class TrainModule(nn.Module):
    """The model and its objectives as one module, so DDP sees one forward and every parameter."""

    def __init__(self, model: nn.Module, objectives: WeightedObjectives, dist: DistContext) -> None:
        super().__init__()
        self.model = model
        self.objectives = objectives
        self.dist = dist

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = {
            "image_features": self.model.encode_image(batch["image"], normalize=True),  # (B, D)
            "text_features": self.model.encode_text(batch["text"], normalize=True),  # (B, D)
            "logit_scale": self.model.logit_scale.exp(),
        }
        if getattr(self.model, "logit_bias", None) is not None:
            out["logit_bias"] = self.model.logit_bias
        return self.objectives(out, batch, self.dist)


def configure_threads() -> int:
    """torch intra-op threads = OMP_NUM_THREADS when set (Ray sets it to the task's num_cpus), else the CPUs
    this process may run on."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def resolve_device(name: str) -> torch.device:
    """"auto" -> this rank's GPU (LOCAL_RANK) when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":  # one GPU per rank; Ray Train and torchrun set LOCAL_RANK
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % max(1, torch.cuda.device_count()))
    return torch.device(name)


def steps_per_epoch(num_samples: int, cfg: TrainConfig, world_size: int) -> int:
    """Full global batches per pass over the data (at least one)."""
    return max(1, num_samples // (cfg.batch_size * world_size))


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def all_ranks_finite(value: torch.Tensor, dist: DistContext) -> bool:
    """True when `value` is finite on every rank, so all ranks skip a step together."""
    flag = torch.isfinite(value.detach()).all().float().reshape(1)
    if dist.world_size > 1:
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def train_step(module: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, cfg: TrainConfig,
               dist: DistContext) -> dict[str, float] | None:
    """One optimiser step; None (parameters untouched) when the loss or the gradient norm is not finite."""
    optimizer.zero_grad(set_to_none=True)
    device = batch["image"].device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        total, terms = module(batch)
    if not all_ranks_finite(total, dist):
        return None
    total.backward()
    clip = cfg.grad_clip_norm if cfg.grad_clip_norm > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None], clip)
    if not all_ranks_finite(grad_norm, dist):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    clamp_logit_scale(unwrap(module).model)
    return {"loss": total.item(), **{f"loss_{k}": v.item() for k, v in terms.items()},
            "grad_norm": grad_norm.item()}


def batch_stream(data: ShardData | pa.Table, cfg: TrainConfig, tokenizer: Callable, transform: Callable,
                 start_step: int, dist: DistContext) -> Iterator[dict]:
    """Endless training batches for this rank, starting at `start_step`.

    A table replays its seeded epochs exactly, so a resumed run sees the batches it would have seen.
    Shards restart their stream from a seed mixed with the resume step (open_clip likewise does not
    replay a WebDataset mid-epoch), so resumed steps see fresh, not repeated, samples.
    """
    if isinstance(data, pa.Table):
        per_epoch = steps_per_epoch(data.num_rows, cfg, dist.world_size)
        for epoch in count(start_step // per_epoch):
            skip = start_step % per_epoch if epoch == start_step // per_epoch else 0
            yield from table_loader(data, cfg.batch_size, tokenizer, True, seed=cfg.seed * 100_003 + epoch,
                                    transform=transform, text_sampler=cfg.text_sampler, rank=dist.rank,
                                    world_size=dist.world_size, start_batch=skip)
        return
    total = steps_per_epoch(data.num_samples, cfg, dist.world_size) * cfg.epochs
    yield from shard_loader(data.urls, cfg.batch_size, (total - start_step) * cfg.batch_size * dist.world_size,
                            tokenizer, True, cfg.workers, seed=cfg.seed * 100_003 + start_step,
                            transform=transform, text_sampler=cfg.text_sampler, shuffle_buffer=cfg.shuffle_buffer,
                            rank=dist.rank, world_size=dist.world_size)


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
    module.objectives.load_state_dict(state["objectives"])
    optimizer.load_state_dict(state["optimizer"])
    restore_rng(state["rng"])
    return Progress(step=int(state["step"]), skipped=int(state["skipped_steps"]))


def summarize(progress: Progress, epoch: float, lr: float, samples_per_second: float) -> dict:
    """One metrics line: the mean of each loss term over the steps since the last line, and throughput."""
    window = progress.window or [{}]
    keys = sorted({k for m in window for k in m})
    line = {"step": progress.step, "epoch": round(epoch, 4), "lr": lr, "samples_seen": progress.samples_seen,
            "skipped_steps": progress.skipped}
    line.update({k: sum(m[k] for m in window) / len(window) for k in keys})
    line["samples_per_second"] = samples_per_second
    return line


@dataclass
class Run:
    """Everything `train` sets up once: the module (DDP-wrapped when distributed), its parts, the data."""

    cfg: TrainConfig
    out: Path
    dist: DistContext
    module: nn.Module
    core: TrainModule
    optimizer: torch.optim.Optimizer
    device: torch.device
    per_epoch: int
    total_steps: int
    log: Callable[[dict], None] | None
    on_checkpoint: Callable[[str], None] | None


def setup(cfg: TrainConfig, data: ShardData | pa.Table, out_dir: str, log: Callable[[dict], None] | None,
          on_checkpoint: Callable[[str], None] | None) -> tuple[Run, Callable, Callable]:
    """Build the run: seeded model, objectives, optimiser, device and DDP; returns (run, tokenizer, transform)."""
    configure_threads()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    dist, device = DistContext.current(), resolve_device(cfg.device)
    model, _, tokenizer = create_model(cfg.model, context_length=cfg.context_length)
    transform = image_transform(model, True, cfg.crop_scale_min)
    core = TrainModule(model, WeightedObjectives(cfg, embed_dim(cfg.model)), dist).to(device)
    module: nn.Module = core
    if dist.world_size > 1:
        module = nn.parallel.DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)
    num_samples = data.num_rows if isinstance(data, pa.Table) else data.num_samples
    per_epoch = steps_per_epoch(num_samples, cfg, dist.world_size)
    run = Run(cfg, Path(out_dir), dist, module, core, make_optimizer(core, cfg), device, per_epoch,
              per_epoch * cfg.epochs, log, on_checkpoint)
    return run, tokenizer, transform


def save_progress(run: Run, progress: Progress, filename: str) -> None:
    """A resumable checkpoint from rank 0, then older epoch checkpoints pruned and the hook told."""
    if run.dist.rank != 0:
        return
    state = training_state(run.core.model, run.core.objectives, run.optimizer, run.cfg,
                           progress.step // run.per_epoch, progress.step, progress.skipped)
    path = write_checkpoint(run.out, filename, state)
    prune_epoch_checkpoints(run.out, run.cfg.keep_epoch_checkpoints)
    if run.on_checkpoint is not None:
        run.on_checkpoint(path)


def after_step(run: Run, progress: Progress, lr: float, clock: dict[str, float]) -> None:
    """Metrics every log_every steps and at the end; a checkpoint at each epoch end and every checkpoint_every."""
    step, cfg = progress.step, run.cfg
    if step % cfg.log_every == 0 or step == run.total_steps:
        now = time.perf_counter()
        speed = (progress.samples_seen - clock["seen"]) / max(now - clock["last"], 1e-9)
        line = summarize(progress, step / run.per_epoch, lr, speed)
        clock.update(last=now, seen=progress.samples_seen)
        progress.window.clear()
        progress.history.append(line)
        if run.dist.rank == 0:
            with open(run.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            if run.log is not None:
                run.log(line)
    if step % run.per_epoch == 0:
        save_progress(run, progress, f"epoch_{step // run.per_epoch}.pt")
    elif cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
        save_progress(run, progress, "latest.pt")


def run_steps(run: Run, progress: Progress, stream: Iterator[dict]) -> None:
    """Train from progress.step to the last step, skipping (and counting) non-finite steps."""
    cfg, clock = run.cfg, {"last": time.perf_counter(), "seen": float(progress.samples_seen)}
    while progress.step < run.total_steps:
        batch = to_device(next(stream), run.device)
        lr = cosine_lr(progress.step, cfg.lr, cfg.warmup_steps, run.total_steps, cfg.min_lr_ratio)
        set_lr(run.optimizer, lr)
        metrics = train_step(run.module, run.optimizer, batch, cfg, run.dist)
        progress.step += 1
        progress.samples_seen += cfg.batch_size * run.dist.world_size
        if metrics is None:
            progress.skipped += 1
            if progress.skipped > cfg.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{progress.skipped} steps had a non-finite loss or gradient "
                    f"(max_nonfinite_steps={cfg.max_nonfinite_steps}); the last at step {progress.step}")
        else:
            progress.window.append(metrics)
        after_step(run, progress, lr, clock)


def train(cfg: TrainConfig, data: ShardData | pa.Table, out_dir: str, log: Callable[[dict], None] | None = None,
          resume: bool = True, on_checkpoint: Callable[[str], None] | None = None) -> TrainResult:
    """Train `cfg.model` on shards or a table (`image` bytes + `text`) into out_dir: checkpoints/epoch_<n>.pt,
    checkpoints/latest.pt, final.pt (open_clip format) and metrics.jsonl. With `resume`, continues from the
    newest checkpoint in out_dir. `on_checkpoint(path)` hears of each checkpoint (e.g. to report it to Ray Train)."""
    run, tokenizer, transform = setup(cfg, data, out_dir, log, on_checkpoint)
    run.out.mkdir(parents=True, exist_ok=True)
    progress = restore(latest_checkpoint(run.out) if resume else None, run.core, run.optimizer)
    start = progress.step
    progress.samples_seen = start * cfg.batch_size * run.dist.world_size
    progress.history = read_history(run.out / "metrics.jsonl", start)
    if run.dist.rank == 0:
        (run.out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in progress.history))
    began = time.perf_counter()
    stream = batch_stream(data, cfg, tokenizer, transform, start, run.dist)
    try:
        run_steps(run, progress, stream)
    finally:
        stream.close()  # stops the dataloader workers
    elapsed = time.perf_counter() - began
    final = str(run.out / "final.pt")
    if run.dist.rank == 0:
        save_atomic(model_state(run.core.model, cfg.model, progress.step // run.per_epoch, progress.step), final)
    last = progress.history[-1] if progress.history else {}
    speed = (progress.step - start) * cfg.batch_size * run.dist.world_size / elapsed if progress.step > start \
        else float(last.get("samples_per_second", 0.0))
    return TrainResult(final, progress.step, progress.samples_seen, float(last.get("loss", math.nan)), speed,
                       progress.history, progress.skipped)
