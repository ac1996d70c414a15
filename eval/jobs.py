"""The eval stage's unit of work: build the evaluation sets, load the trained checkpoint, run the suite.
Imports neither Prefect nor Ray."""

from __future__ import annotations

import json
from pathlib import Path

from curation.world import evaluation
from curation.world.pool import WorldConfig
from curation.world.vocabulary import SHAPES
from eval.suite import EvalConfig, run_suite
from training.embedding import encode_images, encode_texts
from training.models import create_model


def synthetic_eval_sets(world: WorldConfig, cfg: EvalConfig) -> dict:
    """Balanced evaluation sets of the synthetic world, from a seed other than the pool's."""
    return {
        "classification": evaluation.classification_set(world, cfg.per_class),
        "retrieval": evaluation.retrieval_set(world, cfg.retrieval_pairs),
        "compositional": evaluation.compositional_set(world, cfg.compositional_pairs),
    }


def eval_job(world: WorldConfig, cfg: EvalConfig, model_name: str, checkpoint: str, out_dir: str) -> dict:
    model, preprocess, tokenizer = create_model(model_name, checkpoint)
    results = run_suite(
        lambda images: encode_images(model, preprocess, images, cfg.batch_size),
        lambda texts: encode_texts(model, tokenizer, texts, cfg.batch_size),
        synthetic_eval_sets(world, cfg),
        SHAPES,
        cfg,
    )
    (Path(out_dir) / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    return results
