"""Training throughput of a model config: samples/s of full optimiser steps on random data, no data loading.

    python -m training.throughput --model curaclip-vit-tiny --batch-size 128 --steps 8

Reports wall-clock samples/s (median step) and a CPU-time estimate (batch / (process CPU seconds per step /
threads)), which stays close to the uncontended figure when other processes share the cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from training.config import TrainConfig
from training.loop import TrainModule, configure_threads, train_step
from training.losses import DistContext, WeightedObjectives
from training.models import create_model, embed_dim
from training.optim import make_optimizer


def random_batch(model: torch.nn.Module, batch_size: int, seed: int) -> dict:
    """Images and token ids of the model's shapes (full-length captions: the text tower's worst case)."""
    g = torch.Generator().manual_seed(seed)
    size = model.visual.image_size
    context = model.context_length
    return {"image": torch.randn(batch_size, 3, *size, generator=g),
            "text": torch.randint(1, 49407, (batch_size, context), generator=g)}


def measure_throughput(cfg: TrainConfig, steps: int = 8, warmup: int = 2) -> dict[str, float]:
    """Median samples/s over `steps` optimiser steps after `warmup` steps, with the training loop's step."""
    threads = configure_threads()
    torch.manual_seed(cfg.seed)
    model, _, _ = create_model(cfg.model, context_length=cfg.context_length)
    module = TrainModule(model, WeightedObjectives(cfg, embed_dim(cfg.model)), DistContext())
    optimizer = make_optimizer(module, cfg)
    batch = random_batch(model, cfg.batch_size, cfg.seed)
    wall, cpu = [], []
    for i in range(warmup + steps):
        w0, c0 = time.perf_counter(), time.process_time()
        train_step(module, optimizer, batch, cfg, DistContext())
        if i >= warmup:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": cfg.model, "batch_size": cfg.batch_size, "threads": threads, "params_millions": params / 1e6,
        "samples_per_second": cfg.batch_size / statistics.median(wall),
        "samples_per_second_best": cfg.batch_size / min(wall),
        "samples_per_second_cpu_time": cfg.batch_size * threads / statistics.median(cpu),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=TrainConfig().model)
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    cfg = replace(TrainConfig(), model=args.model, batch_size=args.batch_size, precision=args.precision)
    print(json.dumps(measure_throughput(cfg, args.steps)))


if __name__ == "__main__":
    main()
