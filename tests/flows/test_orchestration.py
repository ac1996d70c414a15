"""What Prefect does around the stages (flows/orchestration.py): whole-stage retries on transient failures only,
the GPU tag, the result cache off, the run's artifacts; and the step progress lines (tasks/stages/progress.py).
The retry tests run real Prefect flows (its ephemeral server)."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import ray.exceptions
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.config import ConfigError, RetryConfig, RunConfig, load_config
from flows.orchestration import GPU_TAG, stage_options, stage_rows, transient
from flows.pipeline import STEPS
from tasks.stages.common import MissingArtifactError, PartFailedError, ReconciliationError
from tasks.stages.progress import StepProgress, eta_text


def part_failed(cause: BaseException, out_of_memory: bool) -> PartFailedError:
    """What StageRun raises for part 2 of 3 of ingest's read step, after ``cause``."""
    return PartFailedError("ingest", "read", 1, 3, "IngestPart", 4 if out_of_memory else 1, out_of_memory, cause)


KILLED = ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")
"""What Ray raises for a task its memory monitor killed (transient on its own: Ray lost a worker)."""


@pytest.mark.parametrize(("error", "expected"), [
    (ConnectionResetError("reset by peer"), True),
    (TimeoutError("read timed out"), True),
    (OSError(28, "No space left on device"), True),
    (FileNotFoundError("no such file"), False),
    (PermissionError("denied"), False),
    (ValueError("bad value"), False),
    (ConfigError("train.x: unknown key"), False),
    (ReconciliationError("rows_in 3 != rows_out 2"), False),
    (MissingArtifactError("no artifact"), False),
    (ray.exceptions.WorkerCrashedError(), True),
    (ray.exceptions.NodeDiedError("node died"), True),
    (ray.exceptions.RayTaskError("unit", "tb", ConnectionError("reset")), True),
    (ray.exceptions.RayTaskError("unit", "tb", KeyError("uid")), False),
    (part_failed(KILLED, out_of_memory=True), False),  # its retries are spent: the stage would meet the same
    (part_failed(ray.exceptions.RayTaskError("unit", "tb", ConnectionError("reset")), False), True),
    (part_failed(ray.exceptions.RayTaskError("unit", "tb", KeyError("uid")), False), False),
])
def test_a_failure_is_transient_only_when_a_retry_may_pass(error, expected):
    assert transient(error) is expected


def test_stage_options_come_from_the_config_and_gpu_stages_carry_the_tag():
    cfg = load_config(None, ["retries.retries=2", "retries.stages.train=0", "retries.delay_seconds=0.5",
                             "resources.embed.gpus=0"])
    options = {stage: stage_options(stage, cfg) for stage in STEPS}
    assert {s: o["retries"] for s, o in options.items()} == {**dict.fromkeys(STEPS, 2), "train": 0}
    assert {o["retry_delay_seconds"] for o in options.values()} == {0.5}
    tagged = {s for s, o in options.items() if GPU_TAG in o["tags"]}
    assert tagged == {"cluster", "train", "eval"}  # embed was told to take no GPU
    with pytest.raises(ConfigError, match="retries.stages"):
        load_config(None, ["retries.stages.trian=1"])


def test_every_stage_task_keeps_prefects_result_cache_off():
    """The artifact store is the only cache: nothing Prefect holds can point at an artifact gc deleted."""
    for stage, (stage_task, _) in STEPS.items():
        assert stage_task.cache_policy is NO_CACHE, stage
        assert stage_task.persist_result is False, stage
        assert stage_task.retries == 0, stage  # the pipeline's per-run options add the stage retries


def _flaky(error: BaseException, calls: list[int]):
    @task(cache_policy=NO_CACHE, persist_result=False)
    def stage_body() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return "artifact"

    return stage_body


@pytest.mark.parametrize(("error", "runs", "completes"), [
    (ConnectionResetError("the object store reset the connection"), 2, True),
    (ReconciliationError("rows_in 3 != rows_out 2"), 1, False),
    (part_failed(KILLED, out_of_memory=True), 1, False),
])
def test_prefect_retries_a_whole_stage_only_after_a_transient_failure(error, runs, completes):
    calls: list[int] = []
    cfg = replace(RunConfig(), retries=RetryConfig(retries=3, delay_seconds=0))
    stage_body = _flaky(error, calls).with_options(**stage_options("shard", cfg))

    @flow(persist_result=False)
    def one_stage() -> str:
        return stage_body()

    if completes:
        assert one_stage() == "artifact"
    else:
        with pytest.raises(type(error)):
            one_stage()
    assert len(calls) == runs


def test_the_stage_table_has_status_seconds_rows_and_cached():
    report = {"stages": {"ingest": {"status": "cached", "seconds": 0.1, "rows_in": 10, "rows_out": 9, "filtered": 1,
                                    "quarantined": 0, "key": "k1"},
                         "filter": {"status": "computed", "seconds": 2.5, "rows_in": 9, "rows_out": 7,
                                    "filtered": 2, "quarantined": 0, "key": "k2"}}}
    rows = stage_rows(report)
    assert [(r["stage"], r["status"], r["cached"], r["rows_in"], r["rows_out"]) for r in rows] == [
        ("ingest", "cached", True, 10, 9), ("filter", "computed", False, 9, 7)]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_step_progress_in_a_log_writes_a_line_now_and_then_and_at_the_end():
    clock, log = Clock(), io.StringIO()
    progress = StepProgress("ingest", "read", total=10, reused=2, stream=log, clock=clock)
    for _ in range(8):
        clock.now += 4.0  # 4 s a part: a line every LOG_EVERY = 15 s, and the last
        progress.advance()
    lines = log.getvalue().splitlines()
    assert lines[0] == "ingest read: 6/10 parts (2 reused), 0.25 parts/s, ETA 16s"
    assert lines[-1] == "ingest read: 10/10 parts (2 reused), 0.25 parts/s, done in 32s"
    assert len(lines) == 2  # at 16 s (15 s after the start) and at the end


def test_step_progress_on_a_terminal_updates_one_line():
    clock, term = Clock(), Terminal()
    progress = StepProgress("shard", "shard", total=3, reused=0, stream=term, clock=clock)
    for _ in range(3):
        clock.now += 70.0
        progress.advance()
    out = term.getvalue()
    assert out.count("\n") == 1 and out.endswith("shard: 3/3 parts, 0.01 parts/s, done in 3m30s\n")
    assert out.count("\r") == 3 and "1/3 parts, 0.01 parts/s, ETA 2m20s" in out
    assert eta_text(3 * 3600 + 65) == "3h01m"
