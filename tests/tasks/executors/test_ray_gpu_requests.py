"""GPU requests on a Ray cluster that declares two GPUs (Ray schedules by the declared count; no GPU is needed
to check what each unit, actor and job asks for and is given). Starts Ray (~10 s)."""

import sys
from functools import partial

import pytest
import ray

from tasks.executors.base import Resources, StageResources, resolve_gpus
from tasks.executors.ray_cluster import WORKER_ENV
from tasks.executors.ray_tasks import RayExecutor
from tests.tasks.executors import units
from tests.tasks.executors.units import Counter, Sees, Square


@pytest.fixture(scope="module")
def executor():
    ray.shutdown()
    # address="local", as ensure_ray: never a cluster record a killed `ray start` left on the machine
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": dict(WORKER_ENV)})
    ex = RayExecutor()  # joins the Ray just started
    ray.cloudpickle.register_pickle_by_value(sys.modules[units.__name__])
    yield ex
    ray.shutdown()


def test_resolve_gpus_keeps_explicit_counts_and_decides_auto_from_the_nodes():
    assert resolve_gpus(Resources(gpus=0.25), [8.0], whole_job=True).gpus == 0.25
    assert resolve_gpus(Resources(gpus=None), [], whole_job=False).gpus == 0
    assert resolve_gpus(Resources(gpus=None), [0.0, 0.0], whole_job=True).gpus == 0
    assert resolve_gpus(Resources(gpus=None), [0.0, 4.0], whole_job=False).gpus == 1
    assert resolve_gpus(Resources(gpus=None), [2.0, 4.0], whole_job=True).gpus == 4  # one node's, the largest


def test_the_stages_that_run_models_or_faiss_ask_for_gpus_by_default():
    stages = StageResources()
    assert stages.embed.gpus is None and stages.cluster.gpus is None and stages.eval.gpus is None
    assert stages.ingest.gpus == 0 and stages.shard.gpus == 0


def test_an_auto_unit_gets_one_gpu_and_sees_only_it(executor):
    results = dict(executor.map([Sees([], i) for i in range(2)], Resources(gpus=None)))
    assert all(r["resources"]["GPU"] == 1 for r in results.values())
    assert all(r["cuda_visible"] in ("0", "1") for r in results.values())  # Ray hides the other GPU


def test_an_auto_job_gets_the_node_s_gpus(executor):
    job = executor.job_resources(Resources(gpus=None))
    assert job.gpus == 2
    results = dict(executor.map([Sees([], 0)], job))
    assert results[0]["resources"]["GPU"] == 2 and sorted(results[0]["cuda_visible"].split(",")) == ["0", "1"]


def test_an_auto_actor_pool_puts_one_actor_on_each_gpu(executor):
    assert RayExecutor.pool_size(6, Resources(cpus=0.5, gpus=1.0)) == 2  # the two GPUs bound it, not the CPUs
    results = dict(executor.map_stateful(partial(Counter, 0), [Square(i) for i in range(4)],
                                         Resources(cpus=0.5, gpus=None)))
    assert len(results) == 4 and len({r["worker"] for r in results.values()}) == 2
