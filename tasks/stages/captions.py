"""The caption stages: rewrite (LaCLIP, a text-only LLM) and longcap (DreamLIP long and ALIP short captions)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from curation import partitions as P
from curation.captions import STAGE_SEEDS, LongcapConfig, RewriteConfig, make_backend
from tasks.stages.common import CODE_VERSIONS, RunContext, StageRun, part_path, parts_of, passthrough_counts, run_stage
from tasks.store import layout as L
from tasks.store.artifacts import ArtifactRef


def _caption_stage(ctx: RunContext, stage: str, cfg: RewriteConfig | LongcapConfig, upstream: ArtifactRef,
                   truth: ArtifactRef | None, seed: int) -> ArtifactRef:
    """`truth` (the ingest artifact, whose truth table is joined by uid) is given to the captioner (longcap) only;
    the rewriter stands in for a text-only LLM and gets None."""
    truth_parts = tuple(parts_of(truth, L.TRUTH)) if truth is not None else ()

    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        units = [P.CaptionPart(p, truth_parts, part_path(run.tmp, L.PARTS, i), cfg, seed)
                 for i, p in enumerate(parts_of(upstream))]
        manifest["counts"] = passthrough_counts(run.map("caption", units))
        manifest["backend"] = make_backend(cfg.backend, cfg.error_rate).describe(stage)

    inputs = [upstream] if truth is None else [upstream, truth]
    return run_stage(ctx, stage, CODE_VERSIONS[stage], cfg, inputs, compute)


@task(name="rewrite", cache_policy=NO_CACHE)
def rewrite(ctx: RunContext, cfg: RewriteConfig, upstream: ArtifactRef) -> ArtifactRef:
    return _caption_stage(ctx, "rewrite", cfg, upstream, None, seed=STAGE_SEEDS["rewrite"])


@task(name="longcap", cache_policy=NO_CACHE)
def longcap(ctx: RunContext, cfg: LongcapConfig, upstream: ArtifactRef, truth: ArtifactRef) -> ArtifactRef:
    return _caption_stage(ctx, "longcap", cfg, upstream, truth, seed=STAGE_SEEDS["longcap"])
