"""One optimiser step: forward, backward (accumulated over micro-batches), gradient clip, update.

A step whose loss or gradient norm is not finite on any rank leaves the parameters untouched (`train_step`
returns None; the driver counts it). With accum_freq > 1 a step is open_clip's feature-cached accumulation: a
no-grad forward of every micro-batch caches its features, then each micro-batch is re-encoded with gradients and
spliced into the cached global features, so the gradient equals that of the whole accumulated batch.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as torch_dist
from torch import nn

from training.config import TrainConfig
from training.data import TEXT_INPUTS
from training.distributed import DistContext, all_ranks_finite
from training.models import unwrap
from training.module import FeatureCache, TrainModule
from training.optim import clamp_logit_scales


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


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.distribution.precision == "bf16")


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
    grad_norm = clip_gradients(core, cfg.optim.grad_clip_norm, dist)
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
