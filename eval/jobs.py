"""The eval stage's unit of work: build the evaluation sets, load the trained checkpoint, run the suite.
Imports neither Prefect nor Ray."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from curation import synthetic
from curation.synthetic import WorldConfig
from eval.suite import EvalConfig, run_suite
from training.embedding import encode_images, encode_texts
from training.models import create_model


def synthetic_eval_sets(world: WorldConfig, cfg: EvalConfig) -> dict:
    """Balanced evaluation sets of the synthetic world, from a seed other than the pool's."""
    return {
        "classification": synthetic.classification_set(world, cfg.per_class),
        "retrieval": synthetic.retrieval_set(world, cfg.retrieval_pairs),
        "compositional": synthetic.compositional_set(world, cfg.compositional_pairs),
    }


def eval_job(world: WorldConfig, cfg: EvalConfig, model_name: str, checkpoint: str, out_dir: str) -> dict:
    model, preprocess, tokenizer = create_model(model_name, checkpoint)
    results = run_suite(
        lambda images: encode_images(model, preprocess, images, cfg.batch_size),
        lambda texts: encode_texts(model, tokenizer, texts, cfg.batch_size),
        synthetic_eval_sets(world, cfg),
        synthetic.SHAPES,
        cfg,
    )
    (Path(out_dir) / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    return results


@dataclass(frozen=True)
class EvalJob:
    """The eval stage's unit of work: the suite on ``checkpoint``, results also written to ``out_dir``."""

    world: WorldConfig
    cfg: EvalConfig
    model_name: str
    checkpoint: str
    out_dir: str

    def run(self) -> dict:
        return eval_job(self.world, self.cfg, self.model_name, self.checkpoint, self.out_dir)
