"""Scale-out (docs/architecture.md, "Workdir on object storage", "A real Ray cluster"): the smoke preset on an
S3 workdir (moto's server on loopback), then `curaclip stats` and a cached rerun against it; the same on a real
two-node Ray cluster, with parts run on both nodes; and a unit whose node is killed mid-run retried on the other
node, giving the same files. Each runs `curaclip` (or a driver script) as its own process, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from tests.servers.s3_server import s3_server

ROOT = Path(__file__).resolve().parents[2]
CURACLIP = [sys.executable, "-m", "flows.cli"]
pytestmark = pytest.mark.slow


def curaclip(*args: str, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CURACLIP, *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def manifests(url: str) -> dict[str, dict]:
    """Every published artifact's manifest in the store, by stage."""
    fs, root = fsspec.core.url_to_fs(url)
    found = {}
    for name in fs.glob(f"{root}/artifacts/*/*/manifest.json"):
        manifest = json.loads(fs.cat_file(name))
        found[manifest["stage"]] = manifest
    return found


@pytest.fixture
def s3(tmp_path):
    with s3_server("scale-out") as env:
        yield {**env, "CURACLIP_MIRROR_DIR": str(tmp_path / "mirrors")}


def test_smoke_run_on_an_s3_workdir_then_stats_and_a_cached_rerun(s3, tmp_path):
    url = "s3://scale-out/run"
    first = curaclip("run", "--preset", "smoke", "--workdir", url, env=s3)
    assert "finished" in first.stdout
    found = manifests(url)
    assert set(found) == {"ingest", "filter", "curate", "embed", "cluster", "rewrite", "longcap", "shard", "train",
                          "eval"}
    fs = fsspec.filesystem("s3")
    names = fs.find("scale-out/run")
    assert "scale-out/run/catalog.duckdb" in names and "scale-out/run/report.md" in names
    assert any(n.endswith(".tar") for n in names) and any(n.endswith("final.pt") for n in names)
    assert not any(".partial/" in n for n in names)  # every staging area was published and removed

    stats = curaclip("stats", "--workdir", url, env=s3)
    assert "ingest" in stats.stdout and "eval" in stats.stdout
    rows = curaclip("stats", "--workdir", url, "SELECT count(*) AS n FROM samples", env=s3).stdout
    assert str(found["longcap"]["counts"]["rows_out"]) in rows

    # another driver, with a mirror of its own: everything comes from the store
    rerun = curaclip("run", "--preset", "smoke", "--workdir", url,
                     env={**s3, "CURACLIP_MIRROR_DIR": str(tmp_path / "other-mirrors")})
    report = json.loads(fs.cat_file("scale-out/run/report.json"))
    assert {s["status"] for s in report["stages"].values()} == {"cached"}, rerun.stdout[-2000:]

    # the workdir copied to another prefix answers the same queries (the views' paths are relative to it)
    fs.copy("scale-out/run", "scale-out/copy", recursive=True)
    copied = curaclip("stats", "--workdir", "s3://scale-out/copy", "SELECT count(*) AS n FROM samples",
                      env={**s3, "CURACLIP_MIRROR_DIR": str(tmp_path / "third")}).stdout
    assert copied == rows


def start_cluster():
    """A real two-node Ray cluster on this machine: a head and a second node, two CPUs each."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    return cluster, worker


def test_smoke_run_on_a_two_node_ray_cluster_uses_both_nodes(s3):
    cluster, worker = start_cluster()
    try:
        url = "s3://scale-out/cluster"
        curaclip("run", "--preset", "smoke", "--workdir", url, env={**s3, "RAY_ADDRESS": cluster.address})
        found = manifests(url)
        workers = {w for m in found.values() for w in m.get("workers", [])}
        nodes = {cluster.head_node.node_id, worker.node_id}
        assert workers == nodes, (workers, nodes)  # parts ran on both nodes, and on no other
        assert all(m["workers"] for stage, m in found.items() if stage != "eval" or m.get("eval"))
    finally:
        cluster.shutdown()


DRIVER = textwrap.dedent("""
    import json, sys, time
    from dataclasses import dataclass
    from pathlib import Path

    import ray
    from curation.partitions import CaptionCounts
    from tasks.executors.base import Resources
    from tasks.executors.ray_tasks import RayExecutor
    from tasks.store import workdir as W

    url, victim, parts = sys.argv[1], sys.argv[2], int(sys.argv[3])

    @dataclass(frozen=True)
    class StallsOnVictim:
        '''A real unit that, on the victim node, announces itself and stalls until the node is killed.'''
        inner: CaptionCounts
        flag: str

        def run(self):
            if ray.get_runtime_context().get_node_id() == victim:
                W.mirror_of(self.flag).write_text(self.flag, victim)  # straight to the store
                time.sleep(600)
            return self.inner.run()

    mirror = W.driver_mirror(url)
    units = [StallsOnVictim(CaptionCounts(str(mirror.local / f"in/part-{i:05d}.parquet"),
                                          str(mirror.local / f"out/part-{i:05d}.parquet")),
                            str(mirror.local / f"flags/{i}")) for i in range(parts)]
    results = dict(RayExecutor(workdir=mirror.spec).map(units, Resources(cpus=1)))
    print("RESULTS", json.dumps({str(k): v for k, v in results.items()}), flush=True)
""")


def test_a_unit_whose_node_is_killed_is_retried_on_the_other_node(s3, tmp_path, reliability):
    from curation.partitions import CaptionCounts, read_table, write_table

    url, parts = "s3://scale-out/retry", 6
    fs = fsspec.filesystem("s3")
    local_in = tmp_path / "reference"
    for i in range(parts):
        write_table(pa.table({"text": [f"a red cube number {i} on grass", f"blue sphere {i}"]}),
                    local_in / "in" / f"part-{i:05d}.parquet")
        fs.put_file(str(local_in / "in" / f"part-{i:05d}.parquet"), f"scale-out/retry/in/part-{i:05d}.parquet")
    cluster, worker = start_cluster()
    try:
        killed = threading.Event()

        def kill_when_a_unit_stalls() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not killed.is_set():
                if fs.exists("scale-out/retry/flags") and fs.ls("scale-out/retry/flags"):
                    cluster.remove_node(worker)  # the node dies with its unit mid-run
                    killed.set()
                    return
                time.sleep(0.5)

        watcher = threading.Thread(target=kill_when_a_unit_stalls, daemon=True)
        watcher.start()
        driver = subprocess.run([sys.executable, "-c", DRIVER, url, worker.node_id, str(parts)], cwd=ROOT,
                                env={**os.environ, **s3, "RAY_ADDRESS": cluster.address}, capture_output=True,
                                text=True, timeout=600)
        watcher.join(timeout=5)
        assert driver.returncode == 0, driver.stderr[-3000:]
        assert killed.is_set(), "no unit was scheduled on the second node"
        (line,) = [line for line in driver.stdout.splitlines() if line.startswith("RESULTS ")]
        results = json.loads(line.removeprefix("RESULTS "))
        stalled = {int(Path(n).name) for n in fs.ls("scale-out/retry/flags")}
        assert stalled and all(results[str(i)]["_worker"] == cluster.head_node.node_id for i in stalled)
        for i in range(parts):  # the same files as the units give run here, untouched
            CaptionCounts(str(local_in / "in" / f"part-{i:05d}.parquet"),
                          str(local_in / "out" / f"part-{i:05d}.parquet")).run()
            fs.get_file(f"scale-out/retry/out/part-{i:05d}.parquet", str(tmp_path / f"got-{i}.parquet"))
            assert read_table(tmp_path / f"got-{i}.parquet").equals(read_table(local_in / "out" /
                                                                               f"part-{i:05d}.parquet"))
    finally:
        cluster.shutdown()
    reliability.fault("Ray node killed mid-unit", "Ray executor (two-node cluster)")
