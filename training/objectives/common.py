"""What every objective module shares: fp32 loss maths, the column of each local row's positive, the base class
of objectives and the features plain contrastive objectives read.

An objective is a module `forward(out, batch, dist) -> scalar`, where `out` holds the model's outputs
("image_features", "text_features", ... all L2-normalised, and "logit_scale", already exponentiated; see
`TrainModule.encode` in training.loop) and `batch` is the loader's batch dict (every caption field and label).
Objectives with state (a classifier, running means, a temperature) keep it as parameters, buffers or extra
state; the loop optimises and checkpoints them. Optional hooks, with defaults in `Objective`: `reads` (the
`out` keys it needs, so the model computes only those), `attach(model)` (adapt to the model before training),
`end_step()` (commit per-step state once per optimiser step, not per micro-batch), `metrics` (detached
scalars for the metrics line), and `sharded` (rank-local parameters, e.g. MLCD's Partial-FC classifier).
"""

from __future__ import annotations

import torch
from torch import nn

from training.distributed import (
    RowShard,
)


def fp32(logits: torch.Tensor) -> torch.Tensor:
    """Softmax/sigmoid maths in at least fp32: under bf16 autocast the logits arrive in bf16."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def own_columns(rows: int, offset: int, device: torch.device) -> torch.Tensor:
    """(B,) column of each local row's positive in the global batch."""
    return torch.arange(rows, device=device) + offset


CONTRASTIVE_READS = frozenset({"image_features", "text_features", "logit_scale"})
"""What a plain image-text contrastive term reads from `out` (also assumed of objectives that do not say)."""


class Objective(nn.Module):
    """Defaults of the optional objective hooks (see the module docstring)."""

    reads: frozenset[str] = CONTRASTIVE_READS

    def attach(self, model: nn.Module) -> None:
        """Adapt to the model before training (nothing by default)."""

    def end_step(self) -> None:
        """Commit per-step state after an optimiser step (nothing by default)."""

    @property
    def metrics(self) -> dict[str, torch.Tensor]:
        """Detached scalars of the last forward for the metrics line (none by default)."""
        return getattr(self, "_metrics", {})

    def sharded(self) -> dict[str, RowShard]:
        """Rank-local parameters by name (none by default)."""
        return {}
