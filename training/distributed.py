"""Data-parallel plumbing shared by the training loop and the objectives: the rank context, feature gathers that
carry gradients back to each rank, rows of a parameter sharded across ranks (MLCD's Partial-FC classifier), the
device of a rank and the DDP wrapper. Free of the objectives and the loop, so both can import it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """This process's place in data-parallel training."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DistContext:
        """From torch.distributed when a process group is up (Ray Train / torchrun), else a single process."""
        if torch_dist.is_available() and torch_dist.is_initialized():
            return cls(torch_dist.get_rank(), torch_dist.get_world_size())
        return cls()


def gather_features(x: torch.Tensor, dist: DistContext) -> torch.Tensor:
    """(world_size * B, ...) features of the global batch, rank-major; gradients flow back to each rank."""
    if dist.world_size == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


@torch.no_grad()
def gather_detached(x: torch.Tensor, dist: DistContext) -> torch.Tensor:
    """All ranks' `x` (labels, masks) concatenated rank-major, without gradients."""
    if dist.world_size == 1:
        return x
    flat = x.to(torch.int64) if x.dtype == torch.bool else x
    parts = [torch.empty_like(flat) for _ in range(dist.world_size)]
    torch_dist.all_gather(parts, flat.contiguous())
    out = torch.cat(parts, dim=0)
    return out.bool() if x.dtype == torch.bool else out


def local_rows(x: torch.Tensor, dist: DistContext) -> tuple[torch.Tensor, int]:
    """(x gathered over ranks, offset of this rank's rows in it)."""
    return gather_features(x, dist), dist.rank * x.shape[0]


@dataclass(frozen=True)
class RowShard:
    """Rows [start, stop) of a parameter whose full height is `total`, held by this rank."""

    start: int
    stop: int
    total: int


def shard_range(total: int, rank: int, world_size: int) -> RowShard:
    """This rank's contiguous rows when `total` rows are split as evenly as possible."""
    return RowShard(rank * total // world_size, (rank + 1) * total // world_size, total)


INIT_CHUNK_ROWS = 4096
"""Rows drawn per seeded chunk, so a shard's initial rows are the same whatever the number of ranks."""


def init_rows(shard: RowShard, dim: int, seed: int, std: float = 0.01) -> torch.Tensor:
    """Rows [start, stop) of a normal(0, std) (total, dim) matrix (Partial FC's init), without building it all."""
    first, last = shard.start // INIT_CHUNK_ROWS, max(shard.start, shard.stop - 1) // INIT_CHUNK_ROWS
    chunks = []
    for chunk in range(first, last + 1):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0]))
        rows = min(INIT_CHUNK_ROWS, shard.total - chunk * INIT_CHUNK_ROWS)
        chunks.append(torch.randn(rows, dim, generator=g) * std)
    block = torch.cat(chunks)
    return block[shard.start - first * INIT_CHUNK_ROWS: shard.stop - first * INIT_CHUNK_ROWS].clone()


class ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient multiplied by `factor` on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # noqa: ANN001 - autograd's ctx
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return grad * ctx.factor, None




def resolve_device(name: str) -> torch.device:
    """"auto" -> this rank's GPU (LOCAL_RANK) when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":  # one GPU per rank; Ray Train and torchrun set LOCAL_RANK
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % max(1, torch.cuda.device_count()))
    return torch.device(name)


def all_ranks_finite(value: torch.Tensor, dist: DistContext) -> bool:
    """True when `value` is finite on every rank, so all ranks skip a step together."""
    flag = torch.isfinite(value.detach()).all().float().reshape(1)
    if dist.world_size > 1:
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def gather_numpy(x: np.ndarray, dist: DistContext, device: torch.device) -> np.ndarray:
    """Every rank's equally shaped rows, rank-major (through `device`, the collective backend's)."""
    if dist.world_size == 1:
        return x
    rows = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    parts = [torch.empty_like(rows) for _ in range(dist.world_size)]
    torch_dist.all_gather(parts, rows)
    return torch.cat(parts).cpu().numpy()


def wrap_ddp(core: nn.Module, device: torch.device, local: list[str], find_unused: bool) -> nn.Module:
    """DDP over the module, leaving out the rank-local parameters named in `local` (each rank holds different
    rows); `find_unused` when some step leaves parameters without a gradient."""
    if local:
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(core, local)
    return nn.parallel.DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=find_unused)
