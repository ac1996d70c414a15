"""What every stage task shares: the run context, the cache check, the manifest and reconciliation.

Caching decision: the artifact store *is* the cache. A stage task computes its key from its config,
its code version and its inputs' keys, and returns at once when that artifact is complete. Prefect's
own result cache is switched off (``NO_CACHE``) because it would cache by task inputs inside Prefect's
database: it would survive a deleted workdir (returning references to folders that are gone) and
could not see a forced recompute. Keys never include the run id, so a new run finds old artifacts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasks.artifacts import ArtifactRef, ArtifactStore, config_hash, stage_key, to_dict
from tasks.parallel import ensure_ray


class MissingArtifactError(RuntimeError):
    """An upstream stage that should come from the cache has no complete artifact for this config."""


class ReconciliationError(RuntimeError):
    """A stage's counts do not add up: rows in != rows out + filtered + quarantined."""


@dataclass(frozen=True)
class RunContext:
    """What a stage needs to know about the run it belongs to (small and picklable)."""

    workdir: str
    run_id: str
    force: frozenset[str] = frozenset()
    """Stages to recompute even when their artifact exists."""
    cached_only: frozenset[str] = frozenset()
    """Stages that must come from the cache (upstream of --only/--from): a miss is an error."""
    ray_address: str | None = None
    ray_num_cpus: int | None = None

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.workdir)


def reconcile(stage: str, counts: dict[str, int]) -> None:
    """Every stage accounts for every row: in = out + filtered + quarantined."""
    rows_in, rows_out = counts["rows_in"], counts["rows_out"]
    dropped = counts.get("filtered", 0) + counts.get("quarantined", 0)
    if rows_in != rows_out + dropped:
        raise ReconciliationError(
            f"{stage}: rows_in {rows_in} != rows_out {rows_out} + filtered {counts.get('filtered', 0)}"
            f" + quarantined {counts.get('quarantined', 0)}"
        )


def run_stage(
    ctx: RunContext,
    stage: str,
    code_version: str,
    cfg: Any,
    inputs: list[ArtifactRef],
    compute: Callable[[Path, dict[str, Any]], None],
) -> ArtifactRef:
    """Return the stage's artifact, computing it with ``compute(tmp_dir, manifest)`` unless cached.

    ``compute`` writes its files into ``tmp_dir`` and fills ``manifest["counts"]`` (rows_in, rows_out,
    filtered, quarantined) and, where rows are dropped, ``manifest["reasons"]``.
    """
    config = to_dict(cfg)
    key = stage_key(stage, code_version, config, [ref.key for ref in inputs])
    store = ctx.store
    if stage not in ctx.force and store.is_complete(stage, key):
        return store.ref(stage, key, status="cached")
    if stage in ctx.cached_only:
        raise MissingArtifactError(
            f"stage {stage!r} has no artifact for this config (key {key}); run the pipeline without "
            f"--only/--from first, or include {stage} in the stages to run"
        )
    manifest: dict[str, Any] = {
        "stage": stage,
        "key": key,
        "code_version": code_version,
        "config": config,
        "config_hash": config_hash(config),
        "inputs": {ref.stage: ref.key for ref in inputs},
        "input_paths": {ref.stage: ref.path for ref in inputs},
        "run_id": ctx.run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": {},
    }
    ensure_ray(ctx.ray_address, ctx.ray_num_cpus)  # only a stage that computes needs Ray: cached reruns stay fast
    started = time.perf_counter()
    with store.writing(stage, key, manifest) as tmp:
        compute(tmp, manifest)
        reconcile(stage, manifest["counts"])
        manifest["seconds"] = round(time.perf_counter() - started, 3)
    return store.ref(stage, key, status="computed")
