"""Checkpoints in open_clip's format, written atomically, with what a resumed run needs.

A checkpoint is a dict whose "state_dict" is the bare model's (no "module." prefix), so
`open_clip.create_model_and_transforms(name, pretrained=path)` loads it; beside it: "epoch" (completed
epochs, as open_clip counts), "name", "optimizer", and our resume state ("step", "objectives",
"rng", "skipped_steps", "config"). Every value is a tensor or plain Python, so torch.load with
weights_only=True reads it. `checkpoints/latest.json` names the newest checkpoint for resume.
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
from torch import nn

from training.config import TrainConfig

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"


def model_state(model: nn.Module, name: str, epoch: int, step: int) -> dict[str, Any]:
    """What plain open_clip needs: the bare model's state dict, and where in training it was taken."""
    return {"name": name, "epoch": epoch, "step": step, "state_dict": model.state_dict()}


def training_state(model: nn.Module, objectives: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   epoch: int, step: int, skipped_steps: int) -> dict[str, Any]:
    """A full resumable checkpoint (model, objectives, optimiser, RNG states, counters, config)."""
    return {
        **model_state(model, cfg.model, epoch, step),
        "objectives": objectives.state_dict(),
        "optimizer": optimizer.state_dict(),
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
    """torch.save to a temporary name, then rename: a crash never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
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
