"""The stage plumbing: a unit's digest (what a completion marker is checked against), reconciliation, and a failed
part named by stage, step and part (the in-process executor here; on Ray: tests/tasks/executors/test_ray_tasks.py)."""

import errno
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tasks.stages.common import (
    DiskFullError,
    PartFailedError,
    ReconciliationError,
    RunContext,
    StageRun,
    reconcile,
    run_stage,
    unit_digest,
)
from tasks.store.artifacts import Staging
from tests.tasks.executors.units import Attempts


@dataclass(frozen=True)
class Unit:
    source: object
    values: object = None


def test_a_digest_is_the_same_for_the_same_fields_and_differs_otherwise():
    assert unit_digest(Unit("a.parquet")) == unit_digest(Unit("a.parquet"))
    assert unit_digest(Unit("a.parquet")) != unit_digest(Unit("b.parquet"))
    assert unit_digest(Unit(Path("/x/a"))) != unit_digest(Unit(Path("/x/b")))  # paths by value, not by type
    assert unit_digest(Unit("s", np.arange(3))) != unit_digest(Unit("s", np.arange(4)))  # arrays by their bytes
    assert unit_digest(Unit("s", {1, 2})) == unit_digest(Unit("s", {2, 1}))


def test_a_field_with_no_plain_form_counts_by_type_and_a_non_dataclass_is_refused():
    assert unit_digest(Unit("s", object())) == unit_digest(Unit("s", object()))
    with pytest.raises(TypeError, match="a unit of work is a dataclass"):
        unit_digest(("not", "a", "unit"))


def test_counts_that_do_not_add_up_are_an_error():
    reconcile("filter", {"rows_in": 10, "rows_out": 7, "filtered": 2, "quarantined": 1})
    with pytest.raises(ReconciliationError, match="filter: rows_in 10 != rows_out 7 \\+ filtered 2 \\+ quarantined 0"):
        reconcile("filter", {"rows_in": 10, "rows_out": 7, "filtered": 2})


def filter_run(root: Path) -> StageRun:
    """The filter stage's StageRun on the in-process executor, its staging area under ``root``."""
    ctx = RunContext(workdir=str(root), run_id="parts", executor="local")
    return StageRun(ctx, "filter", Staging(root / "staging"), {})


def test_a_part_out_of_memory_here_is_named_after_its_one_attempt(tmp_path, reliability):
    units = [Attempts(i, str(tmp_path / f"attempts-{i}.log"), failures=-1 if i == 2 else 0) for i in range(4)]
    run = filter_run(tmp_path)
    with pytest.raises(PartFailedError) as failed:
        run.map("keys", units)
    assert str(failed.value).startswith(f"stage filter, step keys: part 3 of 4 (Attempts writing {units[2].out}) ran "
                                        "out of memory after 1 attempt. Raise resources.filter.memory_gb")
    assert isinstance(failed.value.__cause__, MemoryError)
    assert run.staging.done("keys", 1, unit_digest(units[1])) is not None  # the parts before it stay done
    again = pickle.loads(pickle.dumps(failed.value))
    assert str(again) == str(failed.value) and again.out_of_memory
    reliability.fault("MemoryError in a unit", "local executor")


def test_another_part_failure_is_named_with_what_the_unit_raised(tmp_path):
    units = [Attempts(0, str(tmp_path / "attempts.log"), failures=-1, fails="value")]
    with pytest.raises(PartFailedError) as failed:
        filter_run(tmp_path).job("fit", units[0])
    assert str(failed.value) == (f"stage filter, step fit: part 1 of 1 (Attempts writing {units[0].out}) failed "
                                 "after 1 attempt: ValueError: unit 0 has a bad row")
    assert isinstance(failed.value.__cause__, ValueError)


@dataclass(frozen=True)
class FillsTheDisk:
    out: str

    def run(self) -> dict:
        raise OSError(errno.ENOSPC, "No space left on device", self.out)


def test_a_part_that_filled_the_disk_is_still_a_full_disk(tmp_path):
    ctx = RunContext(workdir=str(tmp_path), run_id="full", executor="local")
    with pytest.raises(DiskFullError, match="stage shard ran out of disk space") as failed:
        run_stage(ctx, "shard", "1", {}, [], lambda run, manifest: run.map("write", [FillsTheDisk("part.tar")]))
    assert isinstance(failed.value.__cause__, PartFailedError)  # the part is named in the traceback too
