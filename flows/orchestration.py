"""What Prefect does around the stages: whole-stage retries for transient failures, the GPU concurrency limit,
and the run's Prefect artifacts (the report as Markdown, the stage table).

The artifact store stays the only cache: every stage task is ``cache_policy=NO_CACHE`` with its result not
persisted, so nothing Prefect holds can point at an artifact ``curaclip gc`` deleted, and a task's result is an
:class:`~tasks.store.artifacts.ArtifactRef` (a few hundred bytes), never data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows.config import RunConfig
from tasks.stages.common import PartFailedError

GPU_TAG = "curaclip-gpu"
"""The tag of every stage task that may hold a GPU. Prefect limits the task runs of a tag once a limit exists:
``prefect concurrency-limit create curaclip-gpu 1`` lets one such stage of all runs on the server at a time."""
GPU_STAGES = ("embed", "cluster", "train", "eval")
"""Stages whose units take GPUs when the cluster has them (tasks.executors.base.StageResources)."""

PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
"""OSErrors a retry would meet again: a missing input or a path that cannot be used. Other OSErrors (a reset
connection, a timeout, a full disk being cleaned, an object store's 5xx) are worth one more try."""


def transient(error: BaseException | None) -> bool:
    """Whether a stage's failure may pass on a retry: an I/O or network error, or Ray losing a worker, a node or
    an object (those left after Ray's own retries). A config error, a failed reconciliation, a missing upstream
    artifact or a bug in a stage would fail the same way again; so would a part that ran out of memory, since
    the executor has already spent its retries on it (tasks.executors.ray_tasks.RETRIED). Another failed part
    is judged by what its unit raised."""
    if error is None:
        return False
    if isinstance(error, PartFailedError):
        return not error.out_of_memory and transient(error.cause)
    if isinstance(error, OSError):
        return not isinstance(error, PERMANENT_OS_ERRORS)
    try:
        from ray import exceptions as ray_errors
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    lost = (ray_errors.WorkerCrashedError, ray_errors.NodeDiedError, ray_errors.ObjectLostError,
            ray_errors.OutOfMemoryError, ray_errors.ActorDiedError, ray_errors.RaySystemError,
            ray_errors.GetTimeoutError)
    if isinstance(error, lost):
        return True
    cause = getattr(error, "cause", None)  # a RayTaskError wraps what the unit raised
    return isinstance(error, ray_errors.RayTaskError) and cause is not error and transient(cause)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry the stage only when it failed with a :func:`transient` error."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as error:  # noqa: BLE001 - the failure is what is judged
        return transient(error)
    return False


def stage_options(stage: str, cfg: RunConfig) -> dict[str, Any]:
    """The ``Task.with_options`` of a stage in this run: its retries and their delay, and the GPU tag."""
    gpu = stage in GPU_STAGES and (stage == "train" or cfg.resources.of(stage).gpus != 0)
    return {"retries": cfg.retries.of(stage), "retry_delay_seconds": cfg.retries.delay_seconds,
            "retry_condition_fn": retry_if_transient, "tags": [GPU_TAG] if gpu else []}


REPORT_KEY = "curaclip-report"
STAGES_KEY = "curaclip-stages"


def stage_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The stage table of a run report: one row per stage (status, seconds, rows in and out, cached or
    computed)."""
    return [{"stage": stage, "status": s["status"], "cached": s["status"] == "cached", "seconds": s["seconds"],
             "rows_in": s["rows_in"], "rows_out": s["rows_out"], "filtered": s["filtered"],
             "quarantined": s["quarantined"], "key": s["key"]} for stage, s in report["stages"].items()]


def publish_artifacts(report: Mapping[str, Any], markdown: str) -> None:
    """The run's Prefect artifacts, on the flow run: ``report.md`` as Markdown and the stage table. Called inside
    the pipeline flow; outside a flow run (a library call) Prefect would have nowhere to put them."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    run = report["run_id"]
    create_markdown_artifact(markdown=markdown, key=REPORT_KEY, description=f"curaclip run {run}: report.md")
    create_table_artifact(table=stage_rows(report), key=STAGES_KEY, description=f"curaclip run {run}: stages")
