"""The stage plumbing: a unit's digest (what a completion marker is checked against) and reconciliation."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tasks.stages.common import ReconciliationError, reconcile, unit_digest


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
