"""Pause points: where the crash harness (tests/flows/test_kill_matrix.py) stops a run to kill it.

A kill from outside at a random moment cannot hit a stage that takes 50 ms, so the harness names the moment
instead: with ``CURACLIP_PAUSE_AT`` set, the process that reaches the named point writes ``CURACLIP_PAUSE_FILE``
(its pid and the point) and sleeps until it is killed; the harness waits for the file, then sends SIGKILL (to the
run's whole process group, or to one Ray worker). Nothing is flushed or cleaned up at a pause, so a kill there
is a crash at that instant. Without the variable every point is a no-op (one dictionary lookup).

Points, as ``CURACLIP_PAUSE_AT`` spells them (several, comma-separated, each with its own pause file
``<CURACLIP_PAUSE_FILE>.<i>``):

- ``<stage>:<step>:<n>``: the driver has marked the n-th part of ``step`` done in this run (tasks.stages.common);
- ``<stage>:publish``: every file of the stage is written and counted, its manifest not yet (tasks.stages.common);
- ``train:checkpoint:<n>``: training has written its n-th resumable checkpoint in this run (the executors);
- ``unit:<UnitClass>``: a unit of that class starts, in the process that runs it: the driver for the in-process
  executor, a Ray worker or actor for the Ray executor (tasks.executors).

A point pauses once, in one process: when its pause file exists already (the unit was retried after the kill),
it passes, and of two units reaching it at the same moment (two parts of a step on two workers) only the one that
publishes the pause file first pauses; the other passes. (Publishing with a replacing rename let both pause while
the file named one: the harness killed that one and the run waited for ever on the other.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

PAUSE_AT = "CURACLIP_PAUSE_AT"
PAUSE_FILE = "CURACLIP_PAUSE_FILE"


def pause_point(*names: object) -> None:
    """Pause here, for good, when ``CURACLIP_PAUSE_AT`` names this point (``":".join(names)``)."""
    spec = os.environ.get(PAUSE_AT)
    if not spec:
        return
    point = ":".join(str(name) for name in names)
    points = spec.split(",")
    if point not in points:
        return
    base = os.environ[PAUSE_FILE]
    marker = Path(base if len(points) == 1 else f"{base}.{points.index(point)}")
    if marker.exists():
        return
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"pid": os.getpid(), "point": point}))
    try:
        os.link(tmp, marker)  # whole at once (the harness never reads half a file), and never over another's
    except FileExistsError:
        return  # another process reached the point first and pauses there
    finally:
        tmp.unlink()
    while True:
        time.sleep(60)


def checkpoint_pauses(then: Callable[[str | None], None] | None = None) -> Callable[[str | None], None]:
    """A training ``on_checkpoint`` hook with the ``train:checkpoint:<n>`` point after ``then`` (the executor's own
    hook, if any): rank 0 counts the checkpoints it wrote (the others are told ``None``)."""
    written = 0

    def on_checkpoint(path: str | None) -> None:
        nonlocal written
        if then is not None:
            then(path)
        if path is not None:
            written += 1
            pause_point("train", "checkpoint", written)
    return on_checkpoint
