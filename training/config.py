"""The `train` stage's configuration: one frozen dataclass per component of a run, assembled by `TrainConfig`
(`train:` in YAML), every field with its unit and reason. Each objective that has settings of its own keeps its
nested config, defined beside that objective (training.objectives).

The components follow the code that reads them, so a function takes only the block it needs: `optim`
(training.optim), `schedule` (the step loop's length and learning-rate curve), `data` (training.data's loaders),
`distribution` (where and how each step runs: ranks, device, precision, micro-batches) and `progress`
(training.progress: metrics lines, checkpoints, the skipped-step budget). What a step trains on - the model, the
objectives and their settings, the seed - stays at the top.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from training.objectives.alip import ALIPConfig
from training.objectives.dreamlip import DreamLIPConfig
from training.objectives.mlcd import MLCDConfig
from training.objectives.negclip import NegCLIPConfig
from training.objectives.protoclip import ProtoCLIPConfig

ObjectiveName = Literal["clip", "siglip", "dcl", "negclip", "alip", "dreamlip", "mlcd", "protoclip"]
"""Objectives a config may name (the keys of training.objectives.LOSSES; a test keeps the two equal)."""


@dataclass(frozen=True)
class OptimConfig:
    """The optimiser (training.optim)."""

    optimizer: Literal["adamw", "lion"] = "adamw"
    """a key of training.optim.OPTIMIZERS: "adamw", or "lion" (Chen et al. 2023; wants a 3-10x lower lr and a 3-10x
    higher weight_decay than AdamW)."""
    lr: float | None = None
    """peak learning rate; None takes the optimiser's default (training.optim.optimizer_settings: AdamW 1e-3,
    which beat 2e-3 on the synthetic world at batch 128; Lion AdamW's / 5, as its paper advises)."""
    weight_decay: float | None = None
    """decoupled weight decay on weight matrices only; None takes the optimiser's default (AdamW 0.1, open_clip
    uses 0.2 at ViT-B scale; Lion AdamW's x 5, as its paper advises)."""
    beta1: float | None = None
    """AdamW beta1 / Lion's update interpolation beta1; None: 0.9 for both (CLIP; Lion's paper)."""
    beta2: float | None = None
    """AdamW beta2 / Lion's momentum decay; None: AdamW 0.98 (CLIP and open_clip for ViTs), Lion 0.99 (its
    paper)."""
    eps: float = 1e-6
    """AdamW epsilon (CLIP's value)."""
    grad_clip_norm: float = 1.0
    """global gradient-norm clip; <= 0 disables clipping."""


@dataclass(frozen=True)
class ScheduleConfig:
    """How long the run is and the learning rate's curve over it."""

    epochs: int = 7
    """passes over the training samples; 7 x ~8k curated samples is ~5.5 min at ~170 samples/s on 2 CPU cores."""
    warmup_steps: int = 50
    """linear warmup steps before the cosine decay (about 10% of the default run's ~450 steps)."""
    min_lr_ratio: float = 0.0
    """the cosine schedule ends at lr x min_lr_ratio."""


@dataclass(frozen=True)
class DataConfig:
    """What the loaders build each step from (training.data)."""

    batch_size: int = 128
    """samples per step per rank (the contrastive batch is batch_size x world_size)."""
    context_length: int = 32
    """tokens per caption; the model's text tower is built with this length when its config differs."""
    workers: int = 1
    """dataloader worker processes decoding shards (0 decodes in the training process)."""
    shuffle_buffer: int = 2000
    """samples in the WebDataset shuffle buffer (shard order is shuffled too)."""
    crop_scale_min: float = 0.8
    """RandomResizedCrop lower area bound; the crop keeps between this and all of the image."""
    text_sampler: Literal["original", "laclip"] = "original"
    """which caption each step trains on, a key of training.data.TEXT_SAMPLERS ("laclip": LaCLIP)."""


@dataclass(frozen=True)
class DistConfig:
    """Where and how each step runs: ranks and GPUs (tasks.executors.ray_train), device, precision, micro-batches."""

    ranks: int = 1
    """data-parallel ranks (Ray Train workers); each reads its own part of the data."""
    gpus_per_rank: float = 0.0
    """GPUs each rank holds (0 trains on CPUs with gloo; > 0 uses CUDA and NCCL)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """"auto" (cuda when available, else cpu), "cpu" or "cuda"."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """"fp32" or "bf16" (autocast; meant for GPUs, where it is ~2x faster)."""
    accum_freq: int = 1
    """micro-batches of data.batch_size per optimiser step, accumulated with open_clip's feature cache, so the
    gradient equals that of one batch of batch_size x accum_freq."""


@dataclass(frozen=True)
class ProgressConfig:
    """What the run records and tolerates as it goes (training.progress): metrics lines, resumable checkpoints,
    skipped steps. One block rather than a `checkpoint` one, because the metrics cadence and the skipped-step
    budget are kept by the same bookkeeping."""

    checkpoint_every: int = 200
    """steps between resumable checkpoints (checkpoints/latest.pt); epoch ends always checkpoint."""
    keep_epoch_checkpoints: int = 2
    """most recent checkpoints/epoch_<n>.pt kept (each holds the optimiser state, ~3x the model)."""
    log_every: int = 10
    """steps between metrics.jsonl lines."""
    max_nonfinite_steps: int = 20
    """skipped steps (non-finite loss or gradient) tolerated before training aborts."""


def _plain_clip() -> dict[ObjectiveName, float]:
    return {"clip": 1.0}


@dataclass(frozen=True)
class TrainConfig:
    """open_clip pretraining (CLIP, Radford et al. 2021; recipe after open_clip's trainer)."""

    model: str = "curaclip-vit-tiny"
    """open_clip model name, or the path of a JSON model config (its file stem becomes the name)."""
    seed: int = 0
    """seeds model init, shard order, shuffling, augmentation and caption sampling."""
    objectives: dict[ObjectiveName, float] = field(default_factory=_plain_clip)
    """training terms and their weights, keys of training.objectives.LOSSES; the loss is their weighted sum ("alip"
    replaces "clip"). In YAML a list of names means weight 1.0 each. Kept in ObjectiveName's order whatever order
    they are written in: the terms are built in that order (it sets their initialisation), and the artifact key,
    which hashes the mapping with sorted keys, must not let two orders share one key."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """the optimiser and its settings."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """epochs, warmup and the cosine decay."""
    data: DataConfig = field(default_factory=DataConfig)
    """batch, captions and loaders."""
    distribution: DistConfig = field(default_factory=DistConfig)
    """ranks, GPUs, device, precision and accumulation."""
    progress: ProgressConfig = field(default_factory=ProgressConfig)
    """metrics, checkpoints and the skipped-step budget."""
    alip: ALIPConfig = field(default_factory=ALIPConfig)
    """settings of the "alip" objective."""
    dreamlip: DreamLIPConfig = field(default_factory=DreamLIPConfig)
    """settings of the "dreamlip" objective."""
    negclip: NegCLIPConfig = field(default_factory=NegCLIPConfig)
    """settings of the "negclip" objective."""
    mlcd: MLCDConfig = field(default_factory=MLCDConfig)
    """settings of the "mlcd" objective."""
    protoclip: ProtoCLIPConfig = field(default_factory=ProtoCLIPConfig)
    """settings of the "protoclip" objective and its episodes (training.objectives.protoclip)."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        **{name: f"optim.{name}" for name in ("optimizer", "lr", "weight_decay", "beta1", "beta2", "eps",
                                              "grad_clip_norm")},
        **{name: f"schedule.{name}" for name in ("epochs", "warmup_steps", "min_lr_ratio")},
        **{name: f"data.{name}" for name in ("batch_size", "context_length", "workers", "shuffle_buffer",
                                             "crop_scale_min", "text_sampler")},
        **{name: f"distribution.{name}" for name in ("ranks", "gpus_per_rank", "device", "precision", "accum_freq")},
        **{name: f"progress.{name}" for name in ("checkpoint_every", "keep_epoch_checkpoints", "log_every",
                                                 "max_nonfinite_steps")},
        "objective_weights": "objectives, which maps each objective to its weight ({clip: 1.0, mlcd: 0.5})",
    }
    """Keys of the flat TrainConfig that moved into a component: old key -> its new path below `train`; a config
    naming an old key is an error saying where it went (flows.config.from_dict reads this)."""

    def __post_init__(self) -> None:
        order = {name: i for i, name in enumerate(typing.get_args(ObjectiveName))}
        ordered = dict(sorted(self.objectives.items(), key=lambda item: order.get(item[0], len(order))))
        object.__setattr__(self, "objectives", ordered)
