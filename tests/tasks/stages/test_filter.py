"""The filter stage on the in-process executor."""

from pathlib import Path

from tasks.store import layout as L
from tests.tasks.stages.artifact_checks import manifest, reconciles


def test_filter_on_the_local_executor(local_run):
    _, refs = local_run
    ref = refs["filter"]
    assert ref.counts["rows_in"] == refs["ingest"].counts["rows_out"] and reconciles(ref)
    assert sum(manifest(ref)["reasons"]["filtered"].values()) == ref.counts["filtered"]
    assert not (Path(ref.path) / L.FILTER_KEYS).exists()
