"""Every stage on the in-process executor (no Ray started): the smoke preset's world through ingest ... eval, one
test per stage on what its artifact holds. The chain runs once for the module (~1 min on two cores)."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation import partitions as P
from curation.schema import SAMPLE_SCHEMA, STAGE_COLUMNS
from flows.config import load_config
from flows.presets import preset_overrides
from tasks import layout as L
from tasks import stages as T
from tasks.common import RunContext

ORDER = ("ingest", "filter", "curate", "rewrite", "longcap", "embed", "cluster", "shard", "train", "eval")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import ray

    cfg = load_config(overrides=[*preset_overrides("smoke"), "executor=local"])
    ctx = RunContext(workdir=str(tmp_path_factory.mktemp("local")), run_id="local", executor=cfg.executor,
                     resources=cfg.resources)
    refs = {}
    refs["ingest"] = T.ingest.fn(ctx, cfg.ingest)
    refs["filter"] = T.filter_.fn(ctx, cfg.filter, refs["ingest"])
    refs["curate"] = T.curate.fn(ctx, cfg.curate, refs["filter"], True)
    refs["rewrite"] = T.rewrite.fn(ctx, cfg.rewrite, refs["curate"])
    refs["longcap"] = T.longcap.fn(ctx, cfg.longcap, refs["rewrite"], refs["ingest"])
    refs["embed"] = T.embed.fn(ctx, cfg.embed, cfg.train, refs["longcap"])
    refs["cluster"] = T.cluster.fn(ctx, cfg.cluster, refs["embed"])
    refs["shard"] = T.shard.fn(ctx, cfg.shard, refs["cluster"])
    refs["train"] = T.train.fn(ctx, cfg.train, refs["shard"], refs["curate"])
    refs["eval"] = T.evaluate.fn(ctx, cfg.eval, cfg.ingest, cfg.train, refs["train"])
    assert not ray.is_initialized()  # the in-process executor never starts Ray
    return cfg, refs


def manifest(ref) -> dict:
    return json.loads((Path(ref.path) / L.MANIFEST).read_text())


def columns(ref) -> list[str]:
    return pq.read_schema(P.list_parts(Path(ref.path) / L.PARTS)[0]).names


def expected_columns(stage: str) -> list[str]:
    names = list(SAMPLE_SCHEMA.names)
    for earlier in ORDER[: ORDER.index(stage) + 1]:
        names += [f.name for f in STAGE_COLUMNS.get(earlier, ()) if earlier != "shard"]
    return names


def reconciles(ref) -> bool:
    c = ref.counts
    return c["rows_in"] == c["rows_out"] + c.get("filtered", 0) + c.get("quarantined", 0)


def test_ingest(run):
    cfg, refs = run
    ref = refs["ingest"]
    assert ref.counts["rows_in"] == cfg.ingest.world.num_images and reconciles(ref)
    assert columns(ref) == expected_columns("ingest")
    assert len(P.list_parts(Path(ref.path) / L.TRUTH)) == cfg.ingest.partitions
    assert manifest(ref)["parts"]["read"] == {"computed": cfg.ingest.partitions, "reused": 0}
    assert not (Path(ref.path) / L.CANDIDATES).exists()


def test_filter(run):
    _, refs = run
    ref = refs["filter"]
    assert ref.counts["rows_in"] == refs["ingest"].counts["rows_out"] and reconciles(ref)
    assert sum(manifest(ref)["reasons"]["filtered"].values()) == ref.counts["filtered"]
    assert not (Path(ref.path) / L.FILTER_KEYS).exists()


def test_curate(run):
    _, refs = run
    ref = refs["curate"]
    assert reconciles(ref) and columns(ref) == expected_columns("curate")
    assert (Path(ref.path) / L.METADATA).is_file() and (Path(ref.path) / L.ENTRY_COUNTS).is_file()
    counts = pq.read_table(Path(ref.path) / L.ENTRY_COUNTS).to_pydict()
    assert sum(counts["count_after"]) <= sum(counts["count_before"])


def test_rewrite(run):
    _, refs = run
    ref = refs["rewrite"]
    assert columns(ref) == expected_columns("rewrite") and ref.counts["rows_out"] == refs["curate"].counts["rows_out"]
    assert manifest(ref)["backend"]["simulated"] is True


def test_longcap(run):
    _, refs = run
    ref = refs["longcap"]
    assert columns(ref) == expected_columns("longcap")
    table = pq.read_table(P.list_parts(Path(ref.path) / L.PARTS)[0], columns=["long_caption"])
    assert all(text for text in table.column("long_caption").to_pylist())  # every row found its truth by uid
    assert refs["ingest"].key in manifest(ref)["inputs"].values()  # the truth is an explicit input


def test_embed(run):
    _, refs = run
    ref = refs["embed"]
    assert columns(ref) == expected_columns("embed") and manifest(ref)["dim"] > 0
    assert (Path(ref.path) / manifest(ref)["model"]["checkpoint"]).is_file()  # the bootstrap run's weights
    assert manifest(ref)["parts"]["embed"]["computed"] == len(P.list_parts(Path(ref.path) / L.PARTS))


def test_cluster(run):
    cfg, refs = run
    ref = refs["cluster"]
    assert columns(ref) == expected_columns("cluster")
    labels = pq.read_table(P.list_parts(Path(ref.path) / L.PARTS)[0]).column("cluster_labels").to_pylist()
    assert all(len(row) == cfg.cluster.top_k and all(0 <= c < cfg.cluster.num_centers for c in row) for row in labels)


def test_shard(run):
    _, refs = run
    ref = refs["shard"]
    sizes = json.loads((Path(ref.path) / L.SHARDS / "sizes.json").read_text())
    assert sum(sizes.values()) == ref.counts["rows_out"] == refs["cluster"].counts["rows_out"]
    assert len(list((Path(ref.path) / L.SHARDS).glob("*.tar"))) == manifest(ref)["shards"]


def test_train(run):
    _, refs = run
    summary = manifest(refs["train"])["train"]
    assert summary["ranks"] == 1 and (Path(refs["train"].path) / summary["checkpoint"]).is_file()
    assert (Path(refs["train"].path) / L.TRAIN_METRICS).is_file()


def test_eval(run):
    _, refs = run
    results = json.loads((Path(refs["eval"].path) / L.EVAL_RESULTS).read_text())
    assert results == manifest(refs["eval"])["eval"] and 0.0 <= results["zeroshot_top1"] <= 1.0
