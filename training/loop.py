"""The training loop: open_clip models on WebDataset shards (or an in-memory table), resumable.

Recipe after open_clip's trainer (Cherti et al. 2023; Ilharco et al. 2021): AdamW without decay on biases,
norms and the temperature, linear warmup then cosine decay, gradient clipping, the temperature clamped at
ln 100. A step whose loss or gradient norm is not finite is skipped and counted (too many abort). Inside a
torch.distributed process group (Ray Train, torchrun) the model is wrapped in DDP and each rank reads its
own part of the data; only rank 0 writes checkpoints and metrics.

The model runs only the passes the configured objectives read (`TrainModule.encode`): every caption of a step
(raw text, ALIP's synthetic caption, DreamLIP's sub-captions, NegCLIP's negatives) goes through the text tower
in one batched forward. With accum_freq > 1 a step is open_clip's feature-cached accumulation: a no-grad
forward of every micro-batch caches its features, then each micro-batch is re-encoded with gradients and
spliced into the cached global features, so the gradient equals that of the whole accumulated batch.
With "protoclip" the steps run in ProtoCLIP's episodes (EpisodeFeed): each episode's batches are drawn ahead,
encoded and clustered, then trained on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from training.checkpoints import (
    gather_sharded_state,
    latest_checkpoint,
    load_checkpoint,
    model_state,
    prune_epoch_checkpoints,
    restore_rng,
    save_atomic,
    slice_sharded_optimizer_state,
    training_state,
    write_checkpoint,
)
from training.config import TrainConfig
from training.data import TEXT_INPUTS, ShardData, batch_fields, shard_loader, table_loader
from training.distributed import (
    DistContext,
    all_ranks_finite,
    gather_numpy,
    resolve_device,
    wrap_ddp,
)
from training.models import create_model, embed_dim, encode_text_trimmed, image_transform, trims_text, unwrap
from training.objectives import WeightedObjectives
from training.objectives.protoclip import (
    Prototypes,
    episode_seed,
    fit_prototypes,
    share_prototypes,
    teacher_text_features,
)
from training.optim import clamp_logit_scales, cosine_lr, make_optimizer, optimizer_settings, set_lr


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
    optimizer: dict = field(default_factory=dict)
    """The optimiser's settings as used (training.optim.OptimizerSettings), unset config values filled in."""


@dataclass
class Progress:
    """Mutable run state: what a checkpoint restores and the result reports."""

    step: int = 0
    samples_seen: int = 0
    skipped: int = 0
    history: list[dict] = field(default_factory=list)
    window: list[dict] = field(default_factory=list)


SHARED_OUTPUTS = ("logit_scale", "logit_bias")
"""`out` entries that are parameters, not per-sample features (never cached or spliced)."""


@dataclass
class FeatureCache:
    """open_clip's accumulation cache: every micro-batch's no-grad features, the micro-batches' labels and masks
    merged, and which micro-batch is being re-encoded with gradients."""

    features: list[dict[str, torch.Tensor]]
    batch: dict
    index: int = 0

    def splice(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The whole accumulated batch's features with micro-batch `index`'s rows replaced by `out`'s."""
        j = self.index
        return {k: v if k in SHARED_OUTPUTS else
                torch.cat([f[k] for f in self.features[:j]] + [v] + [f[k] for f in self.features[j + 1:]])
                for k, v in out.items()}


def concat_batches(batches: list[dict]) -> dict:
    """The micro-batches' labels and masks (tensors) and list fields as one batch; images and tokens are left
    out (their features stand for them)."""
    merged = {}
    for key, value in batches[0].items():
        if key == "image" or key in TEXT_INPUTS:
            continue
        merged[key] = torch.cat([b[key] for b in batches]) if isinstance(value, torch.Tensor) \
            else [x for b in batches for x in b[key]]
    return merged


class TrainModule(nn.Module):
    """The model and its objectives as one module, so DDP sees one forward and every parameter."""

    def __init__(self, model: nn.Module, objectives: WeightedObjectives, dist: DistContext) -> None:
        super().__init__()
        self.model = model
        self.objectives = objectives
        self.dist = dist
        objectives.attach(model)
        self.reads = objectives.reads

    def encode_image(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if "patch_tokens" not in self.reads:
            return {"image_features": self.model.encode_image(image, normalize=True)}  # (B, D)
        # DreamLIP's grouping loss also needs the patch tokens: the last block's, after ln_post, as open_clip's
        # output_tokens gives them; the pooled features are exactly encode_image's.
        o = self.model.visual.forward_intermediates(image, indices=1, output_fmt="NLC", normalize_intermediates=True)
        return {"image_features": F.normalize(o["image_features"], dim=-1),  # (B, D)
                "patch_tokens": o["image_intermediates"][-1]}  # (B, P, width)

    def encode_texts(self, batch: dict) -> dict[str, torch.Tensor]:
        """Every caption the objectives read; per-image groups as (B, K, D).

        A causal open_clip text tower (`trims_text`) encodes each kind of caption in its own forward, cut to
        that kind's longest caption (`encode_text_trimmed`, exact): ALIP's synthetic captions are a third of
        the alt-texts' length. Any other text tower gets every caption in ONE forward, as before."""
        keys = [k for k, name in TEXT_INPUTS.items() if k in batch and name in self.reads]
        if not keys:
            return {}
        tokens = [batch[k] for k in keys]
        if trims_text(self.model):
            parts = [encode_text_trimmed(self.model, t, normalize=True) for t in tokens]
        else:
            features = self.model.encode_text(tokens[0] if len(tokens) == 1 else torch.cat(tokens), normalize=True)
            parts = features.split([t.shape[0] for t in tokens])
        rows, out = batch["image"].shape[0], {}
        for key, part in zip(keys, parts, strict=True):
            out[TEXT_INPUTS[key]] = part if part.shape[0] == rows and key in ("text", "synthetic_text") \
                else part.reshape(rows, -1, part.shape[-1])
        return out

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        """`out`: the features of this batch the objectives read, and the temperature (and bias). When no
        objective reads the raw caption (MLCD alone), it is encoded without a gradient for the logged CLIP loss."""
        out = {**self.encode_image(batch["image"]), **self.encode_texts(batch),
               "logit_scale": self.model.logit_scale.exp()}
        if "text_features" not in out and "text" in batch:
            with torch.no_grad():  # encode_text_trimmed falls back to encode_text for towers it cannot cut
                out["text_features"] = encode_text_trimmed(self.model, batch["text"], normalize=True)
        if getattr(self.model, "logit_bias", None) is not None:
            out["logit_bias"] = self.model.logit_bias
        return out

    def forward(self, batch: dict, cache: FeatureCache | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.encode(batch)
        if cache is not None:
            out, batch = cache.splice(out), cache.batch
        return self.objectives(out, batch, self.dist)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters each accumulated micro-batch's loss depends on in full (temperatures, biases, objectives')."""
        own = [p for p in (self.model.logit_scale, getattr(self.model, "logit_bias", None)) if p is not None]
        return own + list(self.objectives.parameters())

    def sharded_parameters(self) -> list[nn.Parameter]:
        """Rank-local parameters (kept out of DDP; their gradient norm is summed over ranks)."""
        return [self.objectives.get_parameter(name) for name in self.objectives.sharded()]

    def may_leave_parameters_unused(self) -> bool:
        """True when no objective reads the text tower, the temperature or the model's bias (DDP must know)."""
        text = any(name in self.reads for name in TEXT_INPUTS.values())
        bias = getattr(self.model, "logit_bias", None) is not None and "logit_bias" not in self.reads
        return not text or "logit_scale" not in self.reads or bias


def configure_threads() -> int:
    """torch intra-op threads = OMP_NUM_THREADS when set (Ray sets it to the task's num_cpus), else the CPUs
    this process may run on."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def steps_per_epoch(num_samples: int, cfg: TrainConfig, world_size: int) -> int:
    """Optimiser steps (of batch_size x world_size x accum_freq samples) per pass over the data (at least one)."""
    return max(1, num_samples // (cfg.batch_size * world_size * cfg.accum_freq))


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


Loss = tuple[torch.Tensor, dict[str, torch.Tensor]]


def accumulate(module: nn.Module, batches: list[dict], cfg: TrainConfig, dist: DistContext) -> Loss | None:
    """open_clip's feature-cached accumulation over micro-batches; None when the loss is not finite."""
    core, device = unwrap(module), batches[0]["image"].device
    with torch.no_grad(), autocast(cfg, device):
        cache = FeatureCache([core.encode(b) for b in batches], concat_batches(batches))
    for j, batch in enumerate(batches):
        cache.index = j
        last = j == len(batches) - 1
        with nullcontext() if last or not hasattr(module, "no_sync") else module.no_sync():  # one all-reduce
            with autocast(cfg, device):
                total, terms = module(batch, cache)
            if j == 0 and not all_ranks_finite(total, dist):
                return None
            total.backward()
    # Every micro-batch's loss depends in full on the shared parameters, so their gradient was summed K times.
    for p in core.shared_parameters():
        if p.grad is not None:
            p.grad.div_(len(batches))
    return total, terms


def forward_backward(module: nn.Module, batches: list[dict], cfg: TrainConfig, dist: DistContext) -> Loss | None:
    """The step's loss with its gradient accumulated in .grad; None when the loss is not finite."""
    if len(batches) > 1:
        return accumulate(module, batches, cfg, dist)
    with autocast(cfg, batches[0]["image"].device):
        total, terms = module(batches[0])
    if not all_ranks_finite(total, dist):
        return None
    total.backward()
    return total, terms


def clip_gradients(core: TrainModule, max_norm: float, dist: DistContext) -> torch.Tensor:
    """The global gradient norm (rank-local parameters' squares summed over ranks), clipped to max_norm when
    max_norm > 0 (as torch's clip_grad_norm_, which it equals without rank-local parameters)."""
    params = [p for p in core.parameters() if p.grad is not None]
    local_ids = {id(p) for p in core.sharded_parameters()}
    replicated = [p.grad for p in params if id(p) not in local_ids]
    norm = torch.nn.utils.get_total_norm(replicated) if replicated else torch.zeros(())
    local = [p.grad for p in params if id(p) in local_ids]
    if local:
        squares = torch.nn.utils.get_total_norm(local) ** 2
        if dist.world_size > 1:
            torch_dist.all_reduce(squares)
        norm = (norm.to(squares.device) ** 2 + squares).sqrt()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def train_step(module: nn.Module, optimizer: torch.optim.Optimizer, batches: dict | list[dict], cfg: TrainConfig,
               dist: DistContext) -> dict[str, float] | None:
    """One optimiser step over one batch or accum_freq micro-batches; None (parameters untouched) when the loss
    or the gradient norm is not finite."""
    batches = [batches] if isinstance(batches, dict) else batches
    optimizer.zero_grad(set_to_none=True)
    loss = forward_backward(module, batches, cfg, dist)
    if loss is None:
        return None
    (total, terms), core = loss, unwrap(module)
    grad_norm = clip_gradients(core, cfg.grad_clip_norm, dist)
    if not all_ranks_finite(grad_norm, dist):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    clamp_logit_scales(core)
    metrics = {"loss": total.item(), **{f"loss_{k}": v.item() for k, v in terms.items()},
               "grad_norm": grad_norm.item(), "logit_scale": core.model.logit_scale.exp().item(),
               **{k: float(v) for k, v in core.objectives.metrics().items()}}
    core.objectives.end_step()
    return metrics


def batch_stream(data: ShardData | pa.Table, cfg: TrainConfig, tokenizer: Callable, transform: Callable,
                 start_step: int, dist: DistContext) -> Iterator[dict]:
    """Endless training batches for this rank, starting at `start_step`.

    A table replays its seeded epochs exactly, so a resumed run sees the batches it would have seen.
    Shards restart their stream from a seed mixed with the resume step (open_clip likewise does not
    replay a WebDataset mid-epoch), so resumed steps see fresh, not repeated, samples.
    """
    fields, per_step = batch_fields(cfg), cfg.accum_freq  # micro-batches of batch_size per step
    if isinstance(data, pa.Table):
        per_epoch = steps_per_epoch(data.num_rows, cfg, dist.world_size) * per_step
        start = start_step * per_step
        for epoch in count(start // per_epoch):
            skip = start % per_epoch if epoch == start // per_epoch else 0
            yield from table_loader(data, cfg.batch_size, tokenizer, True, seed=cfg.seed * 100_003 + epoch,
                                    transform=transform, text_sampler=cfg.text_sampler, rank=dist.rank,
                                    world_size=dist.world_size, start_batch=skip, stop_batch=per_epoch,
                                    fields=fields)
        return
    total = steps_per_epoch(data.num_samples, cfg, dist.world_size) * cfg.epochs
    samples = (total - start_step) * per_step * cfg.batch_size * dist.world_size
    yield from shard_loader(data.urls, cfg.batch_size, samples, tokenizer, True, cfg.workers,
                            seed=cfg.seed * 100_003 + start_step, transform=transform, text_sampler=cfg.text_sampler,
                            shuffle_buffer=cfg.shuffle_buffer, rank=dist.rank, world_size=dist.world_size,
                            fields=fields)


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
    on_checkpoint: Callable[[str | None], None] | None


def setup(cfg: TrainConfig, data: ShardData | pa.Table, out_dir: str, log: Callable[[dict], None] | None,
          on_checkpoint: Callable[[str | None], None] | None) -> tuple[Run, Callable, Callable]:
    """Build the run: seeded model, objectives, optimiser, device and DDP; returns (run, tokenizer, transform)."""
    configure_threads()
    if cfg.accum_freq < 1:
        raise ValueError(f"accum_freq must be >= 1, got {cfg.accum_freq}")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    dist, device = DistContext.current(), resolve_device(cfg.device)
    model, _, tokenizer = create_model(cfg.model, context_length=cfg.context_length)
    transform = image_transform(model, True, cfg.crop_scale_min)
    core = TrainModule(model, WeightedObjectives(cfg, embed_dim(cfg.model)), dist).to(device)
    module: nn.Module = core
    if dist.world_size > 1:
        module = wrap_ddp(core, device, [f"objectives.{name}" for name in core.objectives.sharded()],
                          core.may_leave_parameters_unused())
    num_samples = data.num_rows if isinstance(data, pa.Table) else data.num_samples
    per_epoch = steps_per_epoch(num_samples, cfg, dist.world_size)
    run = Run(cfg, Path(out_dir), dist, module, core, make_optimizer(core, cfg), device, per_epoch,
              per_epoch * cfg.epochs, log, on_checkpoint)
    return run, tokenizer, transform


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
        prune_epoch_checkpoints(run.out, run.cfg.keep_epoch_checkpoints)
    if run.on_checkpoint is not None:  # on every rank: a collective hook (ray.train.report) needs them all
        run.on_checkpoint(path)


def after_step(run: Run, progress: Progress, lr: float, clock: dict[str, float]) -> None:
    """Metrics every log_every steps and at the end; a checkpoint at each epoch end and every checkpoint_every."""
    step, cfg = progress.step, run.cfg
    if step % cfg.log_every == 0 or step == run.total_steps:
        now = time.perf_counter()
        speed = (progress.samples_seen - clock["seen"]) / max(now - clock["last"], 1e-9)
        line = summarize(progress, step / run.per_epoch, lr, speed, run.dist,
                         run.device if run.device.type == "cuda" else None)  # NCCL reduces on the GPU
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


def progress_bar(run: Run, progress: Progress):  # noqa: ANN201 - tqdm or None
    """A tqdm bar over the steps on rank 0 when stderr is a terminal (tqdm ships with open_clip)."""
    if run.dist.rank != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=run.total_steps, initial=progress.step, unit="step", dynamic_ncols=True, file=sys.stderr)


def record(progress: Progress, metrics: dict[str, float] | None, cfg: TrainConfig) -> None:
    """Keep a step's metrics for the next metrics line, or count it as skipped (too many abort)."""
    if metrics is not None:
        progress.window.append(metrics)
        return
    progress.skipped += 1
    if progress.skipped > cfg.max_nonfinite_steps:
        raise NonFiniteLossError(
            f"{progress.skipped} steps had a non-finite loss or gradient "
            f"(max_nonfinite_steps={cfg.max_nonfinite_steps}); the last at step {progress.step}")


class BatchFeed:
    """Each step's accum_freq micro-batches, straight from the stream."""

    def __init__(self, stream: Iterator[dict], cfg: TrainConfig) -> None:
        self.stream, self.cfg = stream, cfg

    def take(self, step: int) -> list[dict]:
        return [next(self.stream) for _ in range(self.cfg.accum_freq)]


def episode_steps(cfg: TrainConfig, world_size: int) -> int:
    """Optimiser steps per ProtoCLIP episode: protoclip.episode_size samples over all ranks (at least one step)."""
    return max(1, cfg.protoclip.episode_size // (cfg.batch_size * world_size * cfg.accum_freq))


@torch.no_grad()
def episode_prototypes(run: Run, batches: list[dict], episode: int) -> Prototypes:
    """ProtoCLIP's feature extraction: this rank's episode batches encoded without gradients (model in eval
    mode), every rank's prototype-space features (and teacher features) clustered on rank 0 and shared."""
    core, cfg = run.core, run.cfg
    term = core.objectives.terms["protoclip"]
    was_training, features = core.model.training, []
    core.model.eval()
    try:
        for batch in batches:
            with autocast(cfg, run.device):
                out = core.encode(to_device({"image": batch["image"], "text": batch["text"]}, run.device))
            features.append(term.episode_features(out["image_features"], out["text_features"]))
    finally:
        core.model.train(was_training)
    collective = run.device if run.device.type == "cuda" else torch.device("cpu")
    image, text = (gather_numpy(np.concatenate(part), run.dist, collective) for part in zip(*features, strict=True))
    teacher = teacher_text_features(cfg.protoclip, [c for b in batches for c in b["caption"]], device=str(run.device))
    teacher = None if teacher is None else gather_numpy(teacher, run.dist, collective)
    fitted = fit_prototypes(image, text, cfg.protoclip, episode_seed(cfg.protoclip, episode), teacher) \
        if run.dist.rank == 0 else None
    return share_prototypes(fitted, run.dist, run.device if run.device.type == "cuda" else None)


class EpisodeFeed(BatchFeed):
    """ProtoCLIP's episodes (Chen et al. 2023) over the stream: at an episode's first step this rank's micro-
    batches of the whole episode are drawn and clustered (episode_prototypes); the episode's steps then train
    on them, each sample carrying `episode_index`, its position in the episode (rank-major across ranks).

    A table replays the same batches after a resume (they are seeded per batch), so a run resumed mid-episode
    keeps the checkpoint's prototypes and finishes the episode exactly; on shards, whose resumed stream holds
    fresh samples, the rest of the episode is clustered anew. Episode batches wait in host memory."""

    def __init__(self, stream: Iterator[dict], run: Run, replays: bool) -> None:
        super().__init__(stream, run.cfg)
        self.run, self.replays = run, replays
        self.length = episode_steps(run.cfg, run.dist.world_size)
        self.queue: list[dict] = []

    def take(self, step: int) -> list[dict]:
        if not self.queue:
            self.queue = self.start(step)
        taken, self.queue = self.queue[:self.cfg.accum_freq], self.queue[self.cfg.accum_freq:]
        return taken

    def start(self, step: int) -> list[dict]:
        """The micro-batches from `step` to the episode's end, with episode_index, prototypes set."""
        cfg, dist, term = self.cfg, self.run.dist, self.run.core.objectives.terms["protoclip"]
        first = step - step % self.length
        stop = min(first + self.length, self.run.total_steps)
        per_step = cfg.accum_freq * cfg.batch_size  # this rank's samples per step
        saved = term.prototypes
        keep = self.replays and step > first and saved is not None \
            and saved.num_samples == (stop - first) * per_step * dist.world_size
        first = first if keep else step
        batches = [next(self.stream) for _ in range((stop - step) * cfg.accum_freq)]
        if not keep:
            term.set_prototypes(episode_prototypes(self.run, batches, step // self.length))
        offset = dist.rank * (stop - first) * per_step + (step - first) * per_step
        for j, batch in enumerate(batches):
            batch["episode_index"] = torch.arange(cfg.batch_size) + offset + j * cfg.batch_size  # (B,)
        return batches


def make_feed(run: Run, stream: Iterator[dict], data: ShardData | pa.Table) -> BatchFeed:
    if "protoclip" in run.core.objectives.terms:
        return EpisodeFeed(stream, run, replays=isinstance(data, pa.Table))
    return BatchFeed(stream, run.cfg)


def run_steps(run: Run, progress: Progress, feed: BatchFeed) -> None:
    """Train from progress.step to the last step, skipping (and counting) non-finite steps."""
    cfg, clock = run.cfg, {"last": time.perf_counter(), "seen": float(progress.samples_seen)}
    peak_lr = optimizer_settings(cfg).lr  # TrainConfig.lr may be unset: the optimiser's default then
    bar = progress_bar(run, progress)
    try:
        while progress.step < run.total_steps:
            batches = [to_device(b, run.device) for b in feed.take(progress.step)]
            lr = cosine_lr(progress.step, peak_lr, cfg.warmup_steps, run.total_steps, cfg.min_lr_ratio)
            set_lr(run.optimizer, lr)
            metrics = train_step(run.module, run.optimizer, batches, cfg, run.dist)
            progress.step += 1
            progress.samples_seen += cfg.batch_size * run.dist.world_size * cfg.accum_freq
            record(progress, metrics, cfg)
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
    progress.samples_seen = start * cfg.batch_size * run.dist.world_size * cfg.accum_freq
    progress.history = read_history(run.out / "metrics.jsonl", start)
    if run.dist.rank == 0:
        (run.out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in progress.history))
    began = time.perf_counter()
    stream = batch_stream(data, cfg, tokenizer, transform, start, run.dist)
    try:
        run_steps(run, progress, make_feed(run, stream, data))
    finally:
        stream.close()  # stops the dataloader workers
    elapsed = time.perf_counter() - began
    final = str(run.out / "final.pt")
    if run.dist.rank == 0:
        save_atomic(model_state(run.core.model, cfg.model, progress.step // run.per_epoch, progress.step), final)
    last = progress.history[-1] if progress.history else {}
    speed = (progress.samples_seen - start * cfg.batch_size * run.dist.world_size * cfg.accum_freq) / elapsed \
        if progress.step > start \
        else float(last.get("samples_per_second", 0.0))
    return TrainResult(final, progress.step, progress.samples_seen, float(last.get("loss", math.nan)), speed,
                       progress.history, progress.skipped, dataclasses.asdict(optimizer_settings(cfg)))
