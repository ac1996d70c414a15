"""Executors: how a stage's units of work run (docs/architecture.md, "The executor seam").

A unit of work is a library dataclass that describes its inputs and outputs (paths, configs) and whose
``run()`` returns its counts, a small JSON-able dict; a stateful unit is processed by a library worker
class that loads a model once (``worker(unit)``). An :class:`~tasks.executors.base.Executor` runs a list of
them and yields each result as it finishes: :class:`~tasks.executors.local.LocalExecutor` in this process
(for a debugger and for unit tests), :class:`~tasks.executors.ray_tasks.RayExecutor` as Ray tasks and Ray
actor pools. Data moves through files, never through the executor.
"""

from __future__ import annotations

from tasks.executors.base import Executor, ExecutorKind
from tasks.store.workdir import WorkdirSpec


def make_executor(kind: ExecutorKind, ray_address: str | None = None, ray_num_cpus: int | None = None,
                  workdir: WorkdirSpec | None = None) -> Executor:
    """The executor a run config names; Ray is imported (and started) only for "ray". ``workdir``: an
    object-store workdir whose files the executor moves around each unit (tasks.store.workdir), else None."""
    if kind == "local":
        from tasks.executors.local import LocalExecutor

        return LocalExecutor(workdir)
    if kind == "ray":
        from tasks.executors.ray_tasks import RayExecutor

        return RayExecutor(ray_address, ray_num_cpus, workdir)
    raise ValueError(f"unknown executor {kind!r}; choose 'ray' or 'local'")
