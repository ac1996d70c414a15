"""The executor contract: units, stateful workers, per-stage resources, and the Executor protocol.

Free of Ray and Prefect: the in-process executor, the stage plumbing and the tests use it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

Result = dict[str, Any]
"""What a unit returns: counts and other small JSON values (a path, a shard number), never data."""

WORKER = "_worker"
"""The key an executor adds to each unit's result: which machine ran it (a Ray node id, or "local:<host>" for the
in-process executor); the stage lists them in its manifest's ``workers``."""


class Unit(Protocol):
    """A typed description of one piece of a stage's work: its inputs and outputs as fields."""

    def run(self) -> Result: ...


Worker = Callable[[Any], Result]
"""A stateful unit's processor: built once per process or actor (it loads a model), then called per unit."""


@dataclass(frozen=True)
class Resources:
    """What each unit (Ray task) or actor of a stage reserves; the in-process executor runs one at a time."""

    cpus: float = 1.0
    """CPUs per unit or actor."""
    gpus: float | None = 0.0
    """GPUs per unit or actor (fractions share a GPU); None ("auto"): one per unit or actor, and a node's all for
    a whole-data job, when the Ray cluster has GPUs, none otherwise (see resolve_gpus)."""
    memory_gb: float | None = None
    """memory Ray reserves per unit or actor, in GiB; None reserves none (Ray's default)."""
    actors: int | None = None
    """actors of a stateful stage (embed); None: as many as the cluster's CPUs (or GPUs) fit, at most one per
    unit."""
    job_cpus: float | None = None
    """CPUs of a stage's single whole-data job (bootstrap training, the k-means fit, eval); None: the CPUs of the
    cluster's largest node (a task runs on one node)."""


@dataclass(frozen=True)
class StageResources:
    """Resources per stage (the `resources:` block of the run config). Not part of any cache key: where work
    runs does not change what it computes. Training's ranks and GPUs are `train`'s own settings, since the
    number of ranks changes the contrastive batch and so the result."""

    ingest: Resources = field(default_factory=Resources)
    filter: Resources = field(default_factory=Resources)
    curate: Resources = field(default_factory=Resources)
    rewrite: Resources = field(default_factory=Resources)
    longcap: Resources = field(default_factory=Resources)
    embed: Resources = field(default_factory=lambda: Resources(gpus=None))
    """the embedding actors: a GPU each when the cluster has GPUs."""
    cluster: Resources = field(default_factory=lambda: Resources(gpus=None))
    """the k-means fit (a node's GPUs, faiss shards across them) and the assignment tasks (a GPU each)."""
    shard: Resources = field(default_factory=Resources)
    eval: Resources = field(default_factory=lambda: Resources(gpus=None))
    """the eval job: a node's GPUs when present (it encodes on the first)."""

    def of(self, stage: str) -> Resources:
        return getattr(self, stage, Resources())


def resolve_gpus(resources: Resources, node_gpus: Sequence[float], whole_job: bool) -> Resources:
    """``resources`` with ``gpus`` decided: an explicit number stays; None becomes 0 on a cluster without GPUs,
    else 1 per unit or actor, or for a whole-data job the GPUs of the cluster's largest GPU node (a task runs on
    one node). ``node_gpus``: the GPUs of each alive node."""
    if resources.gpus is not None:
        return resources
    most = max(node_gpus, default=0.0)
    return replace(resources, gpus=0.0 if most <= 0 else (float(most) if whole_job else 1.0))


ExecutorKind = Literal["ray", "local"]


class UnitFailedError(Exception):
    """A unit failed for good, after every attempt its executor makes; raised ``from`` what the unit raised.

    The stage turns it into a ``PartFailedError`` naming the stage, the step and the part
    (tasks.stages.common)."""

    def __init__(self, index: int, attempts: int | None, out_of_memory: bool):
        super().__init__(f"unit {index} failed after {attempts or 'an unknown number of'} attempt(s)")
        self.index = index
        """its index in the units given to ``map`` or ``map_stateful``"""
        self.attempts = attempts
        """how often it ran; None where the executor cannot tell (Ray retries a kill by its memory monitor by a
        policy of its own)"""
        self.out_of_memory = out_of_memory
        """whether it failed for want of memory (a MemoryError, or Ray's memory monitor killed it)"""


class Executor(Protocol):
    """Runs units and yields ``(index in units, result)`` as each finishes, in any order.

    A unit that fails raises :class:`UnitFailedError` out of the iterator; the results already yielded stand
    (the stage has marked those parts done, so a rerun does not redo them)."""

    def map(self, units: Sequence[Unit], resources: Resources) -> Iterator[tuple[int, Result]]: ...

    def map_stateful(self, worker: Callable[[], Worker], units: Sequence[Any], resources: Resources
                     ) -> Iterator[tuple[int, Result]]: ...

    def job_resources(self, resources: Resources) -> Resources:
        """``resources`` with ``cpus`` set for a single whole-data job (``job_cpus``, else the cluster's)."""
        ...

    def train(self, cfg: Any, shards: str, out_dir: str) -> Result:
        """The train stage's run of ``cfg`` (a TrainConfig) on a shard folder into ``out_dir``, resuming from the
        newest checkpoint there; its summary (training.jobs.TrainJob's, plus ``ranks``)."""
        ...
