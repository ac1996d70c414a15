"""`curaclip run` killed from outside (SIGKILL to its whole process group: the Prefect server too) half-way
through a stage, then run again: the rerun redoes only the parts that had not finished, and the artifact it
publishes equals an uninterrupted run's. In-process executor, so no Ray cluster outlives the kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation import partitions as P

ROOT = Path(__file__).resolve().parents[2]
PARTS = 12
ARGS = ["--only", "ingest", "--set", "executor=local", "--set", f"ingest.partitions={PARTS}",
        "--set", "ingest.world.num_images=3600"]


def curaclip(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "run", "--workdir", str(workdir), *ARGS]


def stage_dir(workdir: Path) -> Path:
    return workdir / "artifacts" / "ingest"


@pytest.mark.slow
def test_a_run_killed_mid_stage_resumes_with_only_the_unfinished_parts(tmp_path, reliability):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    work = tmp_path / "work"
    proc = subprocess.Popen(curaclip(work), cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # Prefect's temporary server alone took minutes on a loaded machine
    done: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        done = list(stage_dir(work).glob("*.partial/_done/read/*.json"))
        if len(done) >= 2:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    marked = len(list(stage_dir(work).glob("*.partial/_done/read/*.json")))
    assert 2 <= marked < PARTS, f"killed with {marked} of {PARTS} parts read; the test needs a half-done stage"

    subprocess.run(curaclip(work), cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    (artifact,) = [p for p in stage_dir(work).iterdir() if (p / "manifest.json").exists()]
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["parts"]["read"] == {"computed": PARTS - marked, "reused": marked}
    assert not list(stage_dir(work).glob("*.partial"))

    clean = tmp_path / "clean"
    subprocess.run(curaclip(clean), cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    (whole,) = [p for p in stage_dir(clean).iterdir() if (p / "manifest.json").exists()]
    assert whole.name == artifact.name
    for folder in ("parts", "quarantine", "truth"):
        got, want = P.list_parts(artifact / folder), P.list_parts(whole / folder)
        assert len(got) == len(want) == PARTS
        assert all(pq.read_table(a).equals(pq.read_table(b)) for a, b in zip(got, want))
    reliability.fault("SIGKILL of the run's process group", "ingest")
