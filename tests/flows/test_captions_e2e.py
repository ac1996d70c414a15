"""The smoke preset end to end through Prefect and Ray with both caption stages on the `openai` backend, against
the loopback OpenAI-compatible server: every stage runs, the report counts the requests, and the key's value is
in no file the run writes (the workdir, Prefect's home with its database and logs, Ray's session logs)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.servers.openai_server import OpenAICompatibleServer

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-e2e-curaclip-91c3d7aa0f"


def _files_containing(root: Path, secret: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and secret in path.read_bytes():
                hits.append(str(path))
        except OSError:  # a socket or a file gone while walking
            continue
    return hits


@pytest.mark.slow
def test_smoke_run_on_the_openai_backend_through_prefect_and_ray_never_writes_the_key(tmp_path):
    work, prefect_home = tmp_path / "work", tmp_path / "prefect"
    # Ray's socket paths must stay under 108 bytes: its temp root is a short folder of its own
    ray_tmp = Path(tempfile.mkdtemp(prefix="cc-ray-", dir="/tmp"))
    try:
        _run_and_check(work, prefect_home, ray_tmp)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _run_and_check(work: Path, prefect_home: Path, ray_tmp: Path) -> None:
    with OpenAICompatibleServer() as server:
        sets = ["rewrite.backend=openai", f"rewrite.openai.base_url={server.url}", "rewrite.openai.model=tiny-llm",
                "rewrite.openai.api_key_env=CURACLIP_E2E_KEY",
                "longcap.backend=openai", f"longcap.openai.base_url={server.url}", "longcap.openai.model=tiny-vlm",
                "longcap.openai.api_key_env=CURACLIP_E2E_KEY", "ray.num_cpus=2"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CURACLIP_E2E_KEY": KEY, "PREFECT_HOME": str(prefect_home),
               "RAY_TMPDIR": str(ray_tmp), "PREFECT_LOGGING_LEVEL": "DEBUG",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}  # a fresh home migrates its database first
        command = [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke", "--workdir", str(work),
                   *[a for s in sets for a in ("--set", s)]]
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=900)
        assert run.returncode == 0, run.stderr.decode()[-4000:]
        log = list(server.log)
    report = json.loads((work / "report.json").read_text())
    assert set(report["stages"]) == {"ingest", "filter", "curate", "rewrite", "longcap", "embed", "cluster",
                                     "shard", "train", "eval"}
    rows = report["stages"]["curate"]["rows_out"]
    assert report["captions"]["rewrite"]["answered"] == 4 * rows
    assert report["captions"]["longcap"]["answered"] == 2 * rows
    assert "rewrite" not in report["simulated"] and "longcap" not in report["simulated"]
    assert {e["authorization"] for e in log} == {f"Bearer {KEY}"} and len(log) == 6 * rows
    assert any(ray_tmp.rglob("*.log")) and prefect_home.exists()  # the logs scanned below exist
    leaks = [p for root in (work, prefect_home, ray_tmp) for p in _files_containing(root, KEY.encode())]
    assert leaks == []
    assert KEY.encode() not in run.stdout + run.stderr
