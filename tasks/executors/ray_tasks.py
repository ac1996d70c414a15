"""The Ray executor: units as Ray tasks, stateful units on a Ray actor pool (Ray Train: ray_train).

Ray workers run library code from ``curation/``, ``training/`` and ``eval/`` (through :func:`run_unit` and
:class:`PoolActor` below, which import nothing else); those folders never import Prefect, so no worker ever
starts a Prefect server of its own (what happens when Prefect tasks themselves are shipped to Ray workers
without ``PREFECT_API_URL``). As a second guard, workers get ``PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=false``:
were Prefect imported there after all, it would fail loudly instead of spawning a server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray

from tasks.executors.base import WORKER, Resources, Result, Unit, UnitFailedError, Worker, resolve_gpus
from tasks.executors.ray_cluster import ensure_ray, node_cpus, node_gpus
from tasks.faults import pause_point
from tasks.store.workdir import MirroredWorker, WorkdirSpec, in_mirror

RETRIES = 3
"""How often Ray reruns a unit (so it runs at most RETRIES + 1 times) whose worker process or node died (a system
failure) or that raised a MemoryError (RETRIED). Prefect retries nothing inside a stage."""
RETRIED: tuple[type[BaseException], ...] = (MemoryError,)
"""The exceptions of a unit that Ray retries. A MemoryError says the node had too little free memory then, not
that the unit is wrong: its retry may be placed on another node, or run once the tasks beside it have finished
and freed theirs. Any other exception (a bad row, a bug, a missing file) is deterministic and would fail the
same way again, so it fails the part at its first attempt. A kill by Ray's memory monitor
(``ray.exceptions.OutOfMemoryError``) Ray retries itself, by its own count (``RAY_task_oom_retries``)."""


def ray_options(resources: Resources) -> dict[str, Any]:
    """Ray's task/actor options for ``resources``."""
    options: dict[str, Any] = {"num_cpus": resources.cpus, "num_gpus": resources.gpus}
    if resources.cpus > max(node_cpus(), default=0.0):
        raise ValueError(f"a unit asks for {resources.cpus:g} CPUs and the largest node of the Ray cluster has "
                         f"{max(node_cpus(), default=0.0):g}: lower resources.<stage>.cpus or job_cpus")
    if resources.memory_gb is not None:
        options["memory"] = int(resources.memory_gb * 2**30)
    return options


def this_node() -> str:
    return ray.get_runtime_context().get_node_id()


def run_unit(workdir: WorkdirSpec | None, unit: Unit, names: tuple[str, ...], *shared: Any) -> Result:
    """A unit's ``run()`` in a Ray worker, with the fields every unit shared put back (see :func:`split_shared`)
    and, for an object-store workdir, its files moved between the store and this node's mirror."""
    unit = dataclasses.replace(unit, **dict(zip(names, shared))) if names else unit
    pause_point("unit", type(unit).__name__)
    return {**in_mirror(workdir, this_node(), lambda u: u.run(), unit), WORKER: this_node()}


def split_shared(units: Sequence[Any]) -> tuple[list[Any], tuple[str, ...], list[Any]]:
    """(units without their shared fields, the shared fields' names, those fields' object-store references).

    A field that every unit holds as the same object (a built matcher, the balancing probabilities) goes to
    Ray's object store once: Ray would otherwise serialise it again for every task."""
    if len(units) < 2 or len({type(u) for u in units}) > 1 or not dataclasses.is_dataclass(units[0]):
        return list(units), (), []
    first = units[0]
    names = tuple(f.name for f in dataclasses.fields(first)
                  if not isinstance(getattr(first, f.name), (str, int, float, bool, type(None)))
                  and all(getattr(u, f.name) is getattr(first, f.name) for u in units))
    refs = [ray.put(getattr(first, name)) for name in names]
    stripped = [dataclasses.replace(u, **{name: None for name in names}) for u in units]
    return stripped, names, refs


def out_of_memory(error: BaseException) -> bool:
    """Whether a task failed for want of memory: it raised a MemoryError, or Ray's memory monitor killed it."""
    return isinstance(error, (MemoryError, ray.exceptions.OutOfMemoryError)) or isinstance(
        getattr(error, "cause", None), MemoryError)


def attempts(error: BaseException) -> int | None:
    """How often Ray ran a unit that failed with ``error``: once for an exception it does not retry, RETRIES + 1
    times for a retried one or a system failure; None after a kill by the memory monitor (Ray's own count)."""
    if isinstance(error, ray.exceptions.OutOfMemoryError):
        return None
    raised = error.cause if isinstance(error, ray.exceptions.RayTaskError) else None
    return 1 if raised is not None and not isinstance(raised, RETRIED) else RETRIES + 1


def drain(pending: dict[Any, tuple[int, Any]], on_done: Callable[[Any], None]) -> Iterator[tuple[int, Result]]:
    """Yield ``(index, result)`` as each task finishes (``pending[ref]`` is ``(index, anything)``), calling
    ``on_done(pending[ref])`` after each.

    A failed task does not stop the others: they run to the end and their results are yielded (so the stage
    marks those parts done), then the first failure is raised as a :class:`UnitFailedError`; an actor that died
    gets no more work. Closed early (marking a part failed), it cancels what is still pending."""
    failure: tuple[int, BaseException] | None = None
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            key = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as err:  # noqa: BLE001  (re-raised once the others have finished)
                failure = failure or (key[0], err)
                if not isinstance(err, ray.exceptions.RayActorError):
                    on_done(key)
                continue
            on_done(key)
            yield key[0], result
    finally:
        for ref in list(pending):
            ray.cancel(ref)
    if failure is not None:
        index, err = failure
        raise UnitFailedError(index, attempts(err), out_of_memory(err)) from err


class PoolActor:
    """One actor of a stateful pool: builds its worker (loads the model) once, then processes units."""

    def __init__(self, worker: Callable[[], Worker], workdir: WorkdirSpec | None = None):
        self.process = MirroredWorker(workdir, this_node(), worker)

    @ray.method(retry_exceptions=list(RETRIED))  # with the actor's max_task_retries, as a task's max_retries
    def run(self, unit: Any) -> Result:
        pause_point("unit", type(unit).__name__)
        return {**self.process(unit), WORKER: this_node()}


class RayExecutor:
    """Units as Ray tasks (``resources`` per task); stateful units on a pool of actors (``resources`` per actor)."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, workdir: WorkdirSpec | None = None):
        ensure_ray(address, num_cpus)
        self.workdir = workdir

    def map(self, units: Sequence[Unit], resources: Resources) -> Iterator[tuple[int, Result]]:
        options = ray_options(resolve_gpus(resources, node_gpus(), whole_job=False))
        remote = ray.remote(**options, max_retries=RETRIES, retry_exceptions=list(RETRIED))(run_unit)
        stripped, names, refs = split_shared(units)
        pending = {remote.remote(self.workdir, unit, names, *refs): (i, None) for i, unit in enumerate(stripped)}
        yield from drain(pending, lambda key: None)

    def map_stateful(self, worker: Callable[[], Worker], units: Sequence[Any], resources: Resources
                     ) -> Iterator[tuple[int, Result]]:
        if not units:
            return
        resources = resolve_gpus(resources, node_gpus(), whole_job=False)
        # A dead actor (its process or node lost) is restarted, on another node if need be, and its unit retried;
        # so is a unit that raised a MemoryError (PoolActor.run), on the same actor.
        actor_cls = ray.remote(**ray_options(resources), max_restarts=RETRIES, max_task_retries=RETRIES)(PoolActor)
        actors = [actor_cls.remote(worker, self.workdir) for _ in range(self.pool_size(len(units), resources))]
        queue = list(enumerate(units))
        pending: dict[Any, tuple[int, Any]] = {}
        try:
            for actor in actors:
                if queue:
                    index, unit = queue.pop(0)
                    pending[actor.run.remote(unit)] = (index, actor)
            def refill(actor: Any) -> None:
                if queue:
                    index, unit = queue.pop(0)
                    pending[actor.run.remote(unit)] = (index, actor)

            yield from drain(pending, lambda key: refill(key[1]))
        finally:
            for actor in actors:
                ray.kill(actor)

    @staticmethod
    def pool_size(units: int, resources: Resources) -> int:
        """``resources.actors``, else as many actors as the cluster's CPUs (or GPUs) hold, at most one per unit."""
        if resources.actors is not None:
            return max(1, min(resources.actors, units))
        available = ray.cluster_resources()
        fits = [available.get("CPU", 1) / resources.cpus] if resources.cpus > 0 else []
        if resources.gpus > 0:
            if available.get("GPU", 0) < resources.gpus:
                raise ValueError(f"the stage's actors want {resources.gpus} GPU each and the Ray cluster has "
                                 f"{available.get('GPU', 0)}: lower resources.<stage>.gpus or add GPU nodes")
            fits.append(available.get("GPU", 0) / resources.gpus)
        return max(1, min(units, int(min(fits)) if fits else units))

    def job_resources(self, resources: Resources) -> Resources:
        """A whole-data job: ``job_cpus``, else the CPUs of the cluster's largest node (a task runs on one node)."""
        resources = resolve_gpus(resources, node_gpus(), whole_job=True)
        return dataclasses.replace(resources, cpus=resources.job_cpus or max(1.0, max(node_cpus(), default=1.0)))

    def train(self, cfg: Any, shards: str, out_dir: str) -> Result:
        """One rank as a retried Ray task, several through Ray Train (tasks.executors.ray_train)."""
        from tasks.executors.ray_train import (
            train_distributed,  # Ray Train's import is heavy: only the train stage pays it
        )

        return train_distributed(cfg, shards, out_dir, workdir=self.workdir)
