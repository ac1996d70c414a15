"""The embed stage: image embeddings for clustering, from a given checkpoint or a short bootstrap training."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.stages.common import CODE_VERSIONS, RunContext, StageRun, part_path, parts_of, passthrough_counts, run_stage
from tasks.store import layout as L
from tasks.store.artifacts import ArtifactRef
from training.config import TrainConfig
from training.embedding import EmbedConfig
from training.jobs import BootstrapJob, EmbedPart, PartEmbedder, bootstrap_config


@task(name="embed", cache_policy=NO_CACHE, persist_result=False)
def embed(ctx: RunContext, cfg: EmbedConfig, train_cfg: TrainConfig, upstream: ArtifactRef) -> ArtifactRef:
    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        tmp, parts = run.tmp, parts_of(upstream)
        out = partial(part_path, tmp)
        checkpoint = cfg.checkpoint
        if checkpoint is None:
            job = BootstrapJob(tuple(parts), cfg, train_cfg, str(tmp / L.BOOTSTRAP))
            checkpoint = run.job("bootstrap", job)["checkpoint"]
        stored = str(Path(checkpoint).relative_to(tmp)) if checkpoint.startswith(str(tmp)) else checkpoint
        manifest["model"] = {"name": cfg.model, "checkpoint": stored,
                             "source": "config" if cfg.checkpoint else "bootstrap training on the curated data"}
        worker = partial(PartEmbedder, cfg, checkpoint)
        results = run.map_stateful("embed", worker, [EmbedPart(p, out(L.PARTS, i)) for i, p in enumerate(parts)])
        manifest["counts"] = passthrough_counts(results)
        manifest["dim"] = results[0]["dim"] if results else 0
        manifest["devices"] = sorted({r["device"] for r in results})

    key_config = (cfg, bootstrap_config(cfg, train_cfg)) if cfg.checkpoint is None else cfg
    return run_stage(ctx, "embed", CODE_VERSIONS["embed"], key_config, [upstream], compute)
