"""The train stage: the executor trains (one rank here or as a Ray task, several through Ray Train)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.stages.common import CODE_VERSIONS, RunContext, StageRun, fetched, run_stage
from tasks.store import layout as L
from tasks.store import workdir as W
from tasks.store.artifacts import ArtifactRef
from training.config import TrainConfig


def center_count(cluster_ref: ArtifactRef) -> int:
    """K, the rows of the cluster artifact's centers.npy (read from its header: no centers are loaded)."""
    return int(np.load(fetched(Path(cluster_ref.path) / L.CENTERS)[0], mmap_mode="r").shape[0])


@task(name="train", cache_policy=NO_CACHE, persist_result=False)
def train(ctx: RunContext, cfg: TrainConfig, upstream: ArtifactRef, curate_ref: ArtifactRef | None = None,
          cluster_ref: ArtifactRef | None = None) -> ArtifactRef:
    """`curate_ref` gives NegCLIP the pool's metadata entries (its vocabulary), when negclip asks for them;
    `cluster_ref` gives MLCD its class count, the rows of the cluster artifact's centers.npy."""
    metadata = Path(curate_ref.path) / L.METADATA if curate_ref is not None else None
    uses_metadata = "negclip" in cfg.objectives and cfg.negclip.use_metadata and metadata is not None
    run_cfg = replace(cfg, negclip=replace(cfg.negclip, metadata_file=str(metadata))) if uses_metadata else cfg
    uses_centers = "mlcd" in cfg.objectives
    if uses_centers:
        if cluster_ref is None:
            raise ValueError("the mlcd objective needs the cluster stage's artifact (its centers.npy)")
        run_cfg = replace(run_cfg, mlcd=replace(run_cfg.mlcd, num_centers=center_count(cluster_ref)))

    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        tmp = run.tmp
        summary = run.executor.train(run_cfg, str(Path(upstream.path) / L.SHARDS), str(tmp))
        W.remove(tmp / L.RAY_TRAIN)  # Ray Train's duplicate of the last checkpoint
        summary["checkpoint"] = str(Path(summary["checkpoint"]).relative_to(tmp.resolve()))
        manifest["workers"] = summary.pop("workers", [])
        manifest["train"] = summary
        rows = upstream.counts.get("rows_out", 0)
        manifest["counts"] = {"rows_in": rows, "rows_out": rows, "filtered": 0, "quarantined": 0}

    inputs = [upstream, *([curate_ref] if uses_metadata else []), *([cluster_ref] if uses_centers else [])]
    return run_stage(ctx, "train", CODE_VERSIONS["train"], cfg, inputs, compute)
