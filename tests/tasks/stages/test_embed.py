"""The embed stage on the in-process executor."""

from pathlib import Path

from curation import partitions as P
from tasks.store import layout as L
from tests.tasks.stages.artifact_checks import columns, expected_columns, manifest


def test_embed_on_the_local_executor(local_run):
    _, refs = local_run
    ref = refs["embed"]
    assert columns(ref) == expected_columns("embed") and manifest(ref)["dim"] > 0
    assert (Path(ref.path) / manifest(ref)["model"]["checkpoint"]).is_file()  # the bootstrap run's weights
    assert manifest(ref)["parts"]["embed"]["computed"] == len(P.list_parts(Path(ref.path) / L.PARTS))
