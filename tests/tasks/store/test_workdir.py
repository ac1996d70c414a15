"""A workdir on object storage (tasks/store/workdir.py) against a real S3-compatible server (moto, on loopback):
the mirror's pulls and pushes, listings, publishing with the manifest last, the store's markers, and a unit's
files moved around its run on a "node" whose mirror is its own."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from curation.partitions import read_table, write_table
from tasks.store import workdir as W
from tasks.store.artifacts import ArtifactStore
from tests.servers.s3_server import s3_server


@pytest.fixture(scope="module")
def s3():
    with s3_server("wd-test") as env:
        yield env


@pytest.fixture
def mirror(s3, tmp_path, request):
    return W.open_mirror(f"s3://wd-test/{request.node.name}", tmp_path / "driver")


def store_files(url: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url)
    return {name[len(root) + 1:]: fs.cat_file(name) for name in fs.find(root)}


def test_urls_and_local_paths_are_told_apart():
    assert W.is_remote("s3://bucket/run") and W.is_remote("gs://bucket/run")
    assert not W.is_remote("runs/default") and not W.is_remote("file:///tmp/run") and not W.is_remote("/tmp/x")
    assert W.local_path("file:///tmp/run") == str(Path("/tmp/run").resolve())


def test_push_pull_and_listing_go_through_the_store(mirror, tmp_path):
    part = mirror.local / "artifacts" / "ingest" / "k" / "parts" / "part-00000.parquet"
    write_table(pa.table({"uid": ["a", "b"]}), part)
    (part.parent / ".hidden").write_text("x")
    W.push(part.parent)
    assert set(store_files(mirror.url)) == {"artifacts/ingest/k/parts/part-00000.parquet",
                                            "artifacts/ingest/k/parts/.hidden"}
    other = W.open_mirror(mirror.url, tmp_path / "elsewhere")  # another machine's mirror of the same store
    theirs = other.local / "artifacts" / "ingest" / "k" / "parts"
    assert other.listing(theirs, ".parquet") == [str(theirs / "part-00000.parquet")]  # hidden files are not parts
    assert not theirs.exists()  # listing downloads nothing
    other.pull(theirs)
    assert read_table(theirs / "part-00000.parquet").column("uid").to_pylist() == ["a", "b"]
    assert W.parquet_rows(part) == 2
    W.remove(part.parent)
    assert store_files(mirror.url) == {} and not part.parent.exists()


def test_an_artifact_is_published_with_its_manifest_last_and_markers_live_in_the_store(mirror, tmp_path):
    store = ArtifactStore(mirror.local, mirror)
    with store.locked("filter", "k1"):
        with pytest.raises(RuntimeError):
            with store.writing("filter", "k1", {"stage": "filter"}) as area:
                write_table(pa.table({"uid": ["a"]}), area.path / "parts" / "part-00000.parquet")
                W.push(area.path / "parts")
                area.mark("apply", 0, "digest0", {"rows": 1})
                raise RuntimeError("killed half-way")
    files = store_files(mirror.url)
    assert "artifacts/filter/k1.partial/_done/apply/00000.json" in files  # the marker reached the store
    assert not store.is_complete("filter", "k1")

    # a second driver with an empty mirror resumes: the marker is read back, then the artifact is published
    fresh = W.open_mirror(mirror.url, tmp_path / "driver2")
    store2 = ArtifactStore(fresh.local, fresh)
    with store2.writing("filter", "k1", {"stage": "filter"}) as area:
        assert area.done("apply", 0, "digest0") == {"rows": 1}
        assert area.done("apply", 0, "another unit") is None
    assert store2.is_complete("filter", "k1") and store.is_complete("filter", "k1")
    files = store_files(mirror.url)
    assert sorted(files) == ["artifacts/filter/k1/manifest.json", "artifacts/filter/k1/parts/part-00000.parquet"]
    assert json.loads(files["artifacts/filter/k1/manifest.json"])["stage"] == "filter"
    assert store.manifest("filter", "k1")["stage"] == "filter"  # read from the store by the first driver too


@dataclass(frozen=True)
class Double:
    """A unit: reads ``source``, writes ``out`` with the numbers doubled."""

    source: str
    out: str
    note: str = "not a path"

    def run(self) -> dict:
        table = read_table(self.source)
        write_table(pa.table({"x": [2 * v for v in table.column("x").to_pylist()]}), self.out)
        return {"rows": table.num_rows, "written": self.out}


class Adder:
    """A stateful worker whose factory names a file it loads once (a checkpoint) and a cache folder it writes."""

    def __init__(self, offset_file: str, cache: str):
        self.offset = int(Path(offset_file).read_text())
        self.cache = Path(cache)

    def __call__(self, unit: Double) -> dict:
        table = read_table(unit.source)
        write_table(pa.table({"x": [v + self.offset for v in table.column("x").to_pylist()]}), unit.out)
        self.cache.mkdir(parents=True, exist_ok=True)
        (self.cache / f"{Path(unit.out).stem}.txt").write_text("cached")
        return {"rows": table.num_rows}


def test_a_unit_runs_in_its_nodes_mirror_and_its_outputs_reach_the_store(mirror, monkeypatch, tmp_path):
    monkeypatch.setenv(W.MIRROR_ENV, str(tmp_path / "mirrors"))
    source = mirror.local / "in.parquet"
    write_table(pa.table({"x": [1, 2, 3]}), source)
    W.push(source)
    unit = Double(str(source), str(mirror.local / "out" / "part-00000.parquet"))
    result = W.in_mirror(mirror.spec, "node-a", lambda u: u.run(), unit)
    node = W.node_mirror(mirror.spec, "node-a")
    assert node.local != mirror.local and (node.local / "out" / "part-00000.parquet").is_file()
    assert result == {"rows": 3, "written": unit.out}  # paths in the result come back in the sender's terms
    assert not Path(unit.out).exists()  # the driver's mirror has nothing until it asks
    W.pull(unit.out)
    assert read_table(unit.out).column("x").to_pylist() == [2, 4, 6]
    assert set(store_files(mirror.url)) == {"in.parquet", "out/part-00000.parquet"}  # the input was not re-sent

    offset = mirror.local / "offset.txt"
    offset.write_text("10")
    W.push(offset)
    worker = W.MirroredWorker(mirror.spec, "node-b", functools.partial(Adder, str(offset),
                                                                        str(mirror.local / "cache")))
    worker(Double(str(source), str(mirror.local / "out" / "part-00001.parquet")))
    worker(Double(str(source), str(mirror.local / "out" / "part-00002.parquet")))
    files = store_files(mirror.url)
    assert {"cache/part-00001.txt", "cache/part-00002.txt", "out/part-00002.parquet"} <= set(files)
    W.pull(mirror.local / "out")
    assert read_table(mirror.local / "out" / "part-00002.parquet").column("x").to_pylist() == [11, 12, 13]


def test_rebase_moves_only_paths_under_the_root():
    unit = Double("/m/a/in.parquet", "/m/a/out.parquet", note="/m/ab/not-under")
    moved = W.rebase(unit, "/m/a", "/n/b")
    assert moved == Double("/n/b/in.parquet", "/n/b/out.parquet", note="/m/ab/not-under")
    assert W.rebase(unit, "/x", "/y") is unit
    factory = W.rebase(functools.partial(Adder, "/m/a/offset", cache="/m/a/cache"), "/m/a", "/n")
    assert factory.args == ("/n/offset",) and factory.keywords == {"cache": "/n/cache"}
    assert W.paths_in((unit, {"k": ["/m/a/c"]}), "/m/a") == ["/m/a/c", "/m/a/in.parquet", "/m/a/out.parquet"]
