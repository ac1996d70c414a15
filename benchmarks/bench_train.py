"""Training-throughput benchmark: our trainer against open_clip's own, and each objective's cost over CLIP.

Builds, offline and deterministically, a shard set of the synthetic world (``curation.world.pool`` with
the caption fields the later stages add: rewrites, a seven-sentence ``long_caption``, ``synthetic_caption``,
MLCD ``cluster_labels``) written by ``curation.sharding`` exactly as the shard stage writes it, then trains on
those same tars, with the same model config, batch size, threads, one dataloader worker and a fixed number of
steps:

(a) our trainer, ``training.loop.train`` on ``ShardData``, objectives ("clip",);
(b) open_clip's trainer, ``open_clip_train.main.main`` in a subprocess (``python -m open_clip_train.main``
    with our model configs registered first: its ``--model`` only takes names from open_clip's registry),
    ``--dataset-type webdataset --dataset-resampled``, fp32 on the CPU, the same lr, warmup, weight decay,
    betas, eps, gradient clip and crop scale. It must train on our shards without error.

Each trainer logs every step (our ``metrics.jsonl`` ``samples_per_second``; open_clip's ``out.log``
"Train Epoch: ... <samples/s>/s" lines); the first ``--warmup`` steps (dataloader start-up, shuffle-buffer
fill, allocator warm-up) are dropped and samples/s is samples / summed step seconds over the rest. Runs go
in the order ours, open_clip, then each objective followed by a CLIP run of ours, then open_clip, ours
(`schedule`): each open_clip run is compared with our CLIP runs next to it, each objective with the CLIP runs
on either side, so a load drift on a shared machine hits both sides of a ratio alike.
``ratio_ours_vs_open_clip`` goal: >= 1.0. Both trainers run with the same torch threads (OMP_NUM_THREADS),
dataloader workers and OMP_WAIT_POLICY (PASSIVE, from importing `training` first).

Then each added objective (ALIP, DreamLIP, NegCLIP, MLCD at ``--num-centers``, ProtoCLIP) trains with our
trainer on the same shards and steps; its cost over plain CLIP (CLIP samples/s / its samples/s) is printed
beside the cost its extra work implies, from forward FLOPs (``torch.utils.flop_counter.FlopCounterMode`` on
one image-tower and one text-tower forward): a training step is ~3 forwards (forward + backward), so a sample
costs 3 x (image + texts x text) FLOPs; ALIP encodes 2 texts per image, DreamLIP 1 + num_text (7), NegCLIP 1 +
2 hard negatives (3); DreamLIP adds its grouping (patch projection to the embedding, sub-caption pooling), MLCD
a classifier over the sampled centers (2 x D x sampled rows per sample), ProtoCLIP one no-grad forward per
sample to cluster each episode (k-means and its small projection heads are left out: < 1% here). Goal:
measured / implied <= 1.15. ProtoCLIP's episodes last --warmup steps, so the timed steps hold whole ones.

    python benchmarks/bench_train.py [--samples N] [--batch-size B] [--steps S] [--warmup W] [--threads T]
                                     [--num-centers C] [--small]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# First, before torch: the training package sets OMP_WAIT_POLICY=PASSIVE, which OpenMP reads once at start-up
# (spinning threads made torch ~10x slower on this loaded 2-core machine). open_clip_train's process inherits
# the same environment, so both trainers wait the same way.
import training  # noqa: E402, F401, I001

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from curation.sharding import ShardConfig, write_shards  # noqa: E402
from curation.world.pool import WorldConfig, generate_pool  # noqa: E402
from training.config import (  # noqa: E402
    DataConfig,
    DistConfig,
    OptimConfig,
    ProgressConfig,
    ScheduleConfig,
    TrainConfig,
)
from training.jobs import omp_threads  # noqa: E402
from training.objectives.mlcd import MLCDConfig  # noqa: E402
from training.data import ShardData  # noqa: E402
from training.loop import train  # noqa: E402
from training.models import CONFIG_DIR, create_model  # noqa: E402
from training.optim import optimizer_settings  # noqa: E402
from training.objectives.protoclip import ProtoCLIPConfig  # noqa: E402
from training.throughput import random_batch  # noqa: E402

GOAL_VS_OPEN_CLIP = 1.0
"""issue 4: our trainer at least as fast as open_clip_train with the CLIP loss."""
GOAL_OVER_IMPLIED = 1.15
"""issue 4: an objective's measured cost within 1.15x of what its extra compute implies."""
LR, WARMUP_LR_STEPS = 1e-3, 5
"""Learning rate and its warmup steps in both trainers (they do not change the step's cost)."""
SHUFFLE_BUFFER = 1000
"""Our sample shuffle buffer: open_clip_train's first yield also waits for 1000 samples (_SAMPLE_SHUFFLE_INITIAL)."""
TOP_K = 3
"""cluster labels per sample (MLCD's top_k default)."""

ADDED_OBJECTIVES: dict[str, tuple[str, ...]] = {
    "alip": ("alip",),  # ALIP's gated raw-text + caption losses replace plain CLIP
    "dreamlip": ("dreamlip",),  # DreamLIP holds the raw caption's CLIP loss, so it replaces plain CLIP
    "negclip": ("negclip",),  # CLIP with the hard negatives in its denominator
    "mlcd": ("clip", "mlcd"),
    "protoclip": ("clip", "protoclip"),
}
"""Each added objective's names for TrainConfig.objectives (weight 1.0 each), timed against ("clip",)."""

OPEN_CLIP_MAIN = ("import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
                  "from open_clip_train.main import main; sys.exit(main(sys.argv[2:]))")
"""`python -m open_clip_train.main`, with a folder of model configs registered first (argv[1])."""

OPEN_CLIP_LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+ .*?Batch \(t\): [\d.]+, ([\d.eE+-]+)/s,")
"""open_clip_train's per-log line: samples seen so far and samples/s of the last step."""


# --- the shard set -----------------------------------------------------------------------------------

def caption_fields(table: pa.Table, num_centers: int, seed: int = 0) -> pa.Table:
    """The caption columns the curate/rewrite/longcap/cluster stages add, derived from each alt-text (seeded
    labels): 3 rewrites, a 7-sentence long caption (DreamLIP draws 6 distinct), a synthetic caption, top-3
    cluster labels below num_centers."""
    rng = np.random.default_rng(seed)
    texts = [t or "an image" for t in table.column("text").to_pylist()]
    n = table.num_rows
    labels = rng.integers(0, num_centers, size=(n, TOP_K))
    scores = np.sort(rng.random((n, TOP_K)), axis=1)[:, ::-1]
    sentences = ("It shows {t}.", "The objects sit on a plain background.", "The light is even.",
                 "Nothing else is visible.", "The picture is square.", "Edges are sharp.", "{t}, seen from above.")
    columns = {
        "rewrites": pa.array([[f"a photo of {t}", f"{t}, up close", f"an image showing {t}"] for t in texts]),
        "long_caption": pa.array([" ".join(s.format(t=t) for s in sentences) for t in texts]),
        "synthetic_caption": pa.array([f"{t} on a background" for t in texts]),
        "cluster_labels": pa.array(labels.tolist(), pa.list_(pa.int32())),
        "cluster_scores": pa.array(scores.tolist(), pa.list_(pa.float32())),
    }
    for name, column in columns.items():
        table = table.append_column(name, column)
    return table


def write_bench_shards(out_dir: Path, samples: int, per_shard: int, num_centers: int) -> list[str]:
    """The synthetic pool's first `samples` images with caption_fields, as the shard stage's tars (+ sizes.json);
    returns the tar paths in order."""
    world = WorldConfig(num_images=samples)
    pool = pa.concat_tables([generate_pool(world, s, min(s + 1024, samples))[0] for s in range(0, samples, 1024)])
    write_shards(caption_fields(pool, num_centers), str(out_dir), ShardConfig(samples_per_shard=per_shard))
    return ShardData.from_folder(out_dir).urls


# --- timing from the trainers' logs ------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    """One training run's per-step seconds (from its own log) after the warm-up steps."""

    trainer: str
    objectives: tuple[str, ...]
    batch_size: int
    step_seconds: tuple[float, ...]

    @property
    def samples_per_second(self) -> float:
        return self.batch_size * len(self.step_seconds) / sum(self.step_seconds)

    def line(self) -> str:
        median = statistics.median(self.step_seconds)
        return (f"trainer={self.trainer} objectives={','.join(self.objectives)} samples_per_s="
                f"{self.samples_per_second:.1f} median_step_s={median:.3f} timed_steps={len(self.step_seconds)} "
                f"{load()}")


def timed_steps(per_step: dict[int, float], steps: int, warmup: int) -> tuple[float, ...]:
    """Seconds of steps warmup+1..steps (1-based, as both logs count), checking every step was logged."""
    missing = [s for s in range(1, steps + 1) if s not in per_step]
    if missing:
        raise AssertionError(f"the trainer's log lacks steps {missing[:5]}... of {steps}")
    return tuple(per_step[s] for s in range(warmup + 1, steps + 1))


def ours_step_seconds(metrics_path: Path, batch_size: int) -> dict[int, float]:
    """step -> seconds from our metrics.jsonl written with log_every=1 (one step per line)."""
    lines = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    return {int(m["step"]): batch_size / m["samples_per_second"] for m in lines}


def open_clip_step_seconds(log_text: str, batch_size: int) -> dict[int, float]:
    """step -> seconds from open_clip_train's out.log written with --log-every-n-steps 1."""
    return {int(seen) // batch_size: batch_size / float(rate) for seen, rate in OPEN_CLIP_LINE.findall(log_text)}




# --- the two trainers --------------------------------------------------------------------------------

def our_config(args: argparse.Namespace, objectives: tuple[str, ...]) -> TrainConfig:
    """Our trainer's config: one epoch of args.steps steps, fp32 on the CPU, a metrics line per step, no
    checkpoint before the end; ProtoCLIP episodes of `warmup` steps, so the timed steps hold whole episodes."""
    episode = args.warmup * args.batch_size
    proto = replace(ProtoCLIPConfig(), episode_size=episode, num_prototypes=min(32, episode // 8))
    return TrainConfig(model=args.model, objectives=dict.fromkeys(objectives, 1.0), optim=OptimConfig(lr=LR),
                       schedule=ScheduleConfig(epochs=1, warmup_steps=WARMUP_LR_STEPS),
                       data=DataConfig(batch_size=args.batch_size, workers=args.workers,
                                       shuffle_buffer=SHUFFLE_BUFFER),
                       distribution=DistConfig(device="cpu", precision="fp32"),
                       progress=ProgressConfig(log_every=1, checkpoint_every=0),
                       mlcd=MLCDConfig(num_centers=args.num_centers), protoclip=proto)


def run_ours(args: argparse.Namespace, urls: list[str], objectives: tuple[str, ...], out_dir: Path) -> Timing:
    """training.loop.train on the shards for exactly args.steps steps."""
    cfg = our_config(args, objectives)
    with omp_threads(args.threads):
        train(cfg, ShardData(urls, args.steps * args.batch_size), str(out_dir), resume=False)
    per_step = ours_step_seconds(out_dir / "metrics.jsonl", args.batch_size)
    return Timing("ours", objectives, args.batch_size, timed_steps(per_step, args.steps, args.warmup))


def open_clip_argv(args: argparse.Namespace, shard_dir: Path, num_shards: int, logs: Path, name: str) -> list[str]:
    """open_clip_train's arguments matching our_config (its defaults differ: amp, wd 0.2, crop scale 0.9)."""
    cfg = TrainConfig()
    opt_cfg = cfg.optim
    opt = optimizer_settings(cfg.optim)  # AdamW's defaults, as our trainer fills them in
    return ["--train-data", f"{shard_dir}/{{00000..{num_shards - 1:05d}}}.tar", "--dataset-type", "webdataset",
            "--dataset-resampled", "--train-num-samples", str(args.steps * args.batch_size),
            "--batch-size", str(args.batch_size), "--epochs", "1", "--model", args.model,
            "--lr", str(LR), "--warmup", str(WARMUP_LR_STEPS), "--wd", str(opt.weight_decay),
            "--beta1", str(opt.beta1), "--beta2", str(opt.beta2), "--eps", str(opt.eps),
            "--grad-clip-norm", str(opt_cfg.grad_clip_norm), "--aug-cfg", f"scale=({cfg.data.crop_scale_min}, 1.0)",
            "--precision", "fp32", "--device", "cpu", "--workers", str(args.workers), "--seed", str(cfg.seed),
            "--log-every-n-steps", "1", "--save-frequency", "0", "--report-to", "", "--logs", str(logs),
            "--name", name]


def run_open_clip(args: argparse.Namespace, shard_dir: Path, num_shards: int, logs: Path, name: str) -> Timing:
    """open_clip_train.main in a fresh process with OMP_NUM_THREADS=args.threads; fails loudly if it does."""
    argv = [sys.executable, "-c", OPEN_CLIP_MAIN, str(CONFIG_DIR),
            *open_clip_argv(args, shard_dir, num_shards, logs, name)]
    with omp_threads(args.threads):
        done = subprocess.run(argv, cwd=logs, capture_output=True, text=True, timeout=args.timeout)
    log_file = logs / name / "out.log"
    log_text = log_file.read_text() if log_file.exists() else ""
    if done.returncode != 0 or not OPEN_CLIP_LINE.search(log_text):
        raise RuntimeError(f"open_clip_train failed on our shards (exit {done.returncode}):\n"
                           f"{done.stderr[-3000:]}\n{log_text[-2000:]}")
    per_step = open_clip_step_seconds(log_text, args.batch_size)
    return Timing("open_clip", ("clip",), args.batch_size, timed_steps(per_step, args.steps, args.warmup))


# --- implied cost from forward FLOPs -----------------------------------------------------------------

@dataclass(frozen=True)
class TowerFlops:
    """Forward FLOPs per sample of each tower, and the widths the objectives' heads work in."""

    image: float
    text: float
    embed_dim: int
    patches: int
    width: int


def count_flops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@torch.no_grad()
def tower_flops(model_name: str, context_length: int, rows: int = 4) -> TowerFlops:
    """FlopCounterMode over one image forward and one text forward (full-length captions) of the model."""
    model, _, _ = create_model(model_name, context_length=context_length)
    model.eval()
    batch = random_batch(model, rows, seed=0)
    image = count_flops(lambda: model.encode_image(batch["image"])) / rows
    text = count_flops(lambda: model.encode_text(batch["text"])) / rows
    grid = model.visual.grid_size
    return TowerFlops(image, text, int(model.text_projection.shape[1]), grid[0] * grid[1],
                      int(model.visual.proj.shape[0]))


def grouping_flops(t: TowerFlops, num_text: int) -> float:
    """DreamLIP's grouping per sample: patches projected to D, T texts' weights over them, pooled regions."""
    return 2 * t.patches * t.width * t.embed_dim + 2 * 2 * num_text * t.patches * t.embed_dim


def mlcd_sampled_rows(cfg: MLCDConfig, batch_size: int) -> float:
    """Centers scored per step: the batch's positives plus negative_ratio of the others (Partial FC)."""
    positives = min(batch_size * cfg.top_k, cfg.num_centers)
    return positives + cfg.negative_ratio * (cfg.num_centers - positives)


IMPLIED_FORWARDS: dict[str, Callable[[TrainConfig, TowerFlops], tuple[float, float]]] = {
    "clip": lambda cfg, t: (t.image + t.text, 0.0),
    "alip": lambda cfg, t: (t.image + 2 * t.text, 0.0),
    "dreamlip": lambda cfg, t: (t.image + (1 + cfg.dreamlip.num_text) * t.text
                                + grouping_flops(t, 1 + cfg.dreamlip.num_text), 0.0),  # raw caption + K
    "negclip": lambda cfg, t: (t.image + 2 * t.text, 0.0),  # one hard negative per caption, as NegCLIP draws
    "mlcd": lambda cfg, t: (t.image + t.text
                            + 2 * t.embed_dim * mlcd_sampled_rows(cfg.mlcd, cfg.data.batch_size), 0.0),
    "protoclip": lambda cfg, t: (t.image + t.text, t.image + t.text),
}
"""Per-sample forward FLOPs (with gradients, without) each objective set must spend, keyed by ADDED_OBJECTIVES."""


def implied_cost(name: str, cfg: TrainConfig, t: TowerFlops) -> float:
    """Training FLOPs per sample over plain CLIP's: a forward with gradients costs ~3x (backward ~2x), one
    without 1x."""
    def step_flops(key: str) -> float:
        grad, no_grad = IMPLIED_FORWARDS[key](cfg, t)
        return 3 * grad + no_grad
    return step_flops(name) / step_flops("clip")


# --- the benchmark -----------------------------------------------------------------------------------

def load() -> str:
    return "load_avg_1m_5m_15m=" + ",".join(f"{x:.2f}" for x in os.getloadavg())


def schedule(small: bool) -> list[tuple[str, str]]:
    """(trainer, objective key) in run order: ours and open_clip on CLIP, then each added objective followed by
    a CLIP run of ours (its baselines are the CLIP runs on either side, so a load drift on the shared machine
    hits both alike), then open_clip and ours once more (ABBA for the trainer ratio). --small keeps only the
    first CLIP pair and the objectives."""
    runs = [("ours", "clip"), ("open_clip", "clip")]
    for name in ADDED_OBJECTIVES:
        runs += [("ours", name)] + ([] if small else [("ours", "clip")])
    return runs if small else runs + [("open_clip", "clip"), ("ours", "clip")]


def run_one(args: argparse.Namespace, root: Path, urls: list[str], trainer: str, name: str, index: int) -> Timing:
    out = root / f"run-{index:02d}-{trainer}-{name}"
    out.mkdir()
    if trainer == "open_clip":
        return run_open_clip(args, root / "shards", len(urls), out, "open_clip")
    return run_ours(args, urls, ADDED_OBJECTIVES.get(name, ("clip",)), out)


def run_all(args: argparse.Namespace, root: Path, urls: list[str]) -> list[Timing]:
    """Every run of the schedule, each printed as it ends."""
    timings = []
    for index, (trainer, name) in enumerate(schedule(args.small)):
        timings.append(run_one(args, root, urls, trainer, name, index))
        print(timings[-1].line(), flush=True)
    return timings


def is_ours_clip(t: Timing) -> bool:
    return t.trainer == "ours" and t.objectives == ("clip",)


def neighbours(timings: Sequence[Timing], i: int) -> list[Timing]:
    """Our CLIP runs right before and after run i (the first of ours when none is adjacent)."""
    near = [timings[j] for j in (i - 1, i + 1) if 0 <= j < len(timings) and is_ours_clip(timings[j])]
    return near or [next(t for t in timings if is_ours_clip(t))]


def pooled(timings: Sequence[Timing]) -> float:
    """samples/s over every timed step of the runs together."""
    return sum(t.batch_size * len(t.step_seconds) for t in timings) / sum(sum(t.step_seconds) for t in timings)


def report(args: argparse.Namespace, timings: list[Timing], towers: TowerFlops) -> dict[str, float]:
    """The ratio lines; returns every figure by name."""
    theirs_at = [i for i, t in enumerate(timings) if t.trainer == "open_clip"]
    ours = list({id(t): t for i in theirs_at for t in neighbours(timings, i)}.values())
    ours_sps, theirs_sps = pooled(ours), pooled([timings[i] for i in theirs_at])
    result = {"ours_samples_per_s": ours_sps, "open_clip_samples_per_s": theirs_sps,
              "ratio_ours_vs_open_clip": ours_sps / theirs_sps}
    print(f"ours_samples_per_s={ours_sps:.1f} open_clip_samples_per_s={theirs_sps:.1f} "
          f"(runs: {len(ours)} of ours, {len(theirs_at)} of open_clip)")
    print(f"ratio_ours_vs_open_clip={ours_sps / theirs_sps:.2f} (goal >= {GOAL_VS_OPEN_CLIP})")
    print(f"tower_forward_gflops_per_sample image={towers.image / 1e9:.4f} text={towers.text / 1e9:.4f}")
    by_name = {v: k for k, v in ADDED_OBJECTIVES.items()}
    for i, timing in enumerate(timings):
        name = by_name.get(timing.objectives)
        if timing.trainer != "ours" or name is None:
            continue
        measured = pooled(neighbours(timings, i)) / timing.samples_per_second
        implied = implied_cost(name, our_config(args, timing.objectives), towers)
        result |= {f"cost_{name}_measured": measured, f"cost_{name}_implied": implied,
                   f"cost_{name}_measured_over_implied": measured / implied}
        print(f"cost_ratio_{name} measured={measured:.2f} implied={implied:.2f} "
              f"measured_over_implied={measured / implied:.2f} (goal <= {GOAL_OVER_IMPLIED})")
    return result


SMALL = {"samples": 192, "samples_per_shard": 64, "batch_size": 16, "steps": 6, "warmup": 2, "num_centers": 1000}
"""--small: a few steps on a tiny shard set (the smoke test); timings are meaningless at this size."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096, help="synthetic images in the shard set")
    parser.add_argument("--samples-per-shard", type=int, default=512)
    parser.add_argument("--model", default=TrainConfig().model)
    parser.add_argument("--batch-size", type=int, default=TrainConfig().data.batch_size)
    parser.add_argument("--steps", type=int, default=32, help="optimiser steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=8, help="first steps left out of the timing")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads, both")
    parser.add_argument("--workers", type=int, default=1, help="dataloader worker processes, both trainers")
    parser.add_argument("--num-centers", type=int, default=100_000, help="MLCD classifier rows")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per open_clip_train run")
    parser.add_argument("--small", action="store_true", help="tiny smoke-test sizes (overrides the sizes above)")
    args = parser.parse_args(argv)
    if args.small:
        vars(args).update(SMALL)
    if (args.steps - args.warmup) % args.warmup:
        raise SystemExit("--steps - --warmup must be a multiple of --warmup (whole ProtoCLIP episodes)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        urls = write_bench_shards(root / "shards", args.samples, args.samples_per_shard, args.num_centers)
        towers = tower_flops(args.model, TrainConfig().data.context_length)
        print(f"samples={args.samples} shards={len(urls)} batch_size={args.batch_size} steps={args.steps} "
              f"warmup={args.warmup} threads={args.threads} workers={args.workers} num_centers={args.num_centers} "
              f"omp_wait_policy={os.environ.get('OMP_WAIT_POLICY')} prepared_s={time.perf_counter() - started:.1f} "
              f"{load()}", flush=True)
        timings = run_all(args, root, urls)
    result = report(args, timings, towers)
    if not all(math.isfinite(v) for v in result.values()):
        raise AssertionError(f"non-finite figures: {result}")
    return result


if __name__ == "__main__":
    main()
