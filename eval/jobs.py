"""Evaluation as a unit of work: load an open_clip checkpoint, load the datasets, run the suite, write
CLIP_benchmark-shaped JSON. Shared by the pipeline's eval stage and `curaclip eval`; imports neither Prefect
nor Ray.

A result file holds what CLIP_benchmark's ``cli.py`` dumps (``dataset``, ``model``, ``pretrained``, ``task``,
``metrics``, ``language``), with the metrics of :mod:`eval.suite` (CLIP_benchmark's names, plus ours).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from eval.config import EvalConfig
from eval.encoders import ClipEncoder
from eval.features import FeatureCache
from eval.providers import DatasetSource, build_datasets
from eval.suite import run_suite
from training.models import create_model

OUTPUT_TEMPLATE = "{dataset}_{pretrained}_{model}_{language}_{task}.json"
"""CLIP_benchmark's default --output: one file per (dataset, task)."""
LANGUAGE = "en"


def load_encoder(model_name: str, checkpoint: str | None, cfg: EvalConfig, device: str | None = None
                 ) -> ClipEncoder:
    """An open_clip model (a registered name or a JSON config) with `checkpoint`'s weights (None: random init,
    for tests and baselines), on `device` (default: CUDA when present)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, preprocess, tokenizer = create_model(model_name, checkpoint, device=device)
    return ClipEncoder(model, preprocess, tokenizer, model_name=model_name, checkpoint=checkpoint,
                       batch_size=cfg.batch_size, amp=cfg.amp)


def score_sources(encoder: ClipEncoder, sources: Sequence[DatasetSource], cfg: EvalConfig,
                  cache: FeatureCache) -> tuple[list[dict], list[dict]]:
    """(results, datasets): one result per (dataset, task); one row per dataset with its size and rejects."""
    datasets = [pair for source in sources for pair in build_datasets(source, cfg)]
    summary = [{"dataset": ds.name, "kind": type(ds).__name__, "images": len(ds.images),
                "rejected": len(ds.rejected), "rejected_examples": [list(r) for r in ds.rejected[:5]],
                "tasks": list(tasks)} for ds, tasks in datasets]
    return run_suite(encoder, datasets, cfg, cache), summary


def clip_benchmark_dump(result: dict, model: str, pretrained: str) -> dict:
    """A suite result in the shape CLIP_benchmark's cli.py writes."""
    return {"dataset": result["dataset"], "model": model, "pretrained": pretrained, "task": result["task"],
            "metrics": result["metrics"], "language": LANGUAGE}


def output_paths(template: str, dumps: Sequence[dict]) -> list[Path]:
    """One path per dump from a CLIP_benchmark --output template; a plain file name with several dumps gets
    '_{dataset}_{task}' before its suffix, so no result overwrites another."""
    if "{" not in template and len(dumps) > 1:
        path = Path(template)
        template = str(path.with_name(f"{path.stem}_{{dataset}}_{{task}}{path.suffix or '.json'}"))
    paths = []
    for d in dumps:
        slugs = {k: _slug(str(d[k])) for k in ("dataset", "model", "task", "language")}
        paths.append(Path(template.format(pretrained=_slug(Path(d["pretrained"]).name), **slugs)))
    if len(set(paths)) < len(paths):
        raise ValueError(f"--output {template!r} gives two results one file name: add {{dataset}} and {{task}}")
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "none"


def write_dumps(dumps: Sequence[dict], template: str) -> list[Path]:
    """Each dump to its own JSON file; returns the paths."""
    paths = output_paths(template, dumps)
    for path, dump in zip(paths, dumps, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dump, indent=2, sort_keys=True))
    return paths


@dataclass(frozen=True)
class EvalJob:
    """The eval stage's work: score ``checkpoint`` on every source's datasets, write every result (one file per
    (dataset, task) under ``out``, and all of them in ``out/results.json``) and return the rows and sets."""

    sources: tuple[DatasetSource, ...]
    cfg: EvalConfig
    model_name: str
    checkpoint: str
    out: str
    feature_cache: str | None

    def run(self) -> dict:
        encoder = load_encoder(self.model_name, self.checkpoint, self.cfg)
        results, datasets = score_sources(encoder, self.sources, self.cfg, FeatureCache(self.feature_cache))
        dumps = [clip_benchmark_dump(r, self.model_name, self.checkpoint) for r in results]
        out = Path(self.out)
        write_dumps(dumps, str(out / "results" / "{dataset}_{task}.json"))
        (out / "results.json").write_text(json.dumps(dumps, indent=2, sort_keys=True))
        return {"results": dumps, "datasets": datasets}
