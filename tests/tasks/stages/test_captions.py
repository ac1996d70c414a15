"""The rewrite and longcap stages on the in-process executor."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation import partitions as P
from curation.captions import LongcapConfig, OpenAIConfig, RewriteConfig
from curation.captions.cache import AnswerCache
from curation.captions.runner import CaptionFailureError
from flows.config import load_config
from flows.presets import preset_overrides
from tasks.stages import captions
from tasks.stages.common import RunContext
from tasks.store import layout as L
from tests.servers.openai_server import OpenAICompatibleServer
from tests.tasks.stages.artifact_checks import columns, expected_columns, manifest


def test_rewrite_on_the_local_executor(local_run):
    _, refs = local_run
    ref = refs["rewrite"]
    assert columns(ref) == expected_columns("rewrite") and ref.counts["rows_out"] == refs["curate"].counts["rows_out"]
    assert manifest(ref)["backend"]["simulated"] is True


def test_longcap_on_the_local_executor(local_run):
    _, refs = local_run
    ref = refs["longcap"]
    assert columns(ref) == expected_columns("longcap")
    table = pq.read_table(P.list_parts(Path(ref.path) / L.PARTS)[0], columns=["long_caption"])
    assert all(text for text in table.column("long_caption").to_pylist())  # every row found its truth by uid
    assert refs["ingest"].key in manifest(ref)["inputs"].values()  # the truth is an explicit input


# --- the openai backend, against the loopback OpenAI-compatible server ----------------------------------------

KEY = "sk-curaclip-stage-test-5b2e9a41"


@pytest.fixture
def server():
    with OpenAICompatibleServer(hang_s=1.0) as s:
        yield s


def _openai_cfg(server, stage: str = "rewrite", **kw):
    settings = {"backend": "openai", "progress": False,
                "openai": OpenAIConfig(base_url=server.url, model="tiny-llm", api_key_env="CURACLIP_STAGE_KEY",
                                       backoff_s=0.01, max_backoff_s=0.05, timeout_s=0.5, max_retries=1,
                                       concurrency=4), **kw}
    return RewriteConfig(**settings) if stage == "rewrite" else LongcapConfig(**settings)


def _files_containing(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_both_stages_on_openai_count_requests_and_never_write_the_key(local_run, server, tmp_path, monkeypatch):
    monkeypatch.setenv("CURACLIP_STAGE_KEY", KEY)
    _, refs = local_run
    ctx = RunContext(workdir=str(tmp_path), run_id="openai", executor="local")
    rewritten = captions.rewrite.fn(ctx, _openai_cfg(server), refs["cluster"])
    # longcap names no model: the stage asks the server for the one it serves
    longcap_cfg = LongcapConfig(backend="openai", progress=False,
                                openai=OpenAIConfig(base_url=server.url, api_key_env="CURACLIP_STAGE_KEY"))
    longcap = captions.longcap.fn(ctx, longcap_cfg, rewritten, refs["ingest"])
    rows = refs["curate"].counts["rows_out"]
    m = manifest(rewritten)
    assert m["backend"]["name"] == "openai" and m["backend"]["simulated"] is False
    assert m["captions"]["requests"] == m["captions"]["answered"] == 4 * rows
    assert manifest(longcap)["captions"]["requests"] == 2 * rows  # a long and a short caption per image
    assert manifest(longcap)["config"]["openai"]["model"] == "served-model"  # in the key, as if named
    # each manifest names the answer-cache folders its stage used, the ones on disk (what gc keeps for a run)
    used = [*m["caption_cache"], *manifest(longcap)["caption_cache"]]
    assert len(used) == 2 and sorted(used) == sorted(p.name for p in (tmp_path / L.CAPTION_CACHE).iterdir())
    again = captions.rewrite.fn(RunContext(workdir=str(tmp_path), run_id="forced", executor="local",
                                           force=frozenset({"rewrite"})), _openai_cfg(server), refs["cluster"])
    assert manifest(again)["captions"]["cached"] == 4 * rows and manifest(again)["captions"]["sent"] == 0
    assert columns(longcap) == expected_columns("longcap")
    assert {e["authorization"] for e in server.log} == {f"Bearer {KEY}"}  # sent, and only to the server
    # the variable's name is recorded, never its value
    assert m["settings"]["openai"]["api_key_env"] == "CURACLIP_STAGE_KEY" and KEY not in json.dumps(m)
    assert _files_containing(tmp_path, KEY) == []


def test_the_stage_fails_over_its_failure_share_and_the_rerun_asks_only_for_the_failed(local_run, server,
                                                                                       tmp_path):
    _, refs = local_run
    ctx = RunContext(workdir=str(tmp_path), run_id="flaky", executor="local")
    server.behave = lambda prompt, attempt: "503" if zlib.crc32(prompt.encode()) % 10 == 0 else "ok"  # ~10%
    cfg = _openai_cfg(server)
    with pytest.raises(CaptionFailureError, match="max_failure_share"):
        captions.rewrite.fn(ctx, cfg, refs["cluster"])
    failed = len([e for e in server.log if e["behaviour"] == "503"]) // 2  # each tried twice (max_retries=1)
    asked = len(server.log)
    assert failed > 0
    server.behave = lambda prompt, attempt: "ok"
    ref = captions.rewrite.fn(ctx, cfg, refs["cluster"])
    assert len(server.log) - asked == failed  # the answered ones came from the cache
    tally = manifest(ref)["captions"]
    assert tally["sent"] == failed and tally["failures"]["http_5xx"] == 0
    assert tally["cached"] == tally["requests"] - failed


def test_a_killed_rewrite_resumes_asking_only_for_what_it_had_not_cached(local_run, server, tmp_path):
    """`curaclip run --only rewrite` in a subprocess, SIGKILLed half-way; the rerun sends only the rest."""
    cfg, refs = local_run
    workdir = Path(refs["curate"].path).parents[2]
    server.latency_s = 0.01
    sets = ["executor=local", "rewrite.backend=openai", f"rewrite.openai.base_url={server.url}",
            "rewrite.openai.model=tiny-llm", "rewrite.openai.concurrency=2", "rewrite.cache_batch=8",
            "rewrite.progress=false"]
    command = [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke", "--only", "rewrite",
               "--workdir", str(workdir), *[a for s in sets for a in ("--set", s)]]
    # a fresh Prefect home migrates its database first: more than the 20 s Prefect waits by default on two cores
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)  # its own group: the kill takes Prefect's server too
    total = 4 * refs["curate"].counts["rows_out"]
    deadline = time.time() + 300  # Prefect's temporary server starts first: slow on a loaded machine
    while len(server.answered()) < total // 3 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    exited = process.poll()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert exited is None, process.stderr.read().decode()[-3000:]  # still running when killed
    assert 0 < len(server.answered()) < total, process.stderr.read().decode()[-3000:]  # killed half-way
    cache_dirs = list((workdir / L.CAPTION_CACHE).iterdir())
    assert len(cache_dirs) == 1
    stored = AnswerCache(cache_dirs[0])
    on_disk, asked = len(stored), len(server.log)
    assert on_disk > 0
    rerun_cfg = load_config(overrides=[*preset_overrides("smoke"), *sets])
    ctx = RunContext(workdir=str(workdir), run_id="resume", executor="local")
    ref = captions.rewrite.fn(ctx, rerun_cfg.rewrite, refs["cluster"])
    assert len(server.log) - asked == total - on_disk
    assert manifest(ref)["captions"]["cached"] == on_disk
    assert ref.counts["rows_out"] == refs["curate"].counts["rows_out"]


def test_dry_run_then_run_then_stats_from_the_command_line(local_run, server, capsys):
    """`--set rewrite.dry_run=true` counts and sends nothing; the real run's failures show in `curaclip stats`."""
    from flows.cli import main

    _, refs = local_run
    workdir = str(Path(refs["curate"].path).parents[2])
    server.behave = lambda prompt, attempt: "400" if zlib.crc32(prompt.encode()) % 20 == 0 else "ok"  # ~5%
    common = ["run", "--preset", "smoke", "--only", "rewrite", "--workdir", workdir, "--set", "executor=local",
              "--set", "rewrite.backend=openai", "--set", f"rewrite.openai.base_url={server.url}",
              "--set", "rewrite.openai.model=stats-llm", "--set", "rewrite.max_failure_share=0.2",
              "--set", "rewrite.progress=false"]
    total = 4 * refs["curate"].counts["rows_out"]
    assert main([*common, "--set", "rewrite.dry_run=true"]) == 0
    out = capsys.readouterr().out
    assert f"rewrite: dry run, nothing sent: {total} requests to send (0 cached)" in out
    assert server.log == []
    report = json.loads((Path(workdir) / "report.json").read_text())
    assert report["dry_run"]["rewrite"]["requests"] == total and "rewrite" not in report["stages"]
    assert main(common) == 0
    failed = sum(e["behaviour"] == "400" for e in server.log)
    assert 0 < failed < total * 0.2 and len(server.log) == total  # a 400 is never retried
    assert f"rewrite: {total} requests, 0 cached, {total} sent, failed: http_4xx {failed}" in capsys.readouterr().out
    assert main(["stats", "--workdir", workdir]) == 0
    stats = capsys.readouterr().out
    assert "caption requests" in stats and re.search(rf"rewrite\s+openai\s+failed\s+http_4xx\s+{failed}\b", stats)
    assert main(["stats", "--workdir", workdir, "SELECT sum(requests) FROM caption_requests WHERE outcome = "
                 "'answered'"]) == 0
    assert str(total - failed) in capsys.readouterr().out
