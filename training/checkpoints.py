"""Checkpoints in open_clip's format, written atomically, with what a resumed run needs.

A checkpoint is a dict whose "state_dict" is the bare model's (no "module." prefix), so
`open_clip.create_model_and_transforms(name, pretrained=path)` loads it; beside it: "epoch" (completed
epochs, as open_clip counts), "name", "optimizer", and our resume state ("step", "objectives",
"rng", "skipped_steps", "config"). Every value is a tensor or plain Python, so torch.load with
weights_only=True reads it. `checkpoints/latest.json` names the newest checkpoint for resume.

Rank-local parameters (MLCD's Partial-FC classifier rows) and their optimiser state are saved whole: every
rank's rows are gathered into rank 0's checkpoint, and each rank takes its rows back on load, so a checkpoint
resumes on any number of ranks.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from training.config import TrainConfig
from training.distributed import DistContext, RowShard, shard_range

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"


def model_state(model: nn.Module, name: str, epoch: int, step: int) -> dict[str, Any]:
    """What plain open_clip needs: the bare model's state dict, and where in training it was taken."""
    return {"name": name, "epoch": epoch, "step": step, "state_dict": model.state_dict()}


def training_state(model: nn.Module, objectives: nn.Module | dict, optimizer: torch.optim.Optimizer | dict,
                   cfg: TrainConfig, epoch: int, step: int, skipped_steps: int) -> dict[str, Any]:
    """A full resumable checkpoint (model, objectives, optimiser, RNG states, counters, config); objectives and
    optimizer are modules or their (gathered) state dicts."""
    return {
        **model_state(model, cfg.model, epoch, step),
        "objectives": objectives.state_dict() if isinstance(objectives, nn.Module) else objectives,
        "optimizer": optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer,
        "rng": capture_rng(),
        "skipped_steps": skipped_steps,
        "config": asdict(cfg),
    }


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(state: dict[str, Any], path: str | Path) -> str:
    """torch.save to a temporary name, then rename: a crash never leaves a truncated checkpoint, and a save that
    raised leaves no temporary file holding the disk's space. It writes through a Python file, so a full disk is
    an ``OSError`` (ENOSPC) in the error's context (torch's own file writer reports only "file write failed")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(path)


def write_checkpoint(out_dir: str | Path, filename: str, state: dict[str, Any]) -> str:
    """Save under out_dir/checkpoints and record it as the one to resume from."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    path = save_atomic(state, folder / filename)
    latest = {"path": filename, "step": int(state["step"]), "epoch": int(state["epoch"])}
    tmp = folder / (LATEST + ".tmp")
    tmp.write_text(json.dumps(latest))
    os.replace(tmp, folder / LATEST)
    return path


def latest_checkpoint(out_dir: str | Path) -> str | None:
    """The newest resumable checkpoint of a run folder, or None."""
    marker = Path(out_dir) / CHECKPOINT_DIR / LATEST
    if not marker.exists():
        return None
    path = marker.parent / json.loads(marker.read_text())["path"]
    return str(path) if path.exists() else None


def checkpoint_step(out_dir: str | Path) -> int:
    """Step of the run folder's newest checkpoint; -1 when it has none."""
    marker = Path(out_dir) / CHECKPOINT_DIR / LATEST
    return int(json.loads(marker.read_text())["step"]) if marker.exists() else -1


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def prune_epoch_checkpoints(out_dir: str | Path, keep: int) -> list[str]:
    """Delete all but the `keep` newest epoch_<n>.pt (never the one latest.json names); returns the deleted."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    found = [(int(m.group(1)), p) for p in folder.glob("epoch_*.pt") if (m := re.fullmatch(r"epoch_(\d+)\.pt", p.name))]
    protected = latest_checkpoint(out_dir)
    doomed = [p for _, p in sorted(found)[:max(0, len(found) - max(keep, 0))] if str(p) != protected]
    for p in doomed:
        p.unlink()
    return [str(p) for p in doomed]


# --- rank-local (sharded) parameters ----------------------------------------------------------------

def gather_rows(rows: torch.Tensor, shard: RowShard, dist: DistContext) -> torch.Tensor | None:
    """The full (total, ...) tensor on rank 0 from every rank's rows of it; None on the other ranks."""
    if dist.world_size == 1:
        return rows
    shards = [shard_range(shard.total, r, dist.world_size) for r in range(dist.world_size)]
    height = max(s.stop - s.start for s in shards)
    padded = rows.new_zeros((height, *rows.shape[1:]))
    padded[:rows.shape[0]] = rows.detach()
    parts = [torch.empty_like(padded) for _ in shards] if dist.rank == 0 else None
    torch_dist.gather(padded, parts, dst=0)
    if parts is None:
        return None
    return torch.cat([part[:s.stop - s.start] for part, s in zip(parts, shards, strict=True)])


def optimizer_slots(optimizer: torch.optim.Optimizer, params: dict[str, nn.Parameter]) -> dict[str, int]:
    """Each named parameter's index in optimizer.state_dict()["state"]."""
    order = {id(p): i for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
    return {name: order[id(p)] for name, p in params.items() if id(p) in order}


def _sharded_tensor(value: Any, rows: int) -> bool:
    return torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == rows


def gather_sharded_state(objectives: nn.Module, optimizer: torch.optim.Optimizer, shards: dict[str, RowShard],
                         dist: DistContext) -> tuple[dict, dict]:
    """(objectives state, optimiser state) with every sharded parameter and its optimiser moments whole on
    rank 0. Collective: every rank must call it."""
    obj_state, opt_state = objectives.state_dict(), optimizer.state_dict()
    slots = optimizer_slots(optimizer, {n: objectives.get_parameter(n) for n in shards})
    for name, shard in shards.items():
        obj_state[name] = gather_rows(obj_state[name], shard, dist)
        if name not in slots or slots[name] not in opt_state["state"]:
            continue
        slot = dict(opt_state["state"][slots[name]])  # a copy: the packed state shares the live optimiser's dicts
        for key, value in sorted(slot.items()):
            if _sharded_tensor(value, shard.stop - shard.start):
                slot[key] = gather_rows(value, shard, dist)
        opt_state["state"][slots[name]] = slot
    return obj_state, opt_state


def slice_sharded_optimizer_state(opt_state: dict, optimizer: torch.optim.Optimizer, objectives: nn.Module,
                                  shards: dict[str, RowShard]) -> dict:
    """A saved optimiser state with whole sharded moments cut to this rank's rows (a no-op on one rank)."""
    slots = optimizer_slots(optimizer, {n: objectives.get_parameter(n) for n in shards})
    for name, shard in shards.items():
        slot = opt_state["state"].get(slots.get(name, -1))
        if slot is None:
            continue
        for key, value in slot.items():
            if _sharded_tensor(value, shard.total):
                slot[key] = value[shard.start:shard.stop]
    return opt_state
