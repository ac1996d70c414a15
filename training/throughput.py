"""Training throughput of a model config: samples/s of full optimiser steps on random data, no data loading.

    python -m training.throughput --model curaclip-vit-tiny --batch-size 128 --steps 8
    python -m training.throughput --objectives clip,dreamlip --steps 8
    python -m training.throughput --objectives mlcd --num-centers 100000

Reports wall-clock samples/s (median step) and a CPU-time estimate (batch / (process CPU seconds per step /
threads)), which stays close to the uncontended figure when other processes share the cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from training.config import DataConfig, DistConfig, TrainConfig
from training.data import NO_FIELDS, BatchFields, batch_fields
from training.distributed import DistContext
from training.loop import configure_threads
from training.models import create_model, embed_dim
from training.module import TrainModule
from training.objectives import WeightedObjectives
from training.objectives.mlcd import MLCDConfig
from training.objectives.protoclip import fit_prototypes
from training.optim import make_optimizer
from training.step import train_step


def random_batch(model: torch.nn.Module, batch_size: int, seed: int, fields: BatchFields = NO_FIELDS,
                 num_centers: int = 1) -> dict:
    """Images and token ids of the model's shapes (full-length captions: the text tower's worst case), and the
    objectives' extra inputs `fields` asks for (distinct sub-captions, real negatives, labels < num_centers)."""
    g = torch.Generator().manual_seed(seed)
    size, context = model.visual.image_size, model.context_length

    def tokens(rows: int) -> torch.Tensor:
        return torch.randint(1, 49407, (rows, context), generator=g)

    batch = {"image": torch.randn(batch_size, 3, *size, generator=g), "text": tokens(batch_size)}
    if fields.synthetic:
        batch["synthetic_text"] = tokens(batch_size)
    if fields.num_subcaptions:
        batch["subcaption_text"] = tokens(batch_size * fields.num_subcaptions)
        batch["subcaption_ids"] = torch.arange(fields.num_subcaptions).repeat(batch_size, 1)
    if fields.negatives:  # NegCLIP draws one negative per caption
        batch["negative_text"] = tokens(batch_size)
        batch["negative_mask"] = torch.ones(batch_size, 1, dtype=torch.bool)
    if fields.num_labels:
        batch["cluster_label_ids"] = torch.randint(0, num_centers, (batch_size, fields.num_labels), generator=g)
    return batch


@torch.no_grad()
def set_batch_prototypes(module: TrainModule, batch: dict, cfg: TrainConfig) -> None:
    """ProtoCLIP's training step needs an episode: the batch itself, clustered (the per-episode extraction and
    k-means are not timed; they add one no-grad forward per sample and a k-means per episode)."""
    term = module.objectives.terms["protoclip"]
    out = module.encode(batch)
    image, text = term.episode_features(out["image_features"], out["text_features"])
    term.set_prototypes(fit_prototypes(image, text, cfg.protoclip, seed=cfg.seed))
    batch["episode_index"] = torch.arange(cfg.data.batch_size)


def measure_throughput(cfg: TrainConfig, steps: int = 8, warmup: int = 2) -> dict[str, float]:
    """Median samples/s over `steps` optimiser steps after `warmup` steps, with the training loop's step."""
    threads = configure_threads()
    torch.manual_seed(cfg.seed)
    model, _, _ = create_model(cfg.model, context_length=cfg.data.context_length)
    module = TrainModule(model, WeightedObjectives(cfg, embed_dim(cfg.model)), DistContext())
    optimizer = make_optimizer(module, cfg.optim)
    batch = random_batch(model, cfg.data.batch_size, cfg.seed, batch_fields(cfg), cfg.mlcd.num_centers or 1)
    if "protoclip" in module.objectives.terms:
        set_batch_prototypes(module, batch, cfg)
    wall, cpu = [], []
    for i in range(warmup + steps):
        w0, c0 = time.perf_counter(), time.process_time()
        train_step(module, optimizer, [batch] * cfg.distribution.accum_freq, cfg, DistContext())
        if i >= warmup:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    params = sum(p.numel() for p in model.parameters())
    samples = cfg.data.batch_size * cfg.distribution.accum_freq
    return {
        "model": cfg.model, "batch_size": cfg.data.batch_size, "threads": threads, "params_millions": params / 1e6,
        "objectives": list(cfg.objectives), "accum_freq": cfg.distribution.accum_freq,
        "samples_per_second": samples / statistics.median(wall),
        "samples_per_second_best": samples / min(wall),
        "samples_per_second_cpu_time": samples * threads / statistics.median(cpu),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=TrainConfig().model)
    parser.add_argument("--batch-size", type=int, default=TrainConfig().data.batch_size)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--objectives", default="clip", help="comma-separated keys of training.objectives.LOSSES")
    parser.add_argument("--num-centers", type=int, default=None, help="MLCD classifier rows (for mlcd)")
    parser.add_argument("--accum-freq", type=int, default=1)
    args = parser.parse_args()
    cfg = TrainConfig(model=args.model, objectives=dict.fromkeys(args.objectives.split(","), 1.0),
                      data=DataConfig(batch_size=args.batch_size),
                      distribution=DistConfig(precision=args.precision, accum_freq=args.accum_freq),
                      mlcd=MLCDConfig(num_centers=args.num_centers))
    print(json.dumps(measure_throughput(cfg, args.steps)))


if __name__ == "__main__":
    main()
