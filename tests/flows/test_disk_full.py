"""`curaclip run` on a real small filesystem that fills up while a stage writes (issue 15): the run stops with one
clear line naming the stage, its staging area and what to do, publishes nothing of that stage, and once the
filesystem is larger the same command completes with the curated set, captions and shards of an uninterrupted
run on the normal disk. In-process executor; the workdir is a size-limited tmpfs the test mounts (root only)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.tmpfs import DISK_FULL, resize, small_tmpfs

ROOT = Path(__file__).resolve().parents[2]
SIZE = "150m"
"""Measured on the smoke preset (2026-12-02): the workdir peaks at ~136 MB while embed's bootstrap model is saved
(then discarded), holds ~43 MB once shard is done and ~177 MB once train has written its two ~66 MB checkpoints.
At 150 MB every stage up to shard publishes and train fills the disk writing its final checkpoint."""
COMPARED = ("curate", "rewrite", "longcap", "shard")


def curaclip(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke", "--workdir", str(workdir),
               "--set", "executor=local", *extra]
    return subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=900)


def published(workdir: Path, stage: str) -> list[Path]:
    return [p.parent for p in (workdir / "artifacts" / stage).glob("*/manifest.json")]


def error_line(run: subprocess.CompletedProcess) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith("curaclip run: error:")]
    assert len(lines) == 1, run.stderr[-4000:]
    return lines[0]


def used_kib(path: Path) -> int:
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize // 1024


@pytest.mark.slow
def test_a_full_disk_stops_the_stage_cleanly_and_a_rerun_with_space_completes(tmp_path, reliability):
    reference = tmp_path / "reference"
    assert curaclip(reference).returncode == 0
    with small_tmpfs(tmp_path / "disk", SIZE) as disk:
        work = disk / "work"
        _fill_up_in_train(work)
        _fill_up_in_a_forced_shard(disk, work)
        resize(disk, "512m")
        rerun = curaclip(work)
        assert rerun.returncode == 0, rerun.stderr[-4000:]
        assert not list((work / "artifacts" / "train").glob("*.partial"))
        _same_outputs(work, reference)
    for stage in ("train", "shard"):  # what the two helpers above filled the disk in
        reliability.fault(DISK_FULL, stage)


def _fill_up_in_train(work: Path) -> None:
    run = curaclip(work)
    assert run.returncode == 2
    line = error_line(run)
    (staging,) = (work / "artifacts" / "train").glob("*.partial")
    assert "stage train" in line and str(staging) in line and "no space left on device" in line, line
    assert "run the same command again" in line, line
    assert published(work, "train") == [] and not (staging / "manifest.json").exists()
    assert all(published(work, stage) for stage in COMPARED)  # the stages before train are whole


def _fill_up_in_a_forced_shard(disk: Path, work: Path) -> None:
    """Recompute shard on a disk with ~1 MB left (its shards take ~2 MB): it stops after some shards, and the
    artifact it was replacing stays as it was."""
    (old,) = published(work, "shard")
    before = (old / "manifest.json").read_text()
    resize(disk, f"{used_kib(disk) + 1024}k")
    run = curaclip(work, "--force", "shard")
    assert run.returncode == 2
    line = error_line(run)
    staging = old.with_name(old.name + ".partial")
    assert "stage shard" in line and str(staging) in line and "no space left on device" in line, line
    marked = list((staging / "_done" / "write").glob("*.json"))
    assert 0 < len(marked) < json.loads(before)["shards"], "the disk should fill part-way through the shards"
    assert not (staging / "manifest.json").exists()
    assert published(work, "shard") == [old] and (old / "manifest.json").read_text() == before


def _same_outputs(work: Path, reference: Path) -> None:
    for stage in COMPARED:
        (got,), (want,) = published(work, stage), published(reference, stage)
        assert got.name == want.name, stage  # same config and inputs: same key
        files = sorted(p.relative_to(want) for p in want.rglob("*") if p.is_file() and p.name != "manifest.json")
        assert files and files == sorted(p.relative_to(got) for p in got.rglob("*")
                                         if p.is_file() and p.name != "manifest.json")
        for rel in files:
            if rel.suffix == ".parquet":
                assert pq.read_table(got / rel).equals(pq.read_table(want / rel)), f"{stage}/{rel}"
            else:  # shard tars, sizes.json
                assert (got / rel).read_bytes() == (want / rel).read_bytes(), f"{stage}/{rel}"
