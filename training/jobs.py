"""The embed and train stages' units of work (docs/architecture.md, "The executor seam"): the bootstrap training
job, the stateful part embedder, and one rank's training job. Each reads artifacts from disk, calls the
library, writes results to disk and returns small counts. Imports neither Prefect nor Ray."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from training.checkpoints import CHECKPOINT_DIR, checkpoint_step
from training.config import DataConfig, DistConfig, TrainConfig
from training.data import ShardData, decode_image
from training.distributed import resolve_device
from training.embedding import EmbedConfig, encode_images, encode_texts
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
    """One part to embed: ``out`` gets ``source``'s rows plus ``image_emb`` and ``text_emb``."""

    source: str
    out: str


def float16_lists(emb: np.ndarray) -> pa.ListArray:
    """(N, D) embeddings as a list<halffloat> column, one list of D values per row."""
    values = pa.array(emb.astype(np.float16).reshape(-1), pa.float16())
    offsets = pa.array(np.arange(len(emb) + 1, dtype=np.int32) * emb.shape[1], pa.int32())
    return pa.ListArray.from_arrays(offsets, values)


class PartEmbedder:
    """The embed stage's stateful worker: loads the model once (on its GPU when it has one), then adds
    ``image_emb`` and ``text_emb`` (L2-normalised image and caption features, list<float16>) to each part it is
    given (the Ray executor runs one per actor of a pool)."""

    def __init__(self, cfg: EmbedConfig, checkpoint: str | None):
        configure_threads()
        self.device = resolve_device(cfg.device)  # "auto": the GPU Ray gave this actor, else the CPU
        self.model, self.preprocess, self.tokenizer = create_model(cfg.model, checkpoint, device=self.device)
        self.batch_size, self.precision = cfg.batch_size, cfg.precision

    def __call__(self, unit: EmbedPart) -> dict:
        table = pq.read_table(unit.source)
        images = encode_images(self.model, self.preprocess, table.column("image").to_pylist(), self.batch_size,
                               self.precision)  # (N, D)
        texts = encode_texts(self.model, self.tokenizer, table.column("text").to_pylist(), self.batch_size,
                             self.precision)  # (N, D)
        table = table.append_column("image_emb", float16_lists(images))
        table = table.append_column("text_emb", float16_lists(texts))
        Path(unit.out).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, unit.out)
        return {"rows_in": table.num_rows, "rows_out": table.num_rows, "dim": int(images.shape[1]),
                "device": str(self.device)}


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""Files an image folder's embedding job reads (the image-based filter's target set)."""


def image_files(root: str) -> list[Path]:
    """Every image file under `root`, sorted; a file (or a link) resolving outside `root` is an error, so nothing
    is read outside the folder the config names."""
    base = Path(root).resolve()
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    outside = [p for p in files if not p.resolve().is_relative_to(base)]
    if outside:
        raise ValueError(f"{outside[0]} resolves outside the image folder {root}: refusing to read it")
    if not files:
        raise ValueError(f"image folder {root} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return files


@dataclass(frozen=True)
class EmbedImageFolder:
    """The image-based filter's target set: L2-normalised image embeddings of every image under ``folder``,
    saved as float32 .npy (rows in sorted file order), by the embed stage's model."""

    folder: str
    cfg: EmbedConfig
    checkpoint: str | None
    out: str

    def run(self) -> dict:
        files = image_files(self.folder)
        embedder = PartEmbedder(self.cfg, self.checkpoint)
        parts = []
        for start in range(0, len(files), self.cfg.batch_size):  # a batch of files in memory at a time
            batch = files[start:start + self.cfg.batch_size]
            images = [readable_image(path) for path in batch]
            parts.append(encode_images(embedder.model, embedder.preprocess, images, self.cfg.batch_size,
                                       self.cfg.precision))
        with open(self.out, "wb") as f:
            np.save(f, np.concatenate(parts).astype(np.float32))
        return {"images": len(files)}


def readable_image(path: Path) -> Image.Image:
    """The decoded image at `path`, or a ValueError naming the file."""
    try:
        return decode_image(path.read_bytes())
    except Exception as err:  # noqa: BLE001  (any decoder error names the file)
        raise ValueError(f"target image {path} cannot be decoded: {err}") from None


def folder_fingerprint(root: str) -> str:
    """A digest of every image file under `root` (relative name, size, mtime): part of a stage's key, so changed
    target images recompute it."""
    base = Path(root).resolve()
    digest = hashlib.sha256()
    for path in image_files(root):
        stat = path.stat()
        digest.update(f"{path.relative_to(base)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
