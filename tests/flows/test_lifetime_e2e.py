"""gc on real runs (the smoke preset, ~4 min on two cores): two configs that differ in train, then a run that fails
(``--only eval`` with a train config never computed) and is recorded as failed; ``gc --keep-runs 1`` keeps what
the failed run had (its catalog still answers), deletes both trains and evals, and the next run of the second config
recomputes exactly those."""

import json

import pytest

from flows.cli import main
from flows.config import STAGES

SMOKE = ["--preset", "smoke"]


@pytest.mark.slow
def test_gc_on_real_runs_keeps_the_latest_runs_catalog_and_a_rerun_recomputes_only_what_went(tmp_path, capsys):
    workdir = ["--workdir", str(tmp_path)]
    assert main(["run", *SMOKE, *workdir]) == 0
    assert main(["run", *SMOKE, "--set", "train.schedule.epochs=2", *workdir]) == 0
    assert main(["run", *SMOKE, "--set", "train.schedule.epochs=3", "--only", "eval", *workdir]) == 2
    capsys.readouterr()
    records = sorted((tmp_path / "reports").glob("*.json"))
    failed = json.loads(records[-1].read_text())
    assert len(records) == 3 and failed["status"] == "failed" and "MissingArtifactError" in failed["error"]
    assert tuple(failed["stages"]) == STAGES[: STAGES.index("train")]

    assert main(["gc", "--dry-run", *workdir]) == 0  # the default keeps all three runs
    assert "0 to delete" in capsys.readouterr().out.splitlines()[0]
    assert main(["gc", "--keep-runs", "1", *workdir]) == 0
    out = capsys.readouterr().out
    assert "artifacts          12 found" in out and "4 deleted" in out
    assert main(["artifacts", *workdir]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:] if line and line[0].isalpha()]
    assert tuple(listed[: STAGES.index("train")]) == STAGES[: STAGES.index("train")] and "train" not in listed

    assert main(["stats", *workdir, "select count(*) as n from samples"]) == 0  # the latest run's catalog
    assert capsys.readouterr().out.split()[-1] != "0"
    report = json.loads((tmp_path / "report.json").read_text())  # the second run's, the last one that finished
    assert main(["run", *SMOKE, "--set", "train.schedule.epochs=2", *workdir]) == 0
    again = json.loads((tmp_path / "report.json").read_text())
    assert {s: v["status"] for s, v in again["stages"].items()} == {
        **{s: "cached" for s in STAGES[:-2]}, "train": "computed", "eval": "computed"}
    assert again["stages"]["train"]["key"] == report["stages"]["train"]["key"]
