"""Units of work the embed and train stages hand to Ray: read artifacts from disk, call the library,
write results to disk, return small summaries. Imports neither Prefect nor Ray."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from training.checkpoints import CHECKPOINT_DIR
from training.config import DataConfig, TrainConfig
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
    (for cfg.bootstrap_epochs), loaders and seed, and cfg.model. Everything else - the objectives and their
    settings, the caption sampler, the distribution and progress blocks - stays at its default, so changing it
    recomputes train, not embed, cluster and shard (the embed artifact's key hashes this config)."""
    return TrainConfig(model=cfg.model, seed=train_cfg.seed, optim=train_cfg.optim,
                       schedule=dataclasses.replace(train_cfg.schedule, epochs=cfg.bootstrap_epochs),
                       data=dataclasses.replace(train_cfg.data, text_sampler=DataConfig().text_sampler))


def bootstrap_job(part_paths: Sequence[str], cfg: EmbedConfig, train_cfg: TrainConfig, out_dir: str) -> str:
    """Short training on the curated pool itself, for when no embedding checkpoint is given; returns final.pt.

    Only the final weights are kept: the resumable checkpoints of so short a run are deleted."""
    table = pa.concat_tables([pq.read_table(p, columns=["image", "text"]) for p in part_paths])
    boot_cfg = bootstrap_config(cfg, train_cfg)
    checkpoint = train(boot_cfg, table, out_dir, log=print_progress("bootstrap"), resume=False).checkpoint
    shutil.rmtree(Path(out_dir) / CHECKPOINT_DIR, ignore_errors=True)
    return checkpoint


def embed_part(in_path: str, model_name: str, checkpoint: str | None, batch_size: int, out_path: str) -> dict:
    """Add the ``image_emb`` column (L2-normalised image features, list<float32>) to one part."""
    configure_threads()
    table = pq.read_table(in_path)
    model, preprocess, _tokenizer = create_model(model_name, checkpoint)
    emb = encode_images(model, preprocess, table.column("image").to_pylist(), batch_size)
    values = pa.array(emb.reshape(-1), pa.float32())
    offsets = pa.array([i * emb.shape[1] for i in range(len(emb) + 1)], pa.int32())
    table = table.append_column("image_emb", pa.ListArray.from_arrays(offsets, values))
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_path)
    return {"rows_in": table.num_rows, "rows_out": table.num_rows, "dim": int(emb.shape[1])}
