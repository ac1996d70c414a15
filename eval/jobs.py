"""The eval stage's unit of work: build the run's datasets, load the trained checkpoint, run the suite.
Imports neither Prefect nor Ray."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from eval.config import EvalConfig
from eval.providers import DatasetSource, build_datasets
from eval.suite import run_suite
from training.embedding import encode_images, encode_texts
from training.models import create_model


@dataclass(frozen=True)
class EvalJob:
    """Score ``checkpoint`` on every source's datasets; the results go to the file ``results`` and are returned."""

    sources: tuple[DatasetSource, ...]
    cfg: EvalConfig
    model_name: str
    checkpoint: str
    results: str

    def run(self) -> dict:
        model, preprocess, tokenizer = create_model(self.model_name, self.checkpoint)
        results = run_suite(
            lambda images: encode_images(model, preprocess, images, self.cfg.batch_size),
            lambda texts: encode_texts(model, tokenizer, texts, self.cfg.batch_size),
            build_datasets(self.sources, self.cfg),
            self.cfg,
        )
        Path(self.results).write_text(json.dumps(results, indent=2, sort_keys=True))
        return results
