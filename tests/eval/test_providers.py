"""`eval.datasets` resolved against the pool: a real-data run is never scored on the synthetic world, and
names the datasets it is scored on."""

import pytest

from curation.world.pool import WorldConfig
from eval.config import DatasetSpec, EvalConfig, SyntheticSetsConfig
from eval.providers import DatasetSource, build_datasets, eval_key_config, resolve_sources
from flows.config import ConfigError, load_config

WORLD = WorldConfig(num_images=50)
SYNTHETIC = DatasetSource(DatasetSpec("synthetic"), WORLD)


def test_auto_is_the_synthetic_world_on_a_synthetic_pool_and_nothing_otherwise():
    assert resolve_sources("auto", ["synthetic"], WORLD) == ((SYNTHETIC,), None)
    assert resolve_sources(["synthetic"], ["synthetic", "synthetic"], WORLD)[0] == (SYNTHETIC,)
    for formats in (["parquet"], ["folder"], ["synthetic", "webdataset"]):
        sources, reason = resolve_sources("auto", formats, WORLD)
        assert sources == () and "not the synthetic world" in reason and "+".join(formats) in reason
    assert resolve_sources((), ["synthetic"], WORLD) == ((), "eval.datasets is empty")


def test_a_real_pool_is_scored_on_the_datasets_it_names():
    sources, reason = resolve_sources(["folder:/data/pets", DatasetSpec("csv:/data/pairs.csv", tasks=(
        "zeroshot_retrieval",))], ["parquet"], WORLD)
    assert reason is None and [s.spec.source for s in sources] == ["folder:/data/pets", "csv:/data/pairs.csv"]
    assert all(s.world is None for s in sources) and sources[1].spec.tasks == ("zeroshot_retrieval",)


def test_the_synthetic_sets_cannot_score_a_real_pool_and_forms_are_checked():
    with pytest.raises(ValueError, match="never scored on the synthetic world"):
        resolve_sources("synthetic", ["parquet"], WORLD)
    with pytest.raises(ValueError, match="'imagenet': expected 'synthetic' or one of folder:PATH"):
        resolve_sources(["imagenet"], ["synthetic"], WORLD)
    with pytest.raises(ValueError, match="'folder:'"):
        resolve_sources(["folder:"], ["synthetic"], WORLD)
    with pytest.raises(ValueError, match="stands alone"):
        resolve_sources(["auto", "synthetic"], ["synthetic"], WORLD)


def test_the_run_config_takes_sources_and_spec_mappings_and_names_moved_keys():
    cfg = load_config(overrides=[
        "ingest.sources=[{format: parquet, path: /data/raw}]",
        "eval.datasets=['folder:/data/pets', {source: 'csv:/data/p.csv', tasks: [zeroshot_retrieval]}]"])
    assert cfg.eval.datasets == ("folder:/data/pets", DatasetSpec("csv:/data/p.csv", tasks=("zeroshot_retrieval",)))
    with pytest.raises(ConfigError, match="eval.per_class moved to eval.synthetic.test_per_class"):
        load_config(overrides=["eval.per_class=3"])
    with pytest.raises(ConfigError, match="never scored on the synthetic world"):
        load_config(overrides=["ingest.sources=[{format: parquet, path: /x}]", "eval.datasets=[synthetic]"])


def test_the_key_hashes_what_the_datasets_resolved_to_not_their_names():
    sources, _ = resolve_sources("auto", ["synthetic"], WORLD)
    auto = eval_key_config(EvalConfig(), sources)
    assert eval_key_config(EvalConfig(datasets=("synthetic",)), sources) == auto
    assert eval_key_config(EvalConfig(knn_k=3), sources) != auto
    other_world, _ = resolve_sources("auto", ["synthetic"], WorldConfig(num_images=50, seed=9))
    assert eval_key_config(EvalConfig(), other_world) != auto


def test_tasks_per_spec_and_run_wide():
    cfg = EvalConfig(synthetic=SyntheticSetsConfig(train_per_class=2, validation_per_class=1, test_per_class=1,
                                                   retrieval_pairs=4, compositional_pairs=4))
    everything = build_datasets(SYNTHETIC, cfg)
    assert everything[0][0].name == "synthetic-shapes" and "fewshot_gda" in everything[0][1]
    only_knn = build_datasets(SYNTHETIC, EvalConfig(synthetic=cfg.synthetic, tasks=("knn",)))
    assert [(ds.name, tasks) for ds, tasks in only_knn] == [("synthetic-shapes", ("knn",))]
    asked = DatasetSource(DatasetSpec("synthetic", tasks=("zeroshot_retrieval",)), WORLD)
    assert [ds.name for ds, _ in build_datasets(asked, cfg)] == ["synthetic-scenes"]
