"""The cluster stage: k-means centers over the image embeddings and top-k labels per sample (MLCD)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from curation import partitions as P
from curation.clustering import ClusterConfig
from tasks.stages.common import CODE_VERSIONS, RunContext, StageRun, part_path, parts_of, passthrough_counts, run_stage
from tasks.store import layout as L
from tasks.store.artifacts import ArtifactRef


@task(name="cluster", cache_policy=NO_CACHE)
def cluster(ctx: RunContext, cfg: ClusterConfig, upstream: ArtifactRef) -> ArtifactRef:
    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        parts = parts_of(upstream)
        centers = str(run.tmp / L.CENTERS)
        manifest["points"] = run.job("fit", P.FitCenters(tuple(parts), cfg, centers))["points"]
        results = run.map("assign", [P.AssignPart(p, centers, cfg.top_k, part_path(run.tmp, L.PARTS, i))
                                     for i, p in enumerate(parts)])
        manifest["counts"] = passthrough_counts(results)

    return run_stage(ctx, "cluster", CODE_VERSIONS["cluster"], cfg, [upstream], compute)
