"""The end-to-end Prefect flow: ten stage tasks wired in order, then the catalog and the report.

Without ``PREFECT_API_URL`` the flow runs in Prefect's ephemeral local mode; with it, it reports to
that server (deployments and schedules: ``infra/prefect.yaml``). The flow holds no data: tasks pass
:class:`~tasks.store.artifacts.ArtifactRef` references only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import Task, flow

from flows.config import RunConfig
from flows.orchestration import publish_artifacts, stage_options
from flows.plan import RunPlan, plan_run
from tasks.stages import captions, cluster, curate, embed, ingest, shard, train
from tasks.stages import eval as eval_stage
from tasks.stages import filter as filter_stage
from tasks.stages.common import EmptyPoolError, RunContext
from tasks.store import workdir as W
from tasks.store.artifacts import ArtifactRef, config_hash
from tasks.store.catalog import build_catalog
from tasks.store.lifetime import record_failure
from tasks.store.report import write_report
from tasks.store.workdir_lock import hold, new_run_id

Refs = dict[str, ArtifactRef]


@contextmanager
def _after(error: BaseException, what: str) -> Iterator[None]:
    """Write ``what`` after the run failed with ``error``, without hiding ``error``: on a full disk the failure
    record and the catalog fail too, and the stage's own error is the one to report (issue 15)."""
    try:
        yield
    except Exception as also:  # noqa: BLE001 - reported, then the run's own error is raised
        print(f"curaclip: could not write {what} after the run failed ({type(error).__name__}): "
              f"{type(also).__name__}: {' '.join(str(also).split())}", file=sys.stderr)


def synthetic_pool(cfg: RunConfig) -> bool:
    """Whether every ingest source is the synthetic world (its truth then feeds curate's metadata and the
    cluster stage's agreement with the true classes)."""
    return all(s.format == "synthetic" for s in cfg.ingest.sources)


STEPS: dict[str, tuple[Task, Callable[[RunConfig, Refs], tuple]]] = {
    "ingest": (ingest.ingest, lambda cfg, refs: (cfg.ingest,)),
    "filter": (filter_stage.filter_, lambda cfg, refs: (cfg.filter, refs["ingest"])),
    "curate": (curate.curate, lambda cfg, refs: (cfg.curate, refs["filter"], synthetic_pool(cfg))),
    "embed": (embed.embed, lambda cfg, refs: (cfg.embed, cfg.train, refs["curate"])),
    "cluster": (cluster.cluster, lambda cfg, refs: (cfg.cluster, refs["embed"], cfg.embed,
                                                    refs["ingest"] if synthetic_pool(cfg) else None)),
    "rewrite": (captions.rewrite, lambda cfg, refs: (cfg.rewrite, refs["cluster"])),
    "longcap": (captions.longcap, lambda cfg, refs: (cfg.longcap, refs["rewrite"], refs["ingest"])),
    "shard": (shard.shard, lambda cfg, refs: (cfg.shard, refs["longcap"])),
    "train": (train.train, lambda cfg, refs: (cfg.train, refs["shard"], refs.get("curate"), refs.get("cluster"))),
    "eval": (eval_stage.evaluate, lambda cfg, refs: (cfg.eval, cfg.ingest, cfg.train, refs["train"])),
}
"""Each stage's task, and its arguments after the run context from the config and the references of the stages
before it. The pipeline calls the task with this run's options (flows.orchestration.stage_options)."""

DRY_RUNS: dict[str, Callable[[RunContext, RunConfig, Refs], dict]] = {
    "rewrite": lambda ctx, cfg, refs: captions.dry_run(ctx, "rewrite", cfg.rewrite, refs["cluster"]),
    "longcap": lambda ctx, cfg, refs: captions.dry_run(ctx, "longcap", cfg.longcap, refs["rewrite"]),
}
"""Stages with a dry run (``--set rewrite.dry_run=true``): the run estimates the stage's requests and stops there,
since the stages after it need its output."""


SAMPLE_STAGES = ("ingest", "filter", "curate", "embed", "cluster", "rewrite", "longcap", "shard")
"""Stages whose output is the sample set the next stages work on."""


def check_not_empty(ref: ArtifactRef, stages: tuple[str, ...]) -> None:
    """Stop the run with a clear error when a sample stage kept nothing and more stages follow. The stage's
    artifact is published first, so its quarantine and filtered rows stay queryable (`curaclip stats`)."""
    counts = ref.counts
    if ref.stage not in SAMPLE_STAGES or counts.get("rows_out", 0) > 0 or ref.stage == stages[-1]:
        return
    raise EmptyPoolError(
        f"{ref.stage} kept no samples of {counts.get('rows_in', 0)} (filtered {counts.get('filtered', 0)}, "
        f"quarantined {counts.get('quarantined', 0)}): nothing for the stages after it; see why with "
        "`curaclip stats --report quarantine` or `curaclip stats --report curation`")


@flow(name="pipeline", log_prints=True, persist_result=False, validate_parameters=False)
def pipeline(
    cfg: RunConfig,
    workdir: str = "runs/default",
    only: str | None = None,
    start: str | None = None,
    force: tuple[str, ...] = (),
    wait: bool = False,
    run_id: str | None = None,
) -> dict:
    """Run (or find cached) every stage of the plan, then refresh the catalog and write the report.

    The run holds the workdir's lock (tasks/store/workdir_lock.py) from before its first stage until it returns:
    a workdir another run holds raises WorkdirBusyError, or is waited for with ``wait``. ``run_id`` (default: a new
    one) lets the CLI, which takes the lock first for a fast answer, hand over the lock it holds.

    Prefect does not validate the parameters: ``cfg`` is a RunConfig that ``load_config`` already checked against
    its type hints, and pydantic's model of this signature failed to build ("PipelineModel is not fully
    defined") when the flow ran as a subflow of a served deployment."""
    plan = plan_run(only, start, tuple(force))
    run_id = run_id or new_run_id()
    with hold(workdir, run_id, wait=wait, say=print):  # the workdir as given: a URL's lock is in the store
        return _run_plan(cfg, workdir, plan, run_id)


def _run_plan(cfg: RunConfig, workdir: str, plan: RunPlan, run_id: str) -> dict:
    started, started_at = time.perf_counter(), time.time()  # a run id's time is whole seconds: gc needs better
    url = workdir.rstrip("/") if W.is_remote(workdir) else None
    workdir = str(W.driver_mirror(url).local) if url else W.local_path(workdir)  # a store's: the driver's mirror
    ctx = RunContext(
        workdir=workdir, run_id=run_id, force=plan.force, cached_only=plan.cached_only,
        ray_address=cfg.ray.address, ray_num_cpus=cfg.ray.num_cpus, executor=cfg.executor, resources=cfg.resources,
        workdir_url=url,
    )
    refs: Refs = {}
    dry_runs: dict[str, dict] = {}
    try:
        for stage in plan.stages:
            if stage in DRY_RUNS and getattr(cfg, stage).dry_run:
                dry_runs[stage] = DRY_RUNS[stage](ctx, cfg, refs)
                break
            task, arguments = STEPS[stage]
            refs[stage] = task.with_options(**stage_options(stage, cfg))(ctx, *arguments(cfg, refs))
            check_not_empty(refs[stage], plan.stages)
    except BaseException as err:  # a failed or interrupted run is recorded too: gc keeps what it needs to resume
        with _after(err, "the run's failure record"):
            record_failure(workdir, ctx.run_id, config_hash(cfg), refs, time.perf_counter() - started, err,
                           started_at=started_at)
        with _after(err, "the catalog"):
            build_catalog(workdir, refs)
        raise
    build_catalog(workdir, refs)
    report = write_report(workdir, ctx.run_id, config_hash(cfg), refs, time.perf_counter() - started, dry_runs,
                          started_at=started_at)
    publish_artifacts(report, (Path(workdir) / "report.md").read_text())
    return report
