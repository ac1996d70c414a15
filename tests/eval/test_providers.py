"""`eval.datasets` resolved against the pool: a real-data run is never scored on the synthetic world."""

import pytest

from curation.world.pool import WorldConfig
from eval.config import EvalConfig
from eval.providers import DatasetSource, eval_key_config, resolve_sources
from tasks.store.artifacts import to_dict

WORLD = WorldConfig(num_images=50)


def test_auto_is_the_synthetic_world_on_a_synthetic_pool_and_nothing_otherwise():
    assert resolve_sources("auto", ["synthetic"], WORLD) == ((DatasetSource("synthetic", WORLD),), None)
    assert resolve_sources(["synthetic"], ["synthetic", "synthetic"], WORLD)[0] == (DatasetSource("synthetic", WORLD),)
    for formats in (["parquet"], ["folder"], ["synthetic", "webdataset"]):
        sources, reason = resolve_sources("auto", formats, WORLD)
        assert sources == () and "not the synthetic world" in reason and "+".join(formats) in reason
    assert resolve_sources((), ["synthetic"], WORLD) == ((), "eval.datasets is empty")


def test_the_synthetic_sets_cannot_score_a_real_pool_and_names_are_checked():
    with pytest.raises(ValueError, match="never scored on the synthetic world"):
        resolve_sources("synthetic", ["parquet"], WORLD)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        resolve_sources(["imagenet"], ["synthetic"], WORLD)
    with pytest.raises(ValueError, match="stands alone"):
        resolve_sources(["auto", "synthetic"], ["synthetic"], WORLD)


def test_the_key_hashes_what_the_datasets_resolved_to_not_their_names():
    sources, _ = resolve_sources("auto", ["synthetic"], WORLD)
    auto = eval_key_config(EvalConfig(), sources)
    assert eval_key_config(EvalConfig(datasets=("synthetic",)), sources) == auto
    # the shape the key had before eval.datasets existed: (the suite settings, the world)
    settings = to_dict(EvalConfig())
    del settings["datasets"]
    assert to_dict(auto) == [settings, to_dict(WORLD)]
    assert to_dict(eval_key_config(EvalConfig(), ())) == [settings]
