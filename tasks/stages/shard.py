"""The shard stage: WebDataset tars with Parquet sidecars and sizes.json, readable by open_clip_train."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from curation import partitions as P
from curation.sharding import ShardConfig, write_sizes
from tasks.stages.common import CODE_VERSIONS, RunContext, StageRun, part_rows, parts_of, run_stage, stored
from tasks.store import layout as L
from tasks.store.artifacts import ArtifactRef


@task(name="shard", cache_policy=NO_CACHE, persist_result=False)
def shard(ctx: RunContext, cfg: ShardConfig, upstream: ArtifactRef) -> ArtifactRef:
    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        parts = tuple(parts_of(upstream))
        rows = part_rows(parts)  # counts from metadata, no data read
        plan = P.plan_shards(rows, cfg.samples_per_shard)
        out = str(run.tmp / L.SHARDS)
        Path(out).mkdir(exist_ok=True)
        results = run.map("write", [P.ShardJob(parts, tuple(slices), out, i) for i, slices in enumerate(plan)])
        write_sizes(out, {r["shard"]: r["count"] for r in results})
        stored(Path(out) / "sizes.json")
        written = sum(r["count"] for r in results)
        manifest["counts"] = {"rows_in": sum(rows), "rows_out": written, "filtered": 0, "quarantined": 0}
        manifest["shards"] = len(results)
        manifest["bytes"] = sum(r["bytes"] for r in results)

    return run_stage(ctx, "shard", CODE_VERSIONS["shard"], cfg, [upstream], compute)
