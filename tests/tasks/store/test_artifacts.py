import json
import threading
import time

import pytest

from tasks.store.artifacts import ArtifactStore, Staging, config_hash, stage_key


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
        with store.writing("ingest", "k1", {"counts": {}}) as staging:
            (staging.path / "part.txt").write_text("half")
            staging.mark("read", 0, "d0", {"rows_in": 3})
            assert not store.is_complete("ingest", "k1")
            raise RuntimeError("crash mid-write")
    assert not store.is_complete("ingest", "k1")
    assert not store.path("ingest", "k1").exists()
    # the staging area stays for the next run of the key, with its marked part
    assert [p.name for p in (tmp_path / "artifacts" / "ingest").iterdir()] == ["k1.partial"]
    assert Staging(store.staging("ingest", "k1")).done("read", 0, "d0") == {"rows_in": 3}

    manifest = {"counts": {"rows_in": 3, "rows_out": 3}}
    with store.writing("ingest", "k1", manifest) as staging:
        assert (staging.path / "part.txt").read_text() == "half"  # reused, not emptied
        (staging.path / "part.txt").write_text("whole")
    assert store.is_complete("ingest", "k1")
    assert sorted(p.name for p in store.path("ingest", "k1").iterdir()) == ["manifest.json", "part.txt"]  # no markers
    assert [p.name for p in (tmp_path / "artifacts" / "ingest").iterdir()] == ["k1"]
    ref = store.ref("ingest", "k1")
    assert ref.counts == {"rows_in": 3, "rows_out": 3} and ref.status == "cached"
    assert json.loads(ref.file("manifest.json").read_text())["counts"]["rows_in"] == 3


def test_forced_rewrite_replaces_atomically(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.writing("x", "k", {"v": 1}) as staging:
        (staging.path / "data").write_text("old")
    with store.writing("x", "k", {"v": 2}, fresh=True) as staging:
        (staging.path / "data").write_text("new")
    assert (store.path("x", "k") / "data").read_text() == "new"
    assert store.manifest("x", "k")["v"] == 2
    assert sorted(p.name for p in (tmp_path / "artifacts" / "x").iterdir()) == ["k"]


def test_a_marker_counts_only_for_the_same_unit(tmp_path):
    staging = Staging(tmp_path / "k.partial")
    staging.mark("read", 3, "digest-a", {"rows_in": 7})
    assert staging.done("read", 3, "digest-a") == {"rows_in": 7}
    assert staging.done("read", 3, "digest-b") is None  # another unit at that index: redo it
    assert staging.done("read", 2, "digest-a") is None and staging.done("dedup", 3, "digest-a") is None
    staging.unmark("read")
    assert staging.done("read", 3, "digest-a") is None


def test_a_forced_write_empties_the_staging_area(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.writing("x", "k", {}) as staging:
            staging.mark("s", 0, "d", {})
            raise RuntimeError("killed")
    with store.writing("x", "k", {}, fresh=True) as staging:
        assert staging.done("s", 0, "d") is None


def test_one_writer_per_key_and_the_second_waits(tmp_path):
    store = ArtifactStore(tmp_path)
    order = []

    def second() -> None:
        with store.locked("x", "k"):
            order.append("second")

    with store.locked("x", "k"):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.3)
        order.append("first")
    waiter.join(timeout=10)
    assert order == ["first", "second"]
    assert (tmp_path / "artifacts" / "x" / ".k.lock").exists()  # beside the key's folders, never deleted
