"""Secrets come from the environment and appear in no file the pipeline writes (issue 15). A smoke run with both
caption stages on the `openai` backend (the loopback OpenAI-compatible server) and distinctive values in every
credential variable the pipeline or its libraries read; then every file under the workdir and Prefect's home is
scanned for each value: raw bytes, the members of gzip, tar and zip files (checkpoints are zips), and the rows of
Parquet files (compressed pages would hide a value from a raw scan). The run's output and `curaclip show-config`
must not show them either."""

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.servers.openai_server import OpenAICompatibleServer

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "OPENAI_API_KEY": "sk-leakcheck-openai-5f1e9a",  # the caption backends' api_key_env by default
    "AWS_ACCESS_KEY_ID": "AKIALEAKCHECK7Q2Z",
    "AWS_SECRET_ACCESS_KEY": "leakcheck-aws-secret-0b8d6c",
    "AWS_SESSION_TOKEN": "leakcheck-aws-session-93aa1f",
    "PREFECT_API_KEY": "pnu_leakcheck_prefect_4c2e",
    "HF_TOKEN": "hf_leakcheck_token_d71b",
}


def _contents(path: Path) -> list[bytes]:
    """A file's bytes, and what it holds inside: gzip, tar and zip members, Parquet rows."""
    data = path.read_bytes()
    found = [data]
    if data[:2] == b"\x1f\x8b":
        found += _inner(gzip.decompress(data))
    else:
        found += _inner(data)
    if data[:4] == b"PAR1":
        found.append(json.dumps(pq.read_table(path).to_pylist(), default=str).encode())
    return found


def _inner(data: bytes) -> list[bytes]:
    buffer, found = io.BytesIO(data), []
    if zipfile.is_zipfile(buffer):
        with zipfile.ZipFile(buffer) as archive:
            found += [archive.read(name) for name in archive.namelist()]
    else:
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as archive:
                found += [archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()]
        except tarfile.TarError:
            pass
    return [data, *found] if found else [data]


def leaks(roots: list[Path]) -> list[str]:
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if not path.is_file() or path.is_symlink():
                continue
            try:
                contents = _contents(path)
            except OSError:  # a socket, or a file gone while walking
                continue
            hits += [f"{name} in {path}" for name, value in SECRETS.items()
                     if any(value.encode() in blob for blob in contents)]
    return hits


@pytest.mark.slow
def test_secrets_from_the_environment_are_in_no_file_the_pipeline_writes(tmp_path, reliability):
    work, prefect_home = tmp_path / "work", tmp_path / "prefect"
    env = {**os.environ, **SECRETS, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(prefect_home),
           "PREFECT_LOGGING_LEVEL": "DEBUG",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}  # a fresh home migrates its database first
    with OpenAICompatibleServer() as server:
        sets = ["executor=local",
                "rewrite.backend=openai", f"rewrite.openai.base_url={server.url}", "rewrite.openai.model=tiny-llm",
                "longcap.backend=openai", f"longcap.openai.base_url={server.url}", "longcap.openai.model=tiny-vlm"]
        options = [a for s in sets for a in ("--set", s)]
        run = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--preset", "smoke", "--workdir", str(work),
                              *options], cwd=ROOT, env=env, capture_output=True, timeout=900)
        assert run.returncode == 0, run.stderr.decode()[-4000:]
        authorizations = {e["authorization"] for e in server.log}
    assert authorizations == {f"Bearer {SECRETS['OPENAI_API_KEY']}"}  # the key was read, and used
    shown = subprocess.run([sys.executable, "-m", "flows.cli", "show-config", "--preset", "smoke", *options],
                           cwd=ROOT, env=env, capture_output=True, timeout=300, check=True)
    assert b"api_key_env: OPENAI_API_KEY" in shown.stdout  # the variable's name is shown, never its value

    manifests = list((work / "artifacts").glob("*/*/manifest.json"))
    assert len(manifests) == 10 and (work / "report.md").exists() and (work / "catalog.duckdb").exists()
    for manifest in manifests:
        config = json.dumps(json.loads(manifest.read_text())["config"])
        assert not [name for name, value in SECRETS.items() if value in config], manifest
    assert leaks([work, prefect_home]) == []
    output = run.stdout + run.stderr + shown.stdout + shown.stderr
    assert [name for name, value in SECRETS.items() if value.encode() in output] == []
    reliability.check("secrets in the environment written to no file", refused=len(SECRETS))
