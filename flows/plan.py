"""Which stages a run computes, which must come from the cache, and which are forced.

``--only S``: run S alone; every stage before it must be cached, nothing after it runs.
``--from S``: stages before S must be cached; S and everything after run (cache-aware).
``--force S``: recompute S and every stage after it, even where their artifacts exist (a recomputed
artifact keeps its key, so without this downstream stages would be found cached).
"""

from __future__ import annotations

from dataclasses import dataclass

from flows.config import STAGES


@dataclass(frozen=True)
class RunPlan:
    stages: tuple[str, ...]
    """Stages the flow calls, in order (upstream cache lookups included)."""
    cached_only: frozenset[str]
    """Stages that must be found complete in the store."""
    force: frozenset[str]
    """Stages recomputed even when complete."""


def _check(stage: str | None, flag: str) -> None:
    if stage is not None and stage not in STAGES:
        raise ValueError(f"{flag}: unknown stage {stage!r}; stages are: {', '.join(STAGES)}")


def plan_run(only: str | None = None, start: str | None = None, force: tuple[str, ...] = ()) -> RunPlan:
    if only is not None and start is not None:
        raise ValueError("--only and --from cannot be combined")
    for flag, stage in (("--only", only), ("--from", start), *(("--force", s) for s in force)):
        _check(stage, flag)
    first = only or start
    first_index = STAGES.index(first) if first else 0
    last_index = STAGES.index(only) if only else len(STAGES) - 1
    stages = STAGES[: last_index + 1]
    forced = {s for f in force for s in STAGES[STAGES.index(f):]} & set(stages)
    cached_only = set(STAGES[:first_index]) - forced
    if forced & set(STAGES[:first_index]):
        bad = sorted(forced & set(STAGES[:first_index]), key=STAGES.index)[0]
        raise ValueError(f"--force {bad} conflicts with --only/--from {first}: {bad} comes before {first}")
    return RunPlan(stages=stages, cached_only=frozenset(cached_only), force=frozenset(forced))
