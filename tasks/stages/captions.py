"""The caption stages: rewrite (LaCLIP, a text-only LLM) and longcap (DreamLIP long and ALIP short captions).

Each part goes to a stateful worker (:class:`curation.partitions.CaptionWorker`, one per actor of the pool on
Ray), so a local model loads once per actor and an HTTP client opens once per worker. The per-sample answer
cache lives in ``<workdir>/cache/captions`` (outside the artifact: it outlives a forced rerun and a config
change elsewhere). The stage's key leaves out the operational settings (concurrency, timeouts, retries, the
failure threshold: ``key_config``), so changing those reuses the artifact.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from curation import partitions as P
from curation.captions import STAGE_SEEDS, LongcapConfig, RewriteConfig, merge_tallies
from curation.captions.estimate import estimate_parts
from curation.captions.runner import CaptionFailureError, cache_namespaces, check_failures, name_served_models
from tasks.stages.common import (
    CODE_VERSIONS,
    RunContext,
    StageRun,
    fetched,
    part_path,
    parts_of,
    passthrough_counts,
    run_stage,
)
from tasks.store import layout as L
from tasks.store.artifacts import ArtifactRef, to_dict

CaptionConfig = RewriteConfig | LongcapConfig


def cache_root(ctx: RunContext) -> str:
    """Where the stage's answers are cached (only a real model's are: the simulated ones are recomputed)."""
    return str(Path(ctx.workdir) / L.CAPTION_CACHE)


def _caption_stage(ctx: RunContext, stage: str, cfg: CaptionConfig, upstream: ArtifactRef,
                   truth: ArtifactRef | None, seed: int) -> ArtifactRef:
    """`truth` (the ingest artifact, whose truth table is joined by uid) is given to the captioner (longcap) only;
    the rewriter stands in for a text-only LLM and gets None."""
    truth_parts = tuple(parts_of(truth, L.TRUTH)) if truth is not None else ()
    cfg = name_served_models(cfg)

    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        units = [P.CaptionPart(p, truth_parts, part_path(run.tmp, L.PARTS, i), seed)
                 for i, p in enumerate(parts_of(upstream))]
        results = run.map_stateful("caption", partial(P.CaptionWorker, cfg, cache_root(ctx)), units)
        manifest["settings"] = to_dict(cfg)  # the whole config, operational fields too (the key leaves them out)
        manifest["caption_cache"] = cache_namespaces(cfg)  # the cache folders it used: what gc keeps for it
        manifest["counts"] = passthrough_counts(results)
        manifest["captions"] = merge_tallies([r["captions"] for r in results])
        manifest["backend"] = results[0]["backend"] if results else {"name": cfg.backend,
                                                                     "simulated": cfg.backend == "simulated"}
        try:
            check_failures(stage, cfg.max_failure_share, manifest["captions"])
        except CaptionFailureError:
            run.staging.unmark("caption")  # the rerun redoes every part; their answers come from the cache
            raise

    inputs = [upstream] if truth is None else [upstream, truth]
    return run_stage(ctx, stage, CODE_VERSIONS[stage], cfg.key_config(), inputs, compute)


@task(name="rewrite", cache_policy=NO_CACHE, persist_result=False)
def rewrite(ctx: RunContext, cfg: RewriteConfig, upstream: ArtifactRef) -> ArtifactRef:
    return _caption_stage(ctx, "rewrite", cfg, upstream, None, seed=STAGE_SEEDS["rewrite"])


@task(name="longcap", cache_policy=NO_CACHE, persist_result=False)
def longcap(ctx: RunContext, cfg: LongcapConfig, upstream: ArtifactRef, truth: ArtifactRef) -> ArtifactRef:
    return _caption_stage(ctx, "longcap", cfg, upstream, truth, seed=STAGE_SEEDS["longcap"])


@task(name="caption-dry-run", cache_policy=NO_CACHE, persist_result=False)
def dry_run(ctx: RunContext, stage: str, cfg: CaptionConfig, upstream: ArtifactRef) -> dict:
    """What the stage would ask its model for (requests not yet cached, rough tokens), sending nothing."""
    cfg = name_served_models(cfg)
    return {"stage": stage, "backend": cfg.backend,
            **estimate_parts(stage, cfg, fetched(*parts_of(upstream)), STAGE_SEEDS[stage], fetched(cache_root(ctx))[0])}
