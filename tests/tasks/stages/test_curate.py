"""The curate task on real data without metadata: the entries come from the offline English builder
(wordfreq unigrams + the pool's PMI bigrams, counted per partition on Ray), are written beside the
artifact, and the counts reconcile. Ray starts locally (one CPU), about 10 s."""

import json
from pathlib import Path

import pyarrow.parquet as pq

from curation.balancing import CurateConfig
from curation.filters import FilterConfig
from curation.metadata import MetadataBuilderConfig
from curation.sources import IngestConfig
from flows.config import from_dict
from tasks.stages.common import RunContext
from tasks.stages.curate import curate
from tasks.stages.filter import filter_
from tasks.stages.ingest import ingest
from tasks.store import layout as L
from tests.curation import ingest_corpus as C
from tests.tasks.stages.artifact_checks import columns, expected_columns, reconciles

CAPTIONS = ["a hot dog with mustard", "my dog on the beach", "a hot dog stand", "sunset over the beach",
            "hot dog for lunch", "a cat on a sofa", "the cat sleeps", "zqxv{i} blorp{i}"]


def test_real_pool_without_metadata_uses_the_english_builder(tmp_path):
    n = 48
    C.write_parquet(tmp_path / "raw" / "pool.parquet", {
        "key": [f"k{i}" for i in range(n)],
        "image": [C.encoded("PNG", 64, i) for i in range(n)],
        "caption": [CAPTIONS[i % len(CAPTIONS)].format(i=i) for i in range(n)]})
    ingest_cfg = from_dict(IngestConfig, {"partitions": 2, "sources": [
        {"format": "parquet", "path": str(tmp_path / "raw"), "text_column": "caption"}]}, "ingest")
    ctx = RunContext(workdir=str(tmp_path / "work"), run_id="t", ray_num_cpus=1)
    filtered = filter_.fn(ctx, FilterConfig(dedup_images=False, dedup_image_text=False), ingest.fn(ctx, ingest_cfg))
    cfg = CurateConfig(t=1000, builder=MetadataBuilderConfig(bigram_min_count=3, bigram_min_pmi=1.0))
    ref = curate.fn(ctx, cfg, filtered, synthetic_only=False)
    art = Path(ref.path)
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["metadata"].startswith("built:")
    entries = json.loads((art / "metadata.json").read_text())
    assert {"dog", "beach", "cat", "hot dog"} <= set(entries)
    assert not [e for e in entries if "zqxv" in e]  # not English, and each such pair is seen once
    counts = manifest["counts"]
    assert counts["rows_in"] == filtered.counts["rows_out"] == n
    assert counts["rows_in"] == counts["rows_out"] + counts["filtered"] + counts["quarantined"]
    # t far above every count: only the texts matching nothing are dropped
    assert manifest["reasons"]["filtered"] == {"no_entry": n // len(CAPTIONS)}

    synthetic = curate.fn(ctx, cfg, filtered, synthetic_only=True)
    assert synthetic.key != ref.key  # a None metadata means other entries: another artifact


def test_curate_on_the_local_executor(local_run):
    _, refs = local_run
    ref = refs["curate"]
    assert reconciles(ref) and columns(ref) == expected_columns("curate")
    assert (Path(ref.path) / L.METADATA).is_file() and (Path(ref.path) / L.ENTRY_COUNTS).is_file()
    counts = pq.read_table(Path(ref.path) / L.ENTRY_COUNTS).to_pydict()
    assert sum(counts["count_after"]) <= sum(counts["count_before"])
