import json

import pytest

from tasks.artifacts import ArtifactStore, config_hash, stage_key


def test_key_changes_with_every_ingredient():
    base = stage_key("curate", "1", {"t": 10}, ["abc"])
    assert base == stage_key("curate", "1", {"t": 10}, ["abc"])
    variants = [
        stage_key("filter", "1", {"t": 10}, ["abc"]),
        stage_key("curate", "2", {"t": 10}, ["abc"]),
        stage_key("curate", "1", {"t": 11}, ["abc"]),
        stage_key("curate", "1", {"t": 10}, ["abd"]),
    ]
    assert base not in variants and len(set(variants)) == 4


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})


def test_artifact_appears_only_when_complete(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.writing("ingest", "k1", {"counts": {}}) as tmp:
            (tmp / "part.txt").write_text("half")
            assert not store.is_complete("ingest", "k1")
            raise RuntimeError("crash mid-write")
    assert not store.is_complete("ingest", "k1")
    assert not store.path("ingest", "k1").exists()
    assert list((tmp_path / "artifacts" / "ingest").iterdir()) == []

    manifest = {"counts": {"rows_in": 3, "rows_out": 3}}
    with store.writing("ingest", "k1", manifest) as tmp:
        (tmp / "part.txt").write_text("whole")
    assert store.is_complete("ingest", "k1")
    ref = store.ref("ingest", "k1")
    assert ref.counts == {"rows_in": 3, "rows_out": 3} and ref.status == "cached"
    assert json.loads(ref.file("manifest.json").read_text())["counts"]["rows_in"] == 3


def test_forced_rewrite_replaces_atomically(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.writing("x", "k", {"v": 1}) as tmp:
        (tmp / "data").write_text("old")
    with store.writing("x", "k", {"v": 2}) as tmp:
        (tmp / "data").write_text("new")
    assert (store.path("x", "k") / "data").read_text() == "new"
    assert store.manifest("x", "k")["v"] == 2
    assert sorted(p.name for p in (tmp_path / "artifacts" / "x").iterdir()) == ["k"]
