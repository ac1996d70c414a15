"""The `train` stage's configuration: one frozen dataclass, every field with its unit and reason."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """open_clip pretraining (CLIP, Radford et al. 2021; recipe after open_clip's trainer)."""

    model: str = "curaclip-vit-tiny"
    """open_clip model name, or the path of a JSON model config (its file stem becomes the name)."""
    epochs: int = 7
    """passes over the training samples; 7 x ~8k curated samples is ~5.5 min at ~170 samples/s on 2 CPU cores."""
    batch_size: int = 128
    """samples per step per rank (the contrastive batch is batch_size x world_size)."""
    lr: float = 1e-3
    """peak AdamW learning rate; on the synthetic world at batch 128, 1e-3 beat 2e-3 (lower loss, better recall)."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay on weight matrices only (open_clip's default 0.2 at ViT-B scale)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.98
    """AdamW beta2; 0.98 as in CLIP and open_clip for ViTs."""
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
    precision: str = "fp32"
    """"fp32" or "bf16" (autocast; meant for GPUs, where it is ~2x faster)."""
    device: str = "auto"
    """"auto" (cuda when available, else cpu), "cpu" or "cuda"."""
    objectives: tuple[str, ...] = ("clip",)
    """training terms, keys of training.losses.OBJECTIVES; the loss is their weighted sum."""
    objective_weights: tuple[float, ...] = ()
    """one weight per objective; empty means 1.0 for each."""
    text_sampler: str = "original"
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
