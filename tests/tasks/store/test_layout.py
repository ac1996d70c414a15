"""Artifact file names are spelled once, and no two mean the same file."""

from tasks.store import layout as L


def test_every_artifact_name_is_distinct():
    names = {key: value for key, value in vars(L).items() if key.isupper() and not key.startswith("_")}
    assert len(set(names.values())) == len(names), names
    assert L.TRAIN_METRICS == "metrics.jsonl" and L.MANIFEST == "manifest.json"
