"""The Ray executor on a local two-CPU Ray: resources reach Ray, a shared field travels once, an actor pool builds
each worker once, a failed unit does not lose the others' results, and a unit that ran out of memory is retried
while other errors are not (issue 15). Starts Ray (~10 s)."""

import sys
from functools import partial
from pathlib import Path

import pytest
import ray

from tasks.executors.base import WORKER, Resources, UnitFailedError
from tasks.executors.ray_tasks import RETRIES, RayExecutor, split_shared
from tasks.stages.common import PartFailedError, RunContext, StageRun, unit_digest
from tasks.store.artifacts import Staging
from tests.tasks.executors import units
from tests.tasks.executors.units import Attempts, Counter, FailingWorker, Fails, RunsUnits, Sees, Square


@pytest.fixture(scope="module")
def executor():
    ray.shutdown()
    ex = RayExecutor(num_cpus=2)
    ray.cloudpickle.register_pickle_by_value(sys.modules[units.__name__])  # workers need not find tests/
    yield ex
    ray.shutdown()


def test_units_run_as_tasks_with_their_resources(executor):
    payload = list(range(1000))
    results = dict(executor.map([Sees(payload, i) for i in range(3)], Resources(cpus=0.5, memory_gb=0.25)))
    assert [results[i]["x"] for i in range(3)] == [0, 1, 2]
    assert all(r["payload"] == 1000 for r in results.values())  # the shared field put back in the worker
    assert all(r["resources"]["CPU"] == 0.5 for r in results.values())
    assert all(r["resources"]["memory"] == 0.25 * 2**30 for r in results.values())


def test_a_field_every_unit_shares_goes_to_the_object_store_once(executor):
    payload = {"big": list(range(10))}
    stripped, names, refs = split_shared([Sees(payload, 0), Sees(payload, 1)])
    assert names == ("payload",) and len(refs) == 1
    assert [u.payload for u in stripped] == [None, None] and [u.x for u in stripped] == [0, 1]
    _, names, _ = split_shared([Sees({"a": 1}, 0), Sees({"a": 1}, 1)])  # equal, not the same object
    assert names == ()


def test_an_actor_pool_builds_each_worker_once(executor):
    results = dict(executor.map_stateful(partial(Counter, 100), [Square(i) for i in range(6)],
                                         Resources(cpus=1, actors=2)))
    assert sorted(r["value"] for r in results.values()) == [100, 101, 102, 103, 104, 105]
    assert len({r["worker"] for r in results.values()}) == 2  # two actors, each built once, six parts
    assert RayExecutor.pool_size(6, Resources(cpus=1)) == 2  # the two CPUs hold two actors
    assert RayExecutor.pool_size(1, Resources(cpus=1)) == 1
    assert RayExecutor.pool_size(6, Resources(cpus=0.5, actors=3)) == 3


def test_a_failed_unit_lets_the_others_finish_first(executor):
    seen = []
    with pytest.raises(UnitFailedError) as failed:
        for item in executor.map([Fails(i) for i in range(4)], Resources()):
            seen.append(item)
    assert (failed.value.index, failed.value.attempts, failed.value.out_of_memory) == (1, 1, False)
    assert isinstance(failed.value.__cause__, ValueError) and "unit 1 fails" in str(failed.value.__cause__)
    node = ray.get_runtime_context().get_node_id()  # the one node of the local cluster ran every unit
    assert sorted(seen) == [(0, {"x": 0, WORKER: node}), (2, {"x": 2, WORKER: node}), (3, {"x": 3, WORKER: node})]


def test_a_job_reserves_the_cluster_unless_told(executor):
    assert executor.job_resources(Resources()).cpus == 2
    assert executor.job_resources(Resources(job_cpus=1)).cpus == 1


def test_auto_gpus_request_none_on_a_cluster_without_gpus(executor):
    assert executor.job_resources(Resources(gpus=None)).gpus == 0
    results = dict(executor.map([Sees([], 0)], Resources(gpus=None)))
    assert "GPU" not in results[0]["resources"]


def test_a_failed_unit_on_an_actor_pool_lets_the_queue_finish(executor):
    seen = []
    with pytest.raises(UnitFailedError) as failed:
        for item in executor.map_stateful(FailingWorker, [Square(i) for i in range(5)], Resources(cpus=1, actors=1)):
            seen.append(item)
    assert failed.value.index == 1 and isinstance(failed.value.__cause__, ValueError)
    assert sorted(index for index, _ in seen) == [0, 2, 3, 4]  # one actor: it went on after unit 1 failed


def test_an_actor_pool_wanting_gpus_the_cluster_lacks_is_an_error(executor):
    with pytest.raises(ValueError, match="want 1.0 GPU each and the Ray cluster has 0"):
        list(executor.map_stateful(partial(Counter, 0), [Square(0)], Resources(gpus=1.0)))


def stage_run(executor: RayExecutor, root: Path) -> StageRun:
    """The ingest stage's StageRun, its staging area under ``root``, on the module's Ray executor."""
    run = StageRun(RunContext(workdir=str(root), run_id="oom"), "ingest", Staging(root / "staging"), {})
    run.executor = executor  # not one the context would start
    return run


def attempt_units(folder: Path, failures: int, fails: str = "memory") -> list[Attempts]:
    """Three units; the second fails its first ``failures`` attempts (-1: all)."""
    folder.mkdir()
    return [Attempts(i, str(folder / f"attempts-{i}.log"), failures if i == 1 else 0, fails) for i in range(3)]


def attempts(unit: Attempts) -> int:
    return len(Path(unit.out).read_text().splitlines())


def test_a_unit_that_ran_out_of_memory_is_retried_and_the_step_completes(executor, tmp_path, reliability):
    disturbed = attempt_units(tmp_path / "oom", failures=1)
    results = stage_run(executor, tmp_path / "oom").map("square", disturbed)
    undisturbed = stage_run(executor, tmp_path / "plain").map("square", attempt_units(tmp_path / "plain", 0))
    assert results == undisturbed == [{"square": i * i} for i in range(3)]
    assert [attempts(u) for u in disturbed] == [1, 2, 1]  # a real MemoryError in the first attempt, then done
    reliability.fault("MemoryError in a Ray task", "ray executor")


def test_a_unit_of_an_actor_pool_that_ran_out_of_memory_is_retried(executor, tmp_path, reliability):
    disturbed = attempt_units(tmp_path / "oom", failures=1)
    results = stage_run(executor, tmp_path / "oom").map_stateful("square", RunsUnits, disturbed)
    assert results == [{"square": i * i} for i in range(3)]
    assert [attempts(u) for u in disturbed] == [1, 2, 1]
    reliability.fault("MemoryError in a Ray actor task", "ray executor")


def test_a_unit_always_out_of_memory_fails_its_part_by_name_after_every_attempt(executor, tmp_path, reliability):
    units = attempt_units(tmp_path / "oom", failures=-1)
    run = stage_run(executor, tmp_path / "oom")
    with pytest.raises(PartFailedError) as failed:
        run.map("square", units)
    message = str(failed.value)
    assert message.startswith(f"stage ingest, step square: part 2 of 3 (Attempts writing {units[1].out}) ran out of "
                              f"memory after {RETRIES + 1} attempts. Raise resources.ingest.memory_gb")
    assert "more partitions (ingest.partitions" in message
    assert attempts(units[1]) == RETRIES + 1 == 4  # Ray's max_retries=3: the first attempt and three retries
    assert isinstance(failed.value.__cause__, MemoryError) and failed.value.out_of_memory
    assert [run.staging.done("square", i, unit_digest(units[i])) is not None for i in range(3)] == [True, False, True]
    reliability.fault("MemoryError in every attempt of a Ray task", "ray executor")


def test_a_unit_raising_another_error_is_attempted_once(executor, tmp_path):
    units = attempt_units(tmp_path / "bad", failures=-1, fails="value")
    with pytest.raises(PartFailedError) as failed:
        stage_run(executor, tmp_path / "bad").map("square", units)
    assert attempts(units[1]) == 1  # deterministic: a retry would raise it again
    assert isinstance(failed.value.__cause__, ValueError) and not failed.value.out_of_memory
    assert str(failed.value) == (f"stage ingest, step square: part 2 of 3 (Attempts writing {units[1].out}) failed "
                                 "after 1 attempt: ValueError: unit 1 has a bad row")
