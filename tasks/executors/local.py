"""The in-process executor: every unit runs here, one after the other, in order.

For stepping through a stage in a debugger and for the stage unit tests; a stateful worker is built once.
Resources are not reserved (there is nothing to reserve them from), and the torch thread count is left
as the process has it.

Each unit runs once, a MemoryError included: unlike a Ray task, which a retry may place on another node or
after its neighbours have finished, a unit here has nothing running beside it whose memory a retry could wait
for, so it would fail the same way again. A failure raises ``UnitFailedError(index, attempts=1)`` at once; the
units after it do not run.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from tasks.executors.base import WORKER, Resources, Result, Unit, UnitFailedError, Worker
from tasks.faults import checkpoint_pauses, pause_point
from tasks.store.workdir import MirroredWorker, WorkdirSpec, in_mirror

HERE = f"local:{socket.gethostname()}"


def once(index: int, run: Callable[..., Result], *args: Any) -> Result:
    """``run(*args)``, its failure raised as unit ``index``'s after one attempt."""
    try:
        return run(*args)
    except Exception as err:
        raise UnitFailedError(index, 1, isinstance(err, MemoryError)) from err


class LocalExecutor:
    def __init__(self, workdir: WorkdirSpec | None = None):
        self.workdir = workdir
        """An object-store workdir: each unit's files move between the store and this process's mirror."""

    def map(self, units: Sequence[Unit], resources: Resources) -> Iterator[tuple[int, Result]]:
        for index, unit in enumerate(units):
            pause_point("unit", type(unit).__name__)
            yield index, {**once(index, in_mirror, self.workdir, None, lambda u: u.run(), unit), WORKER: HERE}

    def map_stateful(self, worker: Callable[[], Worker], units: Sequence[Any], resources: Resources
                     ) -> Iterator[tuple[int, Result]]:
        if not units:
            return
        process = MirroredWorker(self.workdir, None, worker)
        for index, unit in enumerate(units):
            pause_point("unit", type(unit).__name__)
            yield index, {**once(index, process, unit), WORKER: HERE}

    def job_resources(self, resources: Resources) -> Resources:
        return replace(resources, cpus=resources.job_cpus or float(os.cpu_count() or 1))

    def train(self, cfg: Any, shards: str, out_dir: str) -> Result:
        """One rank, here, on every CPU of the machine; several ranks need Ray Train (executor: ray)."""
        from training.jobs import TrainJob, print_progress  # torch only for the stage that trains

        if cfg.distribution.ranks != 1:
            raise ValueError(f"train.distribution.ranks={cfg.distribution.ranks}: several ranks train with Ray Train;"
                             " set executor: ray")
        job = TrainJob(cfg, shards, out_dir, threads=os.cpu_count() or 1)
        summary = in_mirror(self.workdir, None, lambda j: j.run(print_progress("train"), checkpoint_pauses()), job)
        return {**summary, "ranks": 1, "workers": [HERE]}
