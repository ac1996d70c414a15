"""The Ray executor on a local two-CPU Ray: resources reach Ray, a shared field travels once, an actor pool builds
each worker once, and a failed unit does not lose the others' results. Starts Ray (~10 s)."""

import sys
from functools import partial

import pytest
import ray

from tasks.executors.base import WORKER, Resources
from tasks.executors.ray_tasks import RayExecutor, split_shared
from tests.tasks.executors import units
from tests.tasks.executors.units import Counter, FailingWorker, Fails, Sees, Square


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
    with pytest.raises(ValueError, match="unit 1 fails"):
        for item in executor.map([Fails(i) for i in range(4)], Resources()):
            seen.append(item)
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
    with pytest.raises(ValueError, match="unit 1 fails"):
        for item in executor.map_stateful(FailingWorker, [Square(i) for i in range(5)], Resources(cpus=1, actors=1)):
            seen.append(item)
    assert sorted(index for index, _ in seen) == [0, 2, 3, 4]  # one actor: it went on after unit 1 failed


def test_an_actor_pool_wanting_gpus_the_cluster_lacks_is_an_error(executor):
    with pytest.raises(ValueError, match="want 1.0 GPU each and the Ray cluster has 0"):
        list(executor.map_stateful(partial(Counter, 0), [Square(0)], Resources(gpus=1.0)))
