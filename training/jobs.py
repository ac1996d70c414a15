"""The embed and train stages' units of work (docs/architecture.md, "The executor seam"): the bootstrap training
job, the stateful part embedder, and one rank's training job. Each reads artifacts from disk, calls the
library, writes results to disk and returns small counts. Imports neither Prefect nor Ray."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from training.checkpoints import CHECKPOINT_DIR, checkpoint_step
from training.config import DataConfig, DistConfig, TrainConfig
from training.data import ShardData
from training.embedding import EmbedConfig, encode_images
from training.loop import configure_threads, train
from training.models import create_model


def print_progress(label: str) -> Callable[[dict], None]:
    """A metrics callback printing one short line per metrics line (Ray forwards worker stdout)."""
    def log(line: dict) -> None:
        print(f"{label} step {line['step']} epoch {line['epoch']:.2f} loss {line.get('loss', float('nan')):.4f} "
              f"lr {line['lr']:.2e} {line['samples_per_second']:.0f} samples/s", flush=True)
    return log


def bootstrap_config(cfg: EmbedConfig, train_cfg: TrainConfig) -> TrainConfig:
    """The embed stage's bootstrap training: plain CLIP on one rank with the train stage's optimiser, schedule
    (for cfg.bootstrap_epochs), loaders, device, precision and seed, and cfg.model. Everything else - the
    objectives and their settings, the caption sampler, ranks and accumulation, the progress block - stays at its
    default, so changing it recomputes train, not embed, cluster and shard (the embed artifact's key hashes this
    config). Built from the train stage's components in one expression, with no list of field names to keep."""
    dist = train_cfg.distribution
    return TrainConfig(model=cfg.model, seed=train_cfg.seed, optim=train_cfg.optim,
                       schedule=dataclasses.replace(train_cfg.schedule, epochs=cfg.bootstrap_epochs),
                       data=dataclasses.replace(train_cfg.data, text_sampler=DataConfig().text_sampler),
                       distribution=DistConfig(device=dist.device, precision=dist.precision))


@dataclass(frozen=True)
class BootstrapJob:
    """Short training on the curated pool itself (``sources``: its parts), for when no embedding checkpoint is
    given; returns ``{"checkpoint": <out_dir>/final.pt}``. Only the final weights are kept: the resumable
    checkpoints of so short a run are deleted."""

    sources: tuple[str, ...]
    cfg: EmbedConfig
    train_cfg: TrainConfig
    out_dir: str

    def run(self) -> dict:
        table = pa.concat_tables([pq.read_table(p, columns=["image", "text"]) for p in self.sources])
        boot_cfg = bootstrap_config(self.cfg, self.train_cfg)
        checkpoint = train(boot_cfg, table, self.out_dir, log=print_progress("bootstrap"), resume=False).checkpoint
        shutil.rmtree(Path(self.out_dir) / CHECKPOINT_DIR, ignore_errors=True)
        return {"checkpoint": checkpoint}


@dataclass(frozen=True)
class TrainJob:
    """One rank's training on ``threads`` torch threads, resumed from ``out_dir``'s newest checkpoint: the train
    stage's unit on one rank (in this process, or as a Ray task that Ray retries); several ranks run it inside
    Ray Train (tasks.executors.ray_train). ``data`` is a shard folder (with sizes.json) or, in tests, a table."""

    cfg: TrainConfig
    data: str | pa.Table
    out_dir: str
    threads: int

    def run(self, log: Callable[[dict], None] | None = None,
            on_checkpoint: Callable[[str | None], None] | None = None) -> dict[str, Any]:
        """The run's summary: TrainResult without its per-step history, the data's size, ``resumed_from_step``."""
        resumed_from = max(0, checkpoint_step(self.out_dir))
        loaded = self.data if isinstance(self.data, pa.Table) else ShardData.from_folder(self.data)
        with omp_threads(self.threads):
            result = train(self.cfg, loaded, self.out_dir, log=log, resume=True, on_checkpoint=on_checkpoint)
        summary = dataclasses.asdict(result)
        summary.pop("history", None)
        if isinstance(loaded, pa.Table):
            summary.update(num_samples=loaded.num_rows, num_shards=0)
        else:
            summary.update(num_samples=loaded.num_samples, num_shards=len(loaded.urls))
        return {**summary, "resumed_from_step": resumed_from}


@contextmanager
def omp_threads(threads: int) -> Iterator[None]:
    """OMP_NUM_THREADS set while training (the loop's configure_threads reads it), then restored: Ray reuses
    task processes, and later tasks size their threads by it."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


@dataclass(frozen=True)
class EmbedPart:
    """One part to embed: ``out`` gets ``source``'s rows plus ``image_emb``."""

    source: str
    out: str


class PartEmbedder:
    """The embed stage's stateful worker: loads the model once, then adds the ``image_emb`` column
    (L2-normalised image features, list<float32>) to each part it is given (the Ray executor runs one per
    actor of a pool)."""

    def __init__(self, model_name: str, checkpoint: str | None, batch_size: int):
        configure_threads()
        self.model, self.preprocess, _tokenizer = create_model(model_name, checkpoint)
        self.batch_size = batch_size

    def __call__(self, unit: EmbedPart) -> dict:
        table = pq.read_table(unit.source)
        emb = encode_images(self.model, self.preprocess, table.column("image").to_pylist(), self.batch_size)
        values = pa.array(emb.reshape(-1), pa.float32())
        offsets = pa.array([i * emb.shape[1] for i in range(len(emb) + 1)], pa.int32())
        table = table.append_column("image_emb", pa.ListArray.from_arrays(offsets, values))
        Path(unit.out).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, unit.out)
        return {"rows_in": table.num_rows, "rows_out": table.num_rows, "dim": int(emb.shape[1])}
