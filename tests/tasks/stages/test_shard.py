"""The shard stage on the in-process executor."""

import json
from pathlib import Path

from tasks.store import layout as L
from tests.tasks.stages.artifact_checks import manifest


def test_shard_on_the_local_executor(local_run):
    _, refs = local_run
    ref = refs["shard"]
    sizes = json.loads((Path(ref.path) / L.SHARDS / "sizes.json").read_text())
    assert sum(sizes.values()) == ref.counts["rows_out"] == refs["cluster"].counts["rows_out"]
    assert len(list((Path(ref.path) / L.SHARDS).glob("*.tar"))) == manifest(ref)["shards"]
