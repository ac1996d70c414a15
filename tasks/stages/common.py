"""What every stage task shares: the run context, the cache check, the manifest and reconciliation, the code
versions, and the few helpers that name a stage's part files.

Caching decision: the artifact store *is* the cache. A stage task computes its key from its config,
its code version and its inputs' keys, and returns at once when that artifact is complete. Prefect's
own result cache is switched off (``NO_CACHE``) because it would cache by task inputs inside Prefect's
database: it would survive a deleted workdir (returning references to folders that are gone) and
could not see a forced recompute. Keys never include the run id, so a new run finds old artifacts.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

from curation.partitions import part_name
from tasks.executors import make_executor
from tasks.executors.base import (
    WORKER,
    Executor,
    ExecutorKind,
    Resources,
    Result,
    StageResources,
    UnitFailedError,
    Worker,
)
from tasks.faults import pause_point
from tasks.stages.progress import StepProgress
from tasks.store import layout as L
from tasks.store import workdir as W
from tasks.store.artifacts import ArtifactRef, ArtifactStore, Staging, config_hash, plain, stage_key, to_dict

CODE_VERSIONS = {
    "ingest": "3", "filter": "2", "curate": "1", "rewrite": "2", "longcap": "3",
    "embed": "5", "cluster": "2", "shard": "1", "train": "4", "eval": "3",
}
"""Part of every stage's key: bump a stage's entry whenever its output changes for the same config, so the stage
and everything below it recompute."""


class MissingArtifactError(RuntimeError):
    """An upstream stage that should come from the cache has no complete artifact for this config."""


class EmptyPoolError(RuntimeError):
    """A sample stage kept no samples, so the stages after it have nothing to work on (flows.pipeline)."""


class DiskFullError(OSError):
    """A stage ran out of space writing its staging area (ENOSPC, issue 15). Nothing of the stage is published;
    its finished parts keep their markers, so a rerun once there is space redoes only the rest."""

    def __init__(self, stage: str, staging: Path, cause: OSError):
        where = f" ({cause.filename})" if cause.filename else ""
        super().__init__(errno.ENOSPC, f"stage {stage} ran out of disk space writing {staging}{where}: no space "
                         "left on device; nothing of the stage was published. Free space on that filesystem (or "
                         "use a workdir on a larger one) and run the same command again: the parts that finished "
                         "are reused")
        self.stage, self.staging = stage, staging


class PartFailedError(RuntimeError):
    """A part of a stage's step failed for good (issue 15), raised ``from`` what its unit raised: naming the stage,
    the step, the part and its unit, and for a part that ran out of memory what to change.

    A part that ran out of memory had its executor's attempts (tasks.executors.ray_tasks.RETRIED): orchestration
    does not run the stage again for it, as more of the same attempts would meet the same shortage. Any other
    failure is its unit's own (or, when transient, left to orchestration to judge). The step's other parts ran to
    the end and keep their markers, so a rerun redoes only this one."""

    def __init__(self, stage: str, step: str, index: int, total: int, unit: str, attempts: int | None,
                 out_of_memory: bool, cause: BaseException):
        self.stage, self.step, self.index, self.total = stage, step, index, total
        self.unit, self.attempts, self.out_of_memory, self.cause = unit, attempts, out_of_memory, cause
        where = f"stage {stage}, step {step}: part {index + 1} of {total} ({unit})"
        if out_of_memory:
            message = f"{where} {memory_failure(attempts)}. Raise resources.{stage}.memory_gb (Ray reserves that " \
                "much for each part, so fewer run at once on a node) or split the data into more partitions " \
                "(ingest.partitions; for file sources a smaller files_per_partition or pairs_per_partition)"
        else:
            raised = getattr(cause, "cause", None) or cause  # a Ray task's error: what the unit itself raised
            message = f"{where} failed after {plural(attempts or 1, 'attempt')}: {type(raised).__name__}: {raised}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:  # its arguments, not its message: Prefect may pickle a task's error
        return type(self), (self.stage, self.step, self.index, self.total, self.unit, self.attempts,
                            self.out_of_memory, self.cause)


def describe_unit(unit: Any) -> str:
    """A unit's class, and the path it writes (its ``out``) or else reads (its ``source``) where it has one."""
    name = type(unit).__name__
    if isinstance(out := getattr(unit, "out", None), str):
        return f"{name} writing {out}"
    if isinstance(source := getattr(unit, "source", None), str):
        return f"{name} reading {source}"
    return name


def memory_failure(attempts: int | None) -> str:
    if attempts is None:
        return "ran out of memory: Ray's memory monitor killed it, and Ray gave up retrying it"
    return f"ran out of memory after {plural(attempts, 'attempt')}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def no_space(error: BaseException | None) -> OSError | None:
    """The ENOSPC ``OSError`` behind ``error``, if any: ``error`` itself, its cause or context (torch reports a
    full disk as a RuntimeError raised while handling Python's OSError), or what a Ray task raised (``cause``)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return error
        error = error.__cause__ or error.__context__ or getattr(error, "cause", None)
    return None


class ReconciliationError(RuntimeError):
    """A stage's counts do not add up: rows in != rows out + filtered + quarantined."""


@dataclass(frozen=True)
class RunContext:
    """What a stage needs to know about the run it belongs to (small and picklable)."""

    workdir: str
    """The workdir's local path: the workdir itself, or the driver's mirror of ``workdir_url``."""
    run_id: str
    force: frozenset[str] = frozenset()
    """Stages to recompute even when their artifact exists."""
    cached_only: frozenset[str] = frozenset()
    """Stages that must come from the cache (upstream of --only/--from): a miss is an error."""
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    executor: ExecutorKind = "ray"
    """Where units of work run: Ray tasks and actors, or this process ("local")."""
    resources: StageResources = field(default_factory=StageResources)
    workdir_url: str | None = None
    """The workdir's URL when it is on object storage (``s3://bucket/run``), else None."""

    @property
    def mirror(self) -> W.Mirror | None:
        return W.open_mirror(self.workdir_url, self.workdir) if self.workdir_url else None

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.workdir, self.mirror)

    def make_executor(self) -> Executor:
        mirror = self.mirror
        return make_executor(self.executor, self.ray_address, self.ray_num_cpus,
                             mirror.spec if mirror is not None else None)


def unit_digest(unit: Any) -> str:
    """A digest of a unit's fields (inputs, outputs, settings), the same in every process. A field with no plain
    form (a built matcher, a Ray-shared array) counts by its type only: the stage's key already covers what it
    was built from. Paths are absolute, so a workdir moved elsewhere redoes its unfinished stages."""
    if not dataclasses.is_dataclass(unit):
        raise TypeError(f"a unit of work is a dataclass, got {type(unit).__name__}")

    def stand_in(value: Any) -> Any:
        if hasattr(value, "tobytes") and hasattr(value, "shape"):  # an array: its bytes, not a list of numbers
            return f"<array {value.shape} {hashlib.sha256(value.tobytes()).hexdigest()[:16]}>"
        try:
            return plain(value)
        except TypeError:
            return f"<{type(value).__name__}>"

    blob = json.dumps(dataclasses.asdict(unit), sort_keys=True, default=stand_in)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class StageRun:
    """One stage computing its artifact: its staging area, its executor and resources, and the tally of parts
    computed and reused per step (``manifest["parts"]``).

    Every unit of a step is looked up in the staging area first: a part whose marker holds the same unit
    finished in an earlier, interrupted run of this key and is not run again. A part is marked as soon as it
    finishes, so a crash loses only the parts in flight. A part that fails for good (the executor's
    ``UnitFailedError``) raises :class:`PartFailedError`, naming it."""

    def __init__(self, ctx: RunContext, stage: str, staging: Staging, manifest: dict[str, Any]):
        self.ctx, self.stage, self.staging, self.manifest = ctx, stage, staging, manifest
        self.tmp = staging.path
        self.resources: Resources = ctx.resources.of(stage)

    @cached_property
    def executor(self) -> Executor:
        return self.ctx.make_executor()  # built on first use: a cached rerun never starts Ray

    def map(self, step: str, units: Sequence[Any], cpu_only: bool = False) -> list[Result]:
        """Every unit's ``run()`` on the executor; results in unit order. ``cpu_only``: the units reserve no GPU
        whatever the stage's resources say (a numpy step of a stage whose other steps use GPUs)."""
        return self._run(step, units, lambda todo: self.executor.map(todo, self._resources(cpu_only)))

    def map_stateful(self, step: str, worker: Callable[[], Worker], units: Sequence[Any]) -> list[Result]:
        """``worker()(unit)`` for every unit, the worker built once per process or actor."""
        return self._run(step, units, lambda todo: self.executor.map_stateful(worker, todo, self.resources))

    def job(self, step: str, unit: Any, cpu_only: bool = False) -> Result:
        """One whole-data unit holding the job's CPUs (``resources.job_cpus``, else the largest node's); ``cpu_only``
        as for :meth:`map`."""
        return self._run(step, [unit], lambda todo: self.executor.map(todo, self.executor.job_resources(
            self._resources(cpu_only))))[0]

    def _resources(self, cpu_only: bool) -> Resources:
        return dataclasses.replace(self.resources, gpus=0.0) if cpu_only else self.resources

    def _run(self, step: str, units: Sequence[Any], submit: Callable[[list[Any]], Any]) -> list[Result]:
        digests = [unit_digest(u) for u in units]
        results: list[Result | None] = [self.staging.done(step, i, d) for i, d in enumerate(digests)]
        todo = [i for i, r in enumerate(results) if r is None]
        self.manifest.setdefault("parts", {})[step] = {"computed": len(todo), "reused": len(units) - len(todo)}
        if todo:
            try:
                self._compute(step, units, digests, todo, results, submit)
            except UnitFailedError as err:
                index = todo[err.index]
                raise PartFailedError(self.stage, step, index, len(units), describe_unit(units[index]),
                                      err.attempts, err.out_of_memory, err.__cause__) from err.__cause__
        workers = self.manifest.setdefault("workers", [])
        for result in results:
            if (worker := result.pop(WORKER, None)) is not None and worker not in workers:  # type: ignore[union-attr]
                workers.append(worker)
        workers.sort()
        return results  # type: ignore[return-value]  (every None was filled or the submit raised)

    def _compute(self, step: str, units: Sequence[Any], digests: list[str], todo: list[int],
                 results: list[Result | None], submit: Callable[[list[Any]], Any]) -> None:
        """Run the units ``todo`` through ``submit``, marking each part and filling ``results`` as it finishes."""
        progress = StepProgress(self.stage, step, len(units), len(units) - len(todo)) if len(units) > 1 else None
        with closing(submit([units[i] for i in todo])) as finished:  # closed early: actors and tasks stop
            for count, (position, result) in enumerate(finished, start=1):
                index = todo[position]
                self.staging.mark(step, index, digests[index], result)  # its files are in the store now
                results[index] = result
                if progress is not None:
                    progress.advance()
                pause_point(self.stage, step, count)


def reconcile(stage: str, counts: dict[str, int]) -> None:
    """Every stage accounts for every row: in = out + filtered + quarantined."""
    rows_in, rows_out = counts["rows_in"], counts["rows_out"]
    dropped = counts.get("filtered", 0) + counts.get("quarantined", 0)
    if rows_in != rows_out + dropped:
        raise ReconciliationError(
            f"{stage}: rows_in {rows_in} != rows_out {rows_out} + filtered {counts.get('filtered', 0)}"
            f" + quarantined {counts.get('quarantined', 0)}"
        )


def run_stage(
    ctx: RunContext,
    stage: str,
    code_version: str,
    cfg: Any,
    inputs: list[ArtifactRef],
    compute: Callable[[StageRun, dict[str, Any]], None],
) -> ArtifactRef:
    """Return the stage's artifact, computing it with ``compute(run, manifest)`` unless cached.

    ``compute`` runs its units through ``run`` (:class:`StageRun`), writes its files into ``run.tmp`` (the
    staging area) and fills ``manifest["counts"]`` (rows_in, rows_out, filtered, quarantined) and, where rows
    are dropped, ``manifest["reasons"]``.
    """
    config = to_dict(cfg)
    key = stage_key(stage, code_version, config, [ref.key for ref in inputs])
    store = ctx.store
    if stage not in ctx.force and store.is_complete(stage, key):
        return store.ref(stage, key, status="cached")
    if stage in ctx.cached_only:
        raise MissingArtifactError(
            f"stage {stage!r} has no artifact for this config (key {key}); run the pipeline without "
            f"--only/--from first, or include {stage} in the stages to run"
        )
    manifest: dict[str, Any] = {
        "stage": stage,
        "key": key,
        "code_version": code_version,
        "config": config,
        "config_hash": config_hash(config),
        "inputs": {ref.stage: ref.key for ref in inputs},
        "input_paths": {ref.stage: ref.path for ref in inputs},
        "run_id": ctx.run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": {},
    }
    started = time.perf_counter()
    with store.locked(stage, key):
        if stage not in ctx.force and store.is_complete(stage, key):  # published while this run waited
            return store.ref(stage, key, status="cached")
        try:
            with store.writing(stage, key, manifest, fresh=stage in ctx.force) as staging:
                compute(StageRun(ctx, stage, staging, manifest), manifest)
                reconcile(stage, manifest["counts"])
                pause_point(stage, "publish")
                manifest["seconds"] = round(time.perf_counter() - started, 3)
        except Exception as err:
            if (full := no_space(err)) is not None and not isinstance(err, DiskFullError):
                raise DiskFullError(stage, store.staging(stage, key), full) from err
            raise
    return store.ref(stage, key, status="computed")


def parts_of(ref: ArtifactRef, folder: str = L.PARTS) -> list[str]:
    return list_parts(Path(ref.path) / folder)


def list_parts(folder: str | Path) -> list[str]:
    """The Parquet parts of a folder, in part order: in the store when the workdir is on object storage."""
    return [p for p in W.listing(folder, ".parquet") if Path(p).name.startswith("part-")]


def part_rows(paths: Sequence[str]) -> tuple[int, ...]:
    """Rows of each Parquet part, from its footer alone (read in place from the store when the workdir is on
    object storage: no part is downloaded)."""
    return tuple(W.parquet_rows(p) for p in paths)


def fetched(*paths: str | Path) -> list[str]:
    """``paths``, with their files present locally (downloaded from the store for an object-store workdir):
    for the files a stage's own code reads in the driver (a global table, the parts it counts reasons over)."""
    W.pull(*paths)
    return [str(p) for p in paths]


def stored(*paths: str | Path) -> None:
    """Upload the files the driver wrote at ``paths`` into the staging area (a no-op for a local workdir), before
    units that read them run."""
    W.push(*paths)


def part_path(tmp: Path, folder: str, index: int, suffix: str = ".parquet") -> str:
    return str((tmp / folder / part_name(index)).with_suffix(suffix))


def passthrough_counts(results: list[dict]) -> dict[str, int]:
    rows_in = sum(r["rows_in"] for r in results)
    rows_out = sum(r["rows_out"] for r in results)
    return {"rows_in": rows_in, "rows_out": rows_out, "filtered": rows_in - rows_out, "quarantined": 0}


def discard(run: StageRun, step: str, *paths: Path) -> None:
    """Delete a finished step's intermediate files, its markers first: a crash in between redoes the step. (The
    markers of steps whose files stay are dropped when the artifact is published.)"""
    run.staging.unmark(step)
    for path in paths:
        W.remove(path)
