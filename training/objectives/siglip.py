"""SigLIP: Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training". Each pair is a binary problem,
z_ij = +1 on the diagonal and -1 elsewhere: L = -1/|B| sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.distributed import (
    DistContext,
    gather_features,
)
from training.objectives.common import Objective, fp32


def siglip_loss_gathered(image_features: torch.Tensor, all_text: torch.Tensor, logit_scale: torch.Tensor,
                         logit_bias: torch.Tensor, offset: int) -> torch.Tensor:
    """SigLIP over local image rows (B, D) x global texts (N, D): -sum log sigmoid(z_ij (t x_i.y_j + b)) / B.

    Averaged over ranks this is the paper's loss over the global batch (each pair is counted once)."""
    logits = fp32(logit_scale * image_features @ all_text.T + logit_bias)  # (B, N)
    signs = -torch.ones_like(logits)  # z_ij: +1 on each row's own pair, -1 elsewhere
    rows = torch.arange(logits.shape[0], device=logits.device)
    signs[rows, rows + offset] = 1.0
    return -F.logsigmoid(signs * logits).sum() / logits.shape[0]


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP: -sum of log sigmoid(z_ij (t x_i.y_j + b)) over all (B, B) pairs, divided by the batch size B."""
    return siglip_loss_gathered(image_features, text_features, logit_scale, logit_bias, 0)


SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)


SIGLIP_INIT_LOGIT_BIAS = -10.0
"""SigLIP's initialisation, t' = log 10 and b = -10 (Zhai et al. 2023, sec. 3.2): with b = -10 the many
negatives start near their target, so early steps are not spent pushing them down."""


class SigLIPObjective(Objective):
    """SigLIP's sigmoid loss. A SigLIP model (open_clip's `logit_bias`) uses its own scale and bias; for a CLIP
    model the objective learns its own temperature and bias, initialised as in the SigLIP paper."""

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(SIGLIP_INIT_LOGIT_SCALE))
        self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_INIT_LOGIT_BIAS))
        self.reads = frozenset({"image_features", "text_features"})

    def attach(self, model: nn.Module) -> None:
        if getattr(model, "logit_bias", None) is not None:
            self.register_parameter("logit_scale", None)
            self.register_parameter("logit_bias", None)
            self.reads = frozenset({"image_features", "text_features", "logit_scale", "logit_bias"})

    def forward(self, out: dict[str, torch.Tensor], batch: dict, dist: DistContext) -> torch.Tensor:
        scale = out["logit_scale"] if self.logit_scale is None else self.logit_scale.exp()
        bias = out["logit_bias"] if self.logit_bias is None else self.logit_bias
        image = out["image_features"]
        return siglip_loss_gathered(image, gather_features(out["text_features"], dist), scale, bias,
                                    dist.rank * image.shape[0])
