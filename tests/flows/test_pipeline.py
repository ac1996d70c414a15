"""End to end on a tiny synthetic world: every stage computes, a rerun recomputes nothing, and
--only / --force / a changed config recompute exactly what they should."""

import json

import pytest

from flows.cli import main
from flows.config import STAGES, load_config
from flows.pipeline import pipeline
from flows.presets import PRESETS

TINY = list(PRESETS["smoke"])  # `curaclip run --preset smoke`


def statuses(report):
    return {stage: s["status"] for stage, s in report["stages"].items()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    report = pipeline(load_config(overrides=TINY), workdir=str(workdir))
    return workdir, report


def test_first_run_computes_every_stage(first_run):
    workdir, report = first_run
    assert statuses(report) == {stage: "computed" for stage in STAGES}
    on_disk = json.loads((workdir / "report.json").read_text())
    assert set(on_disk["stages"]) == set(STAGES)
    # one CLIP_benchmark-shaped row per (dataset, task) of the synthetic sets, as in the eval artifact
    tasks = {(r["dataset"], r["task"]) for r in on_disk["eval"]}
    assert {("synthetic-shapes", "zeroshot_classification"), ("synthetic-shapes", "fewshot_gda"),
            ("synthetic-scenes", "zeroshot_retrieval")} <= tasks
    eval_dir = workdir / "artifacts" / "eval" / report["stages"]["eval"]["key"]
    assert json.loads((eval_dir / "results.json").read_text()) == on_disk["eval"]
    assert len(list((eval_dir / "results").glob("*.json"))) == len(on_disk["eval"])
    assert (workdir / "eval.png").exists() and "| synthetic-shapes | zeroshot_classification | acc1 |" in (
        workdir / "report.md").read_text()
    assert (workdir / "report.md").exists() and (workdir / "entry_counts.png").exists()
    # which stages ran simulated, and what the stand-in could see, in the report and the manifests
    assert set(on_disk["simulated"]) == {"rewrite", "longcap"}
    assert "caption text only" in on_disk["simulated"]["rewrite"]["sees"]
    assert "ground truth" in on_disk["simulated"]["longcap"]["sees"]
    assert "## Simulated stages" in (workdir / "report.md").read_text()
    for stage, s in report["stages"].items():
        assert s["rows_in"] == s["rows_out"] + s["filtered"] + s["quarantined"], stage


def test_every_stage_keeps_the_data_contract(first_run):
    """Each stage's parts hold the sample columns, then the columns of every stage so far (curation.schema), in
    order and with their types; every dropped row has the one dropped-row schema."""
    import pyarrow.parquet as pq

    from curation.schema import DROPPED_SCHEMA, SAMPLE_SCHEMA, STAGE_COLUMNS

    workdir, report = first_run
    expected = list(SAMPLE_SCHEMA)
    for stage in STAGES[: STAGES.index("shard")]:
        expected += STAGE_COLUMNS.get(stage, ())
        folder = workdir / "artifacts" / stage / report["stages"][stage]["key"]
        for part in sorted((folder / "parts").glob("*.parquet")):
            assert list(pq.read_schema(part)) == expected, (stage, part.name)
        for dropped in [*folder.glob("quarantine/*.parquet"), *folder.glob("filtered/*.parquet")]:
            assert pq.read_schema(dropped).equals(DROPPED_SCHEMA), (stage, dropped)
    shard = workdir / "artifacts" / "shard" / report["stages"]["shard"]["key"] / "shards"
    sidecar = pq.read_schema(sorted(shard.glob("*.parquet"))[0])
    assert [f.name for f in sidecar][-2:] == [f.name for f in STAGE_COLUMNS["shard"]]


def test_second_run_recomputes_nothing(first_run):
    workdir, _ = first_run
    report = pipeline(load_config(overrides=TINY), workdir=str(workdir))
    assert statuses(report) == {stage: "cached" for stage in STAGES}


def test_only_eval_recomputes_nothing_else(first_run):
    workdir, _ = first_run
    report = pipeline(load_config(overrides=TINY), workdir=str(workdir), only="eval", force=("eval",))
    assert statuses(report) == {**{s: "cached" for s in STAGES[:-1]}, "eval": "computed"}


def test_changed_config_recomputes_that_stage_and_below(first_run):
    workdir, _ = first_run
    report = pipeline(load_config(overrides=TINY + ["cluster.top_k=2"]), workdir=str(workdir))
    i = STAGES.index("cluster")
    assert statuses(report) == {**{s: "cached" for s in STAGES[:i]}, **{s: "computed" for s in STAGES[i:]}}


def test_stats_cli_answers_and_refuses_writes(first_run, capsys):
    workdir, _ = first_run
    assert main(["stats", "--workdir", str(workdir), "select count(*) as n from samples"]) == 0
    assert "n" in capsys.readouterr().out
    assert main(["stats", "--workdir", str(workdir)]) == 0
    assert "quarantined" in capsys.readouterr().out
    assert main(["stats", "--workdir", str(workdir), "drop view samples"]) == 2
    err = capsys.readouterr().err
    assert "read-only" in err and err.count("\n") == 1


def test_force_curate_recomputes_curate_and_below_only(first_run):
    workdir, _ = first_run
    report = pipeline(load_config(overrides=TINY), workdir=str(workdir), force=("curate",))
    i = STAGES.index("curate")
    assert statuses(report) == {**{s: "cached" for s in STAGES[:i]}, **{s: "computed" for s in STAGES[i:]}}


def test_only_with_missing_upstream_is_a_clear_error(tmp_path, capsys):
    code = main(["run", "--workdir", str(tmp_path), "--only", "eval"] + sum([["--set", o] for o in TINY], []))
    assert code == 2
    assert "has no artifact for this config" in capsys.readouterr().err


@pytest.mark.parametrize("objectives", ["dreamlip,protoclip,mlcd", "negclip,mlcd"])
def test_cli_trains_the_objectives_combined_from_the_cached_stages(first_run, capsys, objectives):
    """`curaclip run --set train.objectives=...`: train and eval recompute with the seed papers' objectives
    (DreamLIP's long captions and MLCD's cluster labels come from the shards; NegCLIP's vocabulary from the
    curate artifact's metadata); the stages before them stay cached. alip, negclip and dreamlip each replace
    clip, so they run one at a time. NegCLIP runs without its hard-negative images here: those need the cluster
    stage's cluster order (cluster.order auto), so with them the stages from cluster on recompute, by design
    (tests/tasks/stages/test_cluster.py and tests/training/ cover that path)."""
    workdir, _ = first_run
    extra = ["train.objectives=" + objectives, "train.model=curaclip-vit-tiny",  # DreamLIP grouping: a ViT
             "train.negclip.hard_negative_images=false",
             "train.protoclip.episode_size=64",
             "train.protoclip.num_prototypes=4", "train.data.text_sampler=laclip"]
    args = ["run", "--workdir", str(workdir)] + sum([["--set", o] for o in TINY + extra], [])
    assert main(args) == 0
    report = json.loads((workdir / "report.json").read_text())
    i = STAGES.index("train")
    assert statuses(report) == {**{s: "cached" for s in STAGES[:i]}, **{s: "computed" for s in STAGES[i:]}}
    manifest = json.loads((workdir / "artifacts" / "train" / report["stages"]["train"]["key"] / "manifest.json")
                          .read_text())
    metrics = [json.loads(line) for line in (workdir / "artifacts" / "train" / report["stages"]["train"]["key"]
                                              / "metrics.jsonl").read_text().splitlines()]
    for term in objectives.split(","):
        assert all(f"loss_{term}" in m and m[f"loss_{term}"] == m[f"loss_{term}"] for m in metrics), term
    assert all("clip_raw_unweighted" in m for m in metrics)  # the plain CLIP loss, whatever the objectives
    assert manifest["train"]["steps"] > 0
    assert ("curate" in manifest["inputs"]) == ("negclip" in objectives)  # the metadata NegCLIP's swaps read
    assert manifest["train"]["optimizer"]["lr"] == 5e-4  # flows/default.yaml's, recorded as used


def test_the_eval_results_view_has_a_row_per_metric(first_run):
    from tasks.store.catalog import query

    workdir, _ = first_run
    report = json.loads((workdir / "report.json").read_text())  # the latest run's (earlier tests rerun eval)
    columns, rows = query(str(workdir), "SELECT dataset, task, metric, value FROM eval_results "
                                        "WHERE metric IN ('acc1', 'image_retrieval_recall@1') ORDER BY dataset")
    assert columns == ["dataset", "task", "metric", "value"]
    expected = {(r["dataset"], r["task"], m): v for r in report["eval"] for m, v in r["metrics"].items()
                if m in ("acc1", "image_retrieval_recall@1")}
    assert {tuple(row[:3]): row[3] for row in rows} == pytest.approx(expected)
    assert ("synthetic-scenes", "zeroshot_retrieval", "image_retrieval_recall@1") in expected


def test_curaclip_eval_of_the_trained_checkpoint_gives_the_eval_stages_figures(first_run, tmp_path):
    """`curaclip eval` on the checkpoint the train stage wrote, with the eval settings of the run, writes the
    same results the pipeline's eval stage did: one code path, whoever calls it."""
    workdir, report = first_run
    train_dir = workdir / "artifacts" / "train" / report["stages"]["train"]["key"]
    manifest = json.loads((train_dir / "manifest.json").read_text())
    checkpoint = train_dir / manifest["train"]["checkpoint"]
    overrides = [o.removeprefix("eval.") for o in TINY if o.startswith("eval.")]
    out = tmp_path / "{dataset}_{task}.json"
    model = load_config(overrides=TINY).train.model
    code = main(["eval", "--checkpoint", str(checkpoint), "--model", model, "--dataset", "synthetic",
                 "--task", "zeroshot_classification", "zeroshot_retrieval", "--output", str(out)]
                + sum([["--set", o] for o in overrides], []))
    assert code == 0
    mine = {(d["dataset"], d["task"]): d for p in tmp_path.glob("*.json") for d in [json.loads(p.read_text())]}
    assert set(mine) == {("synthetic-shapes", "zeroshot_classification"), ("synthetic-scenes", "zeroshot_retrieval")}
    for row in report["eval"]:
        if (row["dataset"], row["task"]) in mine:
            assert mine[row["dataset"], row["task"]]["metrics"] == row["metrics"]


def test_a_pool_with_no_usable_sample_is_a_clear_error_and_its_quarantine_answers(tmp_path, capsys):
    """An empty pool, or one whose every row is bad, stops after ingest with one line saying so; the ingest
    artifact is published, so `curaclip stats` shows why."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.table({"image": [b"", b"not an image", None], "text": ["a", "b", "c"]}), pool / "bad.parquet")
    config = tmp_path / "pool.yaml"
    config.write_text(f"executor: local\ningest:\n  sources:\n    - {{format: parquet, path: {pool}}}\n")
    workdir = tmp_path / "run"
    capsys.readouterr()
    assert main(["run", "--config", str(config), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("curaclip run: error: ingest kept no samples of 3 (filtered 0, quarantined 3)")
    assert err.count("\n") == 1
    assert main(["stats", "--workdir", str(workdir), "select reason, count(*) as n from quarantine group by 1 "
                                                      "order by 1"]) == 0
    out = capsys.readouterr().out
    assert "empty_image" in out and "missing_image" in out and "undecodable_image" in out
