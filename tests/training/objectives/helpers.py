"""Helpers shared by the objective tests: features, and the scalar maths the formulas are written out in."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_unit(*shape: int, seed: int) -> torch.Tensor:
    """Random L2-normalised float64 features of `shape` (rows along the last axis), seeded."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def features(*shape: int, seed: int) -> torch.Tensor:
    return normalise(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))


def log_sigmoid(v: float) -> float:
    return -math.log1p(math.exp(-v))


def lse(values) -> float:
    return math.log(sum(math.exp(v) for v in values))


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b)


def random_outputs(seed: int) -> dict[str, torch.Tensor]:
    """A model's `out` for 5 samples of 4 dimensions: image and text features and the CLIP scale."""
    g = torch.Generator().manual_seed(seed)
    return {"image_features": normalise(torch.randn(5, 4, generator=g)),
            "text_features": normalise(torch.randn(5, 4, generator=g)), "logit_scale": torch.tensor(10.0)}
