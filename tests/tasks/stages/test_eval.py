"""The eval stage on a real-data pool: with `eval.datasets: auto` it is skipped, says why in its manifest and
in the run report, and scores nothing (a real-data run is never scored on the synthetic world). Ray starts
locally (one CPU), about 10 s."""

import json
from pathlib import Path

from flows.config import RunConfig, from_dict
from tasks.stages.common import RunContext
from tasks.stages.eval import evaluate
from tasks.stages.ingest import ingest
from tasks.store import layout as L
from tasks.store.artifacts import ArtifactRef
from tasks.store.report import write_report
from tests.curation import ingest_corpus as C
from tests.tasks.stages.artifact_checks import manifest


def test_eval_of_a_parquet_pool_is_skipped_with_its_reason(tmp_path):
    images = C.good_images()
    captions = [f"a photo number {i}" for i in range(len(images))]
    C.write_parquet(tmp_path / "raw" / "pool.parquet",
                    {"key": list(images), "image": list(images.values()), "caption": captions})
    cfg = from_dict(RunConfig, {"ingest": {"sources": [
        {"format": "parquet", "path": str(tmp_path / "raw"), "text_column": "caption"}]}})
    ctx = RunContext(workdir=str(tmp_path / "work"), run_id="t", ray_num_cpus=1)
    ingest_ref = ingest.fn(ctx, cfg.ingest)
    assert ingest_ref.counts["rows_out"] == len(images)
    # the skipped stage never opens the checkpoint: the train artifact need not exist
    train_ref = ArtifactRef(stage="train", key="0123456789abcdef", path=str(tmp_path / "no-train"))
    ref = evaluate.fn(ctx, cfg.eval, cfg.ingest, cfg.train, train_ref)
    manifest = json.loads((Path(ref.path) / "manifest.json").read_text())
    assert "not the synthetic world" in manifest["skipped"] and "parquet" in manifest["skipped"]
    assert manifest["datasets"] == [] and "eval" not in manifest
    assert not (Path(ref.path) / "results.json").exists()

    report = write_report(tmp_path / "work", "t", "h", {"ingest": ingest_ref, "eval": ref}, 1.0)
    assert report["eval"] == [] and report["eval_skipped"] == manifest["skipped"]
    assert f"Skipped: {manifest['skipped']}." in (tmp_path / "work" / "report.md").read_text()
    assert evaluate.fn(ctx, cfg.eval, cfg.ingest, cfg.train, train_ref).status == "cached"


def test_eval_on_the_local_executor(local_run):
    _, refs = local_run
    results = json.loads((Path(refs["eval"].path) / L.EVAL_RESULTS).read_text())
    assert results == manifest(refs["eval"])["eval"]
    zeroshot = next(r for r in results if r["task"] == "zeroshot_classification")
    assert zeroshot["dataset"] == "synthetic-shapes" and 0.0 <= zeroshot["metrics"]["acc1"] <= 1.0
