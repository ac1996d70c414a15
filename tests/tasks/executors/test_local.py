"""The in-process executor: units in order, a stateful worker built once, failures raised as they happen (each
unit attempted once, a MemoryError included)."""

from functools import partial

import pytest

from tasks.executors import make_executor
from tasks.executors.base import WORKER, Resources, UnitFailedError
from tasks.executors.local import HERE, LocalExecutor
from tests.tasks.executors.units import Attempts, Counter, Fails, Square


def test_units_run_in_order_here():
    executor = make_executor("local")
    assert isinstance(executor, LocalExecutor)
    assert list(executor.map([Square(i) for i in range(4)], Resources())) == [
        (i, {"square": i * i, WORKER: HERE}) for i in range(4)]  # each result says which machine ran it


def test_a_stateful_worker_is_built_once():
    Counter.builds = 0
    results = list(LocalExecutor().map_stateful(partial(Counter, 10), [Square(i) for i in range(5)], Resources()))
    assert [r["value"] for _, r in results] == [10, 11, 12, 13, 14]
    assert Counter.builds == 1 and len({r["worker"] for _, r in results}) == 1
    assert list(LocalExecutor().map_stateful(partial(Counter, 0), [], Resources())) == []
    assert Counter.builds == 1  # no units, no model loaded


def test_results_before_a_failure_are_yielded_first():
    seen = []
    with pytest.raises(UnitFailedError) as failed:
        for item in LocalExecutor().map([Fails(0), Fails(1), Fails(2)], Resources()):
            seen.append(item)
    assert seen == [(0, {"x": 0, WORKER: HERE})]
    assert (failed.value.index, failed.value.attempts, failed.value.out_of_memory) == (1, 1, False)
    assert isinstance(failed.value.__cause__, ValueError)


def test_a_unit_out_of_memory_is_attempted_once_here(tmp_path):
    unit = Attempts(0, str(tmp_path / "attempts.log"), failures=1)
    with pytest.raises(UnitFailedError) as failed:
        list(LocalExecutor().map([unit], Resources()))
    assert (failed.value.attempts, failed.value.out_of_memory) == (1, True)
    assert isinstance(failed.value.__cause__, MemoryError)
    assert len((tmp_path / "attempts.log").read_text().splitlines()) == 1


def test_a_job_takes_the_machine_unless_told():
    assert LocalExecutor().job_resources(Resources(job_cpus=3)).cpus == 3
    assert LocalExecutor().job_resources(Resources()).cpus >= 1


def test_an_unknown_executor_is_an_error():
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        make_executor("dask")
