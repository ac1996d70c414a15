"""The `train` stage's configuration: one frozen dataclass, every field with its unit and reason, with one nested
frozen dataclass per objective that has settings of its own, defined beside that objective (training.objectives)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from training.objectives.alip import ALIPConfig
from training.objectives.dreamlip import DreamLIPConfig
from training.objectives.mlcd import MLCDConfig
from training.objectives.negclip import NegCLIPConfig
from training.objectives.protoclip import ProtoCLIPConfig

ObjectiveName = Literal["clip", "siglip", "dcl", "negclip", "alip", "dreamlip", "mlcd", "protoclip"]
"""Objectives a config may name (the keys of training.objectives.LOSSES; a test keeps the two equal)."""


@dataclass(frozen=True)
class TrainConfig:
    """open_clip pretraining (CLIP, Radford et al. 2021; recipe after open_clip's trainer)."""

    model: str = "curaclip-vit-tiny"
    """open_clip model name, or the path of a JSON model config (its file stem becomes the name)."""
    epochs: int = 7
    """passes over the training samples; 7 x ~8k curated samples is ~5.5 min at ~170 samples/s on 2 CPU cores."""
    batch_size: int = 128
    """samples per step per rank (the contrastive batch is batch_size x world_size)."""
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
    warmup_steps: int = 50
    """linear warmup steps before the cosine decay (about 10% of the default run's ~450 steps)."""
    min_lr_ratio: float = 0.0
    """the cosine schedule ends at lr x min_lr_ratio."""
    grad_clip_norm: float = 1.0
    """global gradient-norm clip; <= 0 disables clipping."""
    context_length: int = 32
    """tokens per caption; the model's text tower is built with this length when its config differs."""
    workers: int = 1
    """dataloader worker processes decoding shards (0 decodes in the training process)."""
    seed: int = 0
    """seeds model init, shard order, shuffling, augmentation and caption sampling."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """"fp32" or "bf16" (autocast; meant for GPUs, where it is ~2x faster)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """"auto" (cuda when available, else cpu), "cpu" or "cuda"."""
    objectives: tuple[ObjectiveName, ...] = ("clip",)
    """training terms, keys of training.objectives.LOSSES; the loss is their weighted sum ("alip" replaces "clip")."""
    objective_weights: tuple[float, ...] = ()
    """one weight per objective; empty means 1.0 for each."""
    text_sampler: Literal["original", "laclip"] = "original"
    """which caption each step trains on, a key of training.data.TEXT_SAMPLERS ("laclip": LaCLIP)."""
    checkpoint_every: int = 200
    """steps between resumable checkpoints (checkpoints/latest.pt); epoch ends always checkpoint."""
    keep_epoch_checkpoints: int = 2
    """most recent checkpoints/epoch_<n>.pt kept (each holds the optimiser state, ~3x the model)."""
    log_every: int = 10
    """steps between metrics.jsonl lines."""
    max_nonfinite_steps: int = 20
    """skipped steps (non-finite loss or gradient) tolerated before training aborts."""
    shuffle_buffer: int = 2000
    """samples in the WebDataset shuffle buffer (shard order is shuffled too)."""
    crop_scale_min: float = 0.8
    """RandomResizedCrop lower area bound; the crop keeps between this and all of the image."""
    ranks: int = 1
    """data-parallel ranks (Ray Train workers); each reads its own part of the data."""
    gpus_per_rank: float = 0.0
    """GPUs each rank holds (0 trains on CPUs with gloo; > 0 uses CUDA and NCCL)."""
    accum_freq: int = 1
    """micro-batches of batch_size per optimiser step, accumulated with open_clip's feature cache, so the gradient
    equals that of one batch of batch_size x accum_freq."""
    optimizer: Literal["adamw", "lion"] = "adamw"
    """a key of training.optim.OPTIMIZERS: "adamw", or "lion" (Chen et al. 2023; wants a 3-10x lower lr and a 3-10x
    higher weight_decay than AdamW)."""
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
