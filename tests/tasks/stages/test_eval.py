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


def test_a_real_pool_is_scored_on_the_datasets_its_config_names(local_run, tmp_path):
    """A parquet pool with eval.datasets naming a folder and a CSV: the stage scores exactly those (never the
    synthetic world), one CLIP_benchmark-shaped result per (dataset, task), with the rejected rows counted."""
    from PIL import Image

    base, refs = local_run
    folder = tmp_path / "pets"
    for c, name in enumerate(["tabby_cat", "beagle", "parrot"]):
        (folder / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (20, 20), (80 * c, 40 * i, 100)).save(folder / name / f"{i}.png")
    (folder / "beagle" / "broken.png").write_bytes(b"not a png")
    for i in range(4):
        Image.new("RGB", (20, 20), (60 * i, 0, 0)).save(tmp_path / f"p{i}.png")
    (tmp_path / "pairs.csv").write_text("filepath,title\n" + "".join(f"p{i}.png,a red square {i}\n" for i in range(4)))
    cfg = from_dict(RunConfig, {
        "ingest": {"sources": [{"format": "parquet", "path": str(tmp_path / "raw"), "text_column": "caption"}]},
        "eval": {"datasets": [f"folder:{folder}", f"csv:{tmp_path / 'pairs.csv'}"],
                 "fewshot": {"shots": [1, 2], "draws": 1, "augment_views": 2}}})
    workdir = Path(refs["train"].path).parents[2]  # the shared run's store, which holds the train artifact
    ctx = RunContext(workdir=str(workdir), run_id="t", ray_num_cpus=1, executor="local")
    ref = evaluate.fn(ctx, cfg.eval, cfg.ingest, base.train, refs["train"])
    results = json.loads((Path(ref.path) / L.EVAL_RESULTS).read_text())
    assert {(r["dataset"], r["task"]) for r in results} == {
        ("pets", t) for t in ("zeroshot_classification", "linear_probe", "knn", "fewshot_gda")} | {
        ("pairs", "zeroshot_retrieval")}
    assert not any(r["dataset"].startswith("synthetic") for r in results)
    zeroshot = next(r for r in results if r["task"] == "zeroshot_classification")
    assert zeroshot["metrics"]["num_images"] == 18 and zeroshot["metrics"]["num_rejected"] == 1
    sets = {d["dataset"]: d for d in manifest(ref)["eval_datasets"]}
    assert sets["pets"]["rejected"] == 1 and "broken.png" in sets["pets"]["rejected_examples"][0][0]
    assert len(list((Path(ref.path) / "results").glob("*.json"))) == len(results)
