"""Optimisers (AdamW; Lion, Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), learning-rate
schedule and temperature clamp, as in open_clip's trainer."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from training.config import OptimConfig

MAX_LOGIT_SCALE = math.log(100)
"""CLIP clips the learned temperature so logits are scaled by at most 100 (Radford et al. 2021, sec. 2.5)."""


ADAMW_DEFAULTS = {"lr": 1e-3, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.98}
"""AdamW's defaults here: lr 1e-3 beat 2e-3 on the synthetic world at batch 128; wd 0.1 (open_clip uses 0.2 at
ViT-B scale); betas (0.9, 0.98) as CLIP and open_clip use for ViTs."""

LION_BETAS = (0.9, 0.99)
"""Lion's defaults (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Sec. 3 and Algorithm 2)."""

LION_LR_DIVISOR = 5.0
"""Lion's lr is AdamW's divided by this, and its weight decay AdamW's multiplied by it, when the user sets
neither: the paper (Sec. 5) asks for a 3-10x smaller lr and a 3-10x larger decoupled weight decay, so that
the effective decay lr x wd stays the same; 5 is inside that range."""


@dataclass(frozen=True)
class OptimizerSettings:
    """The values an optimiser is built with, after the optimiser's own defaults filled what the config left
    unset; the train manifest records them."""

    name: str
    lr: float
    weight_decay: float
    beta1: float
    beta2: float
    eps: float


def optimizer_settings(cfg: OptimConfig) -> OptimizerSettings:
    """The config's lr, weight_decay and betas, each None ("unset") replaced by the optimiser's default:
    AdamW's ADAMW_DEFAULTS; for Lion, AdamW's lr / LION_LR_DIVISOR, weight decay x LION_LR_DIVISOR and
    LION_BETAS."""
    lion_ = cfg.optimizer == "lion"
    lr = cfg.lr if cfg.lr is not None else ADAMW_DEFAULTS["lr"] / (LION_LR_DIVISOR if lion_ else 1.0)
    wd = cfg.weight_decay if cfg.weight_decay is not None else \
        ADAMW_DEFAULTS["weight_decay"] * (LION_LR_DIVISOR if lion_ else 1.0)
    beta1 = cfg.beta1 if cfg.beta1 is not None else (LION_BETAS[0] if lion_ else ADAMW_DEFAULTS["beta1"])
    beta2 = cfg.beta2 if cfg.beta2 is not None else (LION_BETAS[1] if lion_ else ADAMW_DEFAULTS["beta2"])
    return OptimizerSettings(cfg.optimizer, float(lr), float(wd), float(beta1), float(beta2), cfg.eps)


def exclude_from_decay(name: str, param: torch.Tensor) -> bool:
    """open_clip's rule: biases, norms (1-D gains), embeddings' 1-D vectors and the temperature get no decay."""
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weight matrices, and everything `exclude_from_decay` names."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if exclude_from_decay(name, param) else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def adamw(groups: list[dict], settings: OptimizerSettings) -> torch.optim.Optimizer:
    """AdamW; the fused kernel where torch has one for the device (CPU and CUDA)."""
    kwargs = {"lr": settings.lr, "betas": (settings.beta1, settings.beta2), "eps": settings.eps}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except RuntimeError:  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, **kwargs)


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, Algorithm 2): the update is the sign of an interpolation of the gradient and its
    momentum, with decoupled weight decay:

        c = beta1 m + (1 - beta1) g;  theta <- theta - lr (sign(c) + wd theta);  m <- beta2 m + (1 - beta2) g

    One state tensor per parameter ("exp_avg", the momentum m), half of AdamW's.
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),  # noqa: ANN001
                 weight_decay: float = 0.0) -> None:
        if lr < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid Lion lr {lr} or betas {betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), decay = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                momentum = state["exp_avg"]
                p.mul_(1 - lr * decay)
                p.add_(momentum.mul(beta1).add_(p.grad, alpha=1 - beta1).sign_(), alpha=-lr)
                momentum.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


def lion(groups: list[dict], settings: OptimizerSettings) -> torch.optim.Optimizer:
    """Lion with the settings' lr and betas, and each group's weight decay."""
    return Lion(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2))


OPTIMIZERS: dict[str, Callable[[list[dict], OptimizerSettings], torch.optim.Optimizer]] = {
    "adamw": adamw,
    "lion": lion,
}
"""Optimiser factories by OptimConfig.optimizer (`train.optim.optimizer`): `factory(param_groups, settings)`."""


def make_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The configured optimiser over `param_groups` (no decay on biases, norms and temperatures)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose from {sorted(OPTIMIZERS)}")
    settings = optimizer_settings(cfg)
    return OPTIMIZERS[cfg.optimizer](param_groups(module, settings.weight_decay), settings)


def cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warmup to base_lr over warmup_steps, then cosine decay to base_lr * min_ratio at total_steps."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def clamp_logit_scales(module: nn.Module, max_value: float = MAX_LOGIT_SCALE) -> None:
    """Clamp every learned log-temperature in `module` (the model's and the objectives', named *logit_scale)."""
    for name, param in module.named_parameters():
        if name.endswith("logit_scale"):
            param.clamp_(0, max_value)
