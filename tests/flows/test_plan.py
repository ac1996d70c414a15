import pytest

from flows.config import STAGES
from flows.plan import plan_run


def test_default_runs_everything_cache_aware():
    plan = plan_run()
    assert plan.stages == STAGES and not plan.cached_only and not plan.force


def test_only_eval_needs_every_upstream_cached():
    plan = plan_run(only="eval")
    assert plan.stages == STAGES
    assert plan.cached_only == set(STAGES[:-1]) and not plan.force


def test_only_stops_after_the_stage():
    plan = plan_run(only="curate")
    assert plan.stages == ("ingest", "filter", "curate")
    assert plan.cached_only == {"ingest", "filter"}


def test_force_propagates_downstream_only():
    plan = plan_run(force=("curate",))
    assert plan.force == set(STAGES[STAGES.index("curate"):])
    assert "filter" not in plan.force


def test_from_stage():
    plan = plan_run(start="shard")
    assert plan.cached_only == set(STAGES[: STAGES.index("shard")])
    assert plan.stages == STAGES


@pytest.mark.parametrize("kwargs", [dict(only="nope"), dict(start="x"), dict(force=("y",)),
                                    dict(only="eval", start="train"), dict(only="eval", force=("ingest",))])
def test_bad_plans_are_clear_errors(kwargs):
    with pytest.raises(ValueError):
        plan_run(**kwargs)
