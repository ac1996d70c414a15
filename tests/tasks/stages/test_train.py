"""The train stage on the in-process executor."""

from pathlib import Path

from tasks.store import layout as L
from tests.tasks.stages.artifact_checks import manifest


def test_train_on_the_local_executor(local_run):
    _, refs = local_run
    summary = manifest(refs["train"])["train"]
    assert summary["ranks"] == 1 and (Path(refs["train"].path) / summary["checkpoint"]).is_file()
    assert (Path(refs["train"].path) / L.TRAIN_METRICS).is_file()
