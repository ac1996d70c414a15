"""What the training driver (training.loop.setup) builds once and the rest of a run reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from training.config import TrainConfig
from training.distributed import DistContext
from training.module import TrainModule


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
