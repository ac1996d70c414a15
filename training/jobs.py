"""Units of work the embed and train stages hand to Ray: read artifacts from disk, call the library,
write results to disk, return small summaries. Imports neither Prefect nor Ray."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from curation.partitions import read_table, write_table
from training.config import TrainConfig
from training.data import ShardData
from training.embedding import EmbedConfig, encode_images
from training.loop import train
from training.models import create_model


def bootstrap_job(part_paths: Sequence[str], cfg: EmbedConfig, train_cfg: TrainConfig, out_dir: str) -> str:
    """Short training on the curated pool itself, for when no embedding checkpoint is given."""
    table = pa.concat_tables([read_table(p, ["image", "text"]) for p in part_paths])
    boot_cfg = dataclasses.replace(train_cfg, model=cfg.model, epochs=cfg.bootstrap_epochs)
    return train(boot_cfg, table, out_dir, resume=False).checkpoint


def embed_part(in_path: str, model_name: str, checkpoint: str | None, batch_size: int, out_path: str) -> dict:
    """Add the ``image_emb`` column (L2-normalised image features) to one part."""
    table = read_table(in_path)
    model, preprocess, _tokenizer = create_model(model_name, checkpoint)
    emb = encode_images(model, preprocess, table.column("image").to_pylist(), batch_size)
    table = table.append_column("image_emb", pa.array(list(emb), pa.list_(pa.float32())))
    write_table(table, out_path)
    return {"rows_in": table.num_rows, "rows_out": table.num_rows, "dim": int(emb.shape[1])}


def shard_data(shard_dir: str) -> ShardData:
    """The shard stage's tars and sample count, from its ``sizes.json``."""
    sizes = json.loads((Path(shard_dir) / "sizes.json").read_text())
    urls = [str(Path(shard_dir) / name) for name in sorted(sizes)]
    return ShardData(urls=urls, num_samples=int(sum(sizes.values())))


def train_job(cfg: TrainConfig, shard_dir: str, out_dir: str) -> dict:
    """Pretrain from the shard stage's WebDataset; returns the training summary."""
    result = train(cfg, shard_data(shard_dir), out_dir)
    summary = dataclasses.asdict(result)
    summary.pop("history", None)
    return summary
