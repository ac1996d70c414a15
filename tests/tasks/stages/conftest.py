"""The stage tests' shared run: the smoke preset's world through ingest ... eval on the in-process executor (no Ray
started), once per test session (~1 min on two cores); each stage's test module checks its own artifact."""


import pytest

from flows.config import load_config
from flows.presets import preset_overrides
from tasks.stages import captions, cluster, curate, embed, ingest, shard, train
from tasks.stages import eval as eval_stage
from tasks.stages import filter as filter_stage
from tasks.stages.common import RunContext


@pytest.fixture(scope="module", autouse=True)
def _ray_shutdown():
    """The stage tests on the Ray executor start Ray locally: each module stops it when it ends."""
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="session")
def local_run(tmp_path_factory):
    import ray

    ray.shutdown()  # a Ray test module may have left one running: this fixture shows none is started
    cfg = load_config(overrides=[*preset_overrides("smoke"), "executor=local"])
    ctx = RunContext(workdir=str(tmp_path_factory.mktemp("local")), run_id="local", executor=cfg.executor,
                     resources=cfg.resources)
    refs = {}
    refs["ingest"] = ingest.ingest.fn(ctx, cfg.ingest)
    refs["filter"] = filter_stage.filter_.fn(ctx, cfg.filter, refs["ingest"])
    refs["curate"] = curate.curate.fn(ctx, cfg.curate, refs["filter"], True)
    refs["embed"] = embed.embed.fn(ctx, cfg.embed, cfg.train, refs["curate"])
    refs["cluster"] = cluster.cluster.fn(ctx, cfg.cluster, refs["embed"], cfg.embed, refs["ingest"])
    refs["rewrite"] = captions.rewrite.fn(ctx, cfg.rewrite, refs["cluster"])
    refs["longcap"] = captions.longcap.fn(ctx, cfg.longcap, refs["rewrite"], refs["ingest"])
    refs["shard"] = shard.shard.fn(ctx, cfg.shard, refs["longcap"])
    refs["train"] = train.train.fn(ctx, cfg.train, refs["shard"], refs["curate"], refs["cluster"])
    refs["eval"] = eval_stage.evaluate.fn(ctx, cfg.eval, cfg.ingest, cfg.train, refs["train"])
    assert not ray.is_initialized()  # the in-process executor never starts Ray
    return cfg, refs
