"""The eval stage's unit of work: build the run's datasets, load the trained checkpoint, run the suite.
Imports neither Prefect nor Ray."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from eval.providers import DatasetSource, build_datasets
from eval.suite import EvalConfig, run_suite
from training.embedding import encode_images, encode_texts
from training.models import create_model


def eval_job(sources: Sequence[DatasetSource], cfg: EvalConfig, model_name: str, checkpoint: str,
             out_dir: str) -> dict:
    """Score the checkpoint on every source's datasets; writes `results.json` in out_dir and returns it."""
    model, preprocess, tokenizer = create_model(model_name, checkpoint)
    datasets = build_datasets(sources, cfg)
    results = run_suite(
        lambda images: encode_images(model, preprocess, images, cfg.batch_size),
        lambda texts: encode_texts(model, tokenizer, texts, cfg.batch_size),
        datasets,
        cfg,
    )
    (Path(out_dir) / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    return results
