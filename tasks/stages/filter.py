"""The filter stage: DataComp-style row filters and global deduplication, in two passes over the parts."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from curation import partitions as P
from curation.filters import FilterConfig
from tasks.stages.common import (
    CODE_VERSIONS,
    ReconciliationError,
    RunContext,
    StageRun,
    discard,
    fetched,
    list_parts,
    part_path,
    parts_of,
    passthrough_counts,
    run_stage,
    stored,
)
from tasks.store import layout as L
from tasks.store.artifacts import ArtifactRef


@task(name="filter", cache_policy=NO_CACHE, persist_result=False)
def filter_(ctx: RunContext, cfg: FilterConfig, upstream: ArtifactRef) -> ArtifactRef:
    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        tmp, parts = run.tmp, parts_of(upstream)
        key_units = [P.FilterKeys(p, cfg, part_path(tmp, L.FILTER_KEYS, i)) for i, p in enumerate(parts)]
        keys = run.map("keys", key_units)
        reasons = P.global_filter_reasons(fetched(*[u.out for u in key_units]), cfg)
        P.write_table(reasons, tmp / L.FILTER_REASONS)
        stored(tmp / L.FILTER_REASONS)
        applied = run.map("apply", [P.ApplyReasons(p, str(tmp / L.FILTER_REASONS), "filter", part_path(tmp, L.PARTS, i),
                                                   part_path(tmp, L.FILTERED, i)) for i, p in enumerate(parts)])
        manifest["counts"] = passthrough_counts(applied)
        if manifest["counts"]["rows_in"] != sum(k["rows_in"] for k in keys):
            raise ReconciliationError(f"filter: the second pass read {manifest['counts']['rows_in']} rows, the "
                                      f"first {sum(k['rows_in'] for k in keys)}")
        manifest["reasons"] = {"filtered": P.reason_counts(fetched(*list_parts(tmp / L.FILTERED)))}
        discard(run, "keys", tmp / L.FILTER_KEYS, tmp / L.FILTER_REASONS)

    return run_stage(ctx, "filter", CODE_VERSIONS["filter"], cfg, [upstream], compute)
