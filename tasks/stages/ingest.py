"""The ingest stage: read and validate the sources (curation.partitions.IngestPart), then quarantine repeated uids."""

from __future__ import annotations

from functools import partial
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from curation import partitions as P
from curation.sources import IngestConfig, plan_partitions
from tasks.stages.common import (
    CODE_VERSIONS,
    RunContext,
    StageRun,
    discard,
    fetched,
    list_parts,
    part_path,
    run_stage,
    stored,
)
from tasks.store import layout as L
from tasks.store.artifacts import ArtifactRef


@task(name="ingest", cache_policy=NO_CACHE, persist_result=False)
def ingest(ctx: RunContext, cfg: IngestConfig) -> ArtifactRef:
    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        tmp = run.tmp
        out = partial(part_path, tmp)
        spans = plan_partitions(cfg)
        read_units = [P.IngestPart(cfg, span, out(L.CANDIDATES, i), out(L.READ_QUARANTINE, i), out(L.TRUTH, i))
                      for i, span in enumerate(spans)]
        read = run.map("read", read_units)
        P.write_table(P.duplicate_uid_table(fetched(*[u.candidates for u in read_units])), tmp / L.DUPLICATES)
        stored(tmp / L.DUPLICATES)
        kept = run.map("dedup", [P.DropDuplicateUids(u.candidates, i, str(tmp / L.DUPLICATES), u.quarantine,
                                                     out(L.PARTS, i), out(L.QUARANTINE, i))
                                 for i, u in enumerate(read_units)])
        manifest["counts"] = {"rows_in": sum(r["rows_in"] for r in read), "rows_out": sum(r["rows_out"] for r in kept),
                              "filtered": 0, "quarantined": sum(r["quarantined"] for r in read + kept)}
        manifest["reasons"] = {"quarantined": P.reason_counts(fetched(*list_parts(tmp / L.QUARANTINE)))}
        manifest["source"] = cfg.source
        discard(run, "read", tmp / L.CANDIDATES, tmp / L.READ_QUARANTINE)  # the duplicates table stays

    return run_stage(ctx, "ingest", CODE_VERSIONS["ingest"], cfg, [], compute)
