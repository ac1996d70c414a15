"""Small units and workers for the executor tests (Ray workers get this module by value)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Square:
    x: int

    def run(self) -> dict:
        return {"square": self.x * self.x}


@dataclass(frozen=True)
class Fails:
    x: int

    def run(self) -> dict:
        if self.x == 1:
            raise ValueError("unit 1 fails")
        return {"x": self.x}


@dataclass(frozen=True)
class Sees:
    """Reports what the worker got: the shared payload's size and the resources Ray assigned it."""

    payload: Any
    x: int

    def run(self) -> dict:
        import ray

        return {"payload": len(self.payload), "x": self.x,
                "resources": ray.get_runtime_context().get_assigned_resources(),
                "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


class Counter:
    """A stateful worker: records which instance (and process) processed each unit."""

    builds = 0

    def __init__(self, offset: int):
        Counter.builds += 1
        self.offset = offset
        self.token = f"{os.getpid()}-{id(self)}"

    def __call__(self, unit: Square) -> dict:
        return {"value": unit.x + self.offset, "worker": self.token}


class FailingWorker:
    """A stateful worker that fails on unit 1 only."""

    def __call__(self, unit: Square) -> dict:
        if unit.x == 1:
            raise ValueError("unit 1 fails")
        return {"x": unit.x}


@dataclass(frozen=True)
class Attempts:
    """Counts its attempts in the file it writes, ``out`` (a line each), and fails its first ``failures`` of them
    (-1: every one): with a real MemoryError (``fails="memory"``: asks numpy for more memory than any machine
    has, refused at once) or a ValueError (``fails="value"``); otherwise returns what Square would."""

    x: int
    out: str
    failures: int = 0
    fails: str = "memory"

    def run(self) -> dict:
        import numpy as np

        with open(self.out, "a") as log:
            log.write("attempt\n")
        with open(self.out) as log:
            attempt = len(log.read().splitlines())
        if self.failures < 0 or attempt <= self.failures:
            if self.fails == "value":
                raise ValueError(f"unit {self.x} has a bad row")
            np.empty(1 << 50, dtype=np.uint8)  # 1 PiB: numpy raises MemoryError (_ArrayMemoryError)
        return {"square": self.x * self.x}


class RunsUnits:
    """A stateful worker that runs each unit it is given (Attempts' failures happen in the actor)."""

    def __call__(self, unit: Attempts) -> dict:
        return unit.run()
