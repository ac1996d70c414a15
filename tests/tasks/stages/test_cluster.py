"""The cluster stage on the in-process executor."""

from pathlib import Path

import pyarrow.parquet as pq

from curation import partitions as P
from tasks.store import layout as L
from tests.tasks.stages.artifact_checks import columns, expected_columns


def test_cluster_on_the_local_executor(local_run):
    cfg, refs = local_run
    ref = refs["cluster"]
    assert columns(ref) == expected_columns("cluster")
    labels = pq.read_table(P.list_parts(Path(ref.path) / L.PARTS)[0]).column("cluster_labels").to_pylist()
    assert all(len(row) == cfg.cluster.top_k and all(0 <= c < cfg.cluster.num_centers for c in row) for row in labels)
