"""The eval stage: the suite on the trained checkpoint, over the datasets eval.datasets resolves to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from curation.sources import IngestConfig
from eval.config import EvalConfig
from eval.jobs import EvalJob
from eval.providers import eval_key_config, resolve_sources
from tasks.stages.common import CODE_VERSIONS, RunContext, StageRun, run_stage
from tasks.store import layout as L
from tasks.store.artifacts import ArtifactRef
from training.config import TrainConfig


@task(name="eval", cache_policy=NO_CACHE, persist_result=False)
def evaluate(ctx: RunContext, cfg: EvalConfig, ingest_cfg: IngestConfig, train_cfg: TrainConfig,
             upstream: ArtifactRef) -> ArtifactRef:
    """Scores the checkpoint on the datasets `eval.datasets` resolves to; with none (a real-data pool under
    `auto`) the stage records why it was skipped and scores nothing."""
    sources, skipped = resolve_sources(cfg.datasets, [s.format for s in ingest_cfg.sources], ingest_cfg.world)

    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        manifest["counts"] = {"rows_in": 0, "rows_out": 0, "filtered": 0, "quarantined": 0}
        manifest["datasets"] = [source.spec.source for source in sources]
        if skipped:
            manifest["skipped"] = skipped
            return
        checkpoint = str(Path(upstream.path) / ctx.store.manifest("train", upstream.key)["train"]["checkpoint"])
        job = EvalJob(tuple(sources), cfg, train_cfg.model, checkpoint, str(run.tmp),
                      str(Path(ctx.workdir) / L.FEATURE_CACHE))
        out = run.job("suite", job)
        manifest["eval"], manifest["eval_datasets"] = out["results"], out["datasets"]

    return run_stage(ctx, "eval", CODE_VERSIONS["eval"], eval_key_config(cfg, sources), [upstream], compute)
