"""The rewrite and longcap stages on the in-process executor."""

from pathlib import Path

import pyarrow.parquet as pq

from curation import partitions as P
from tasks.store import layout as L
from tests.tasks.stages.artifact_checks import columns, expected_columns, manifest


def test_rewrite_on_the_local_executor(local_run):
    _, refs = local_run
    ref = refs["rewrite"]
    assert columns(ref) == expected_columns("rewrite") and ref.counts["rows_out"] == refs["curate"].counts["rows_out"]
    assert manifest(ref)["backend"]["simulated"] is True


def test_longcap_on_the_local_executor(local_run):
    _, refs = local_run
    ref = refs["longcap"]
    assert columns(ref) == expected_columns("longcap")
    table = pq.read_table(P.list_parts(Path(ref.path) / L.PARTS)[0], columns=["long_caption"])
    assert all(text for text in table.column("long_caption").to_pylist())  # every row found its truth by uid
    assert refs["ingest"].key in manifest(ref)["inputs"].values()  # the truth is an explicit input
