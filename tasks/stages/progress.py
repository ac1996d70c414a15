"""Progress of a stage's step on the terminal and in Prefect: parts done of the total, rate and ETA.

On a terminal the line updates in place; in a log (stderr not a terminal: CI, a Prefect worker, `nohup`) a line is
written at most every ``LOG_EVERY`` seconds and at the end, so a long stage neither floods the log nor stays
silent. Inside a Prefect task run the same figure is a progress artifact of that run (Prefect's UI shows it as a
bar), updated at most every ``ARTIFACT_EVERY`` seconds. Parts reused from the staging area count as done from
the start; the rate and the ETA count only the parts computed in this run.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

LOG_EVERY = 15.0
ARTIFACT_EVERY = 2.0


def eta_text(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class StepProgress:
    """Parts done of ``total`` for one step of a stage; ``reused`` of them were done before this run."""

    def __init__(self, stage: str, step: str, total: int, reused: int, stream: IO[str] | None = None,
                 clock: Any = time.monotonic):
        self.label = stage if step == stage else f"{stage} {step}"
        self.total, self.reused, self.done = total, reused, reused
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.started = self.last_line = self.last_artifact = clock()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.artifact = _create_artifact(self.label, self.percent()) if total > reused else None

    def percent(self) -> float:
        return 100.0 * self.done / max(1, self.total)

    def line(self) -> str:
        computed, elapsed = self.done - self.reused, max(self.clock() - self.started, 1e-9)
        rate = computed / elapsed
        text = f"{self.label}: {self.done}/{self.total} parts"
        if self.reused:
            text += f" ({self.reused} reused)"
        if computed:
            left = self.total - self.done
            text += f", {rate:.2f} parts/s, " + (f"ETA {eta_text(left / rate)}" if left else
                                                  f"done in {eta_text(elapsed)}")
        return text

    def advance(self, parts: int = 1) -> None:
        self.done += parts
        now, finished = self.clock(), self.done >= self.total
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line() + ("\n" if finished else ""))
            self.stream.flush()
        elif finished or now - self.last_line >= LOG_EVERY:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self.last_line = now
        if self.artifact is not None and (finished or now - self.last_artifact >= ARTIFACT_EVERY):
            _update_artifact(self.artifact, self.percent(), self.line())
            self.last_artifact = now


def _create_artifact(label: str, percent: float) -> Any:
    """A Prefect progress artifact on the current task run, or None outside one (a library call, a test)."""
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:
        return None
    from prefect.artifacts import create_progress_artifact

    return create_progress_artifact(progress=percent, description=label)


def _update_artifact(artifact: Any, percent: float, text: str) -> None:
    from prefect.artifacts import update_progress_artifact

    update_progress_artifact(artifact_id=artifact, progress=percent, description=text)
