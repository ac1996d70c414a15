"""Scheduled runs on a real Prefect server (`prefect server start` on loopback): `curaclip serve --cron` serves
the deployment with its schedule, a run triggered through the API completes, and its report (Markdown), stage
table and step progress are Prefect artifacts readable through the API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.deployments import DEPLOYMENT, scheduled_pipeline
from flows.orchestration import REPORT_KEY, STAGES_KEY
from tests.servers.prefect_server import prefect_server, stop_group

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
NAME = f"{scheduled_pipeline.name}/{DEPLOYMENT}"


def wait_for(what, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while (found := what()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(what.__doc__)
        time.sleep(every)
    return found


def test_served_deployment_runs_on_trigger_and_publishes_its_artifacts(tmp_path):
    home = tmp_path / "prefect"
    home.mkdir()
    workdir = tmp_path / "run"
    with prefect_server(home) as env, temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        served_log = (tmp_path / "serve.log").open("w")
        serve = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--cron", "0 3 * * *", "--preset", "smoke",
             "--workdir", str(workdir)],
            cwd=ROOT, env={**os.environ, **env}, stdout=served_log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            with get_client(sync_client=True) as client:
                def deployment():
                    """the served deployment to appear"""
                    assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                    try:
                        return client.read_deployment_by_name(NAME)
                    except Exception:  # noqa: BLE001 - not registered yet
                        return None

                served = wait_for(deployment, 240)
                (schedule,) = served.schedules
                assert schedule.schedule.cron == "0 3 * * *" and schedule.active
                assert served.parameters["preset"] == "smoke" and served.parameters["workdir"] == str(workdir)

                triggered = run_deployment(NAME, timeout=0)

                def finished():
                    """the triggered run to finish"""
                    run = client.read_flow_run(triggered.id)
                    return run if run.state is not None and run.state.is_final() else None

                run = wait_for(finished, 900, every=3)
                assert run.state.is_completed(), (run.state, (tmp_path / "serve.log").read_text()[-4000:])

                (pipeline_run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    parent_flow_run_id={"any_": [run.id]}))
                artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[REPORT_KEY, STAGES_KEY])))
                mine = {a.key: a for a in artifacts if a.flow_run_id == pipeline_run.id}
                report = (workdir / "report.md").read_text()
                assert mine[REPORT_KEY].type == "markdown" and mine[REPORT_KEY].data == report
                table = mine[STAGES_KEY].data
                table = table if isinstance(table, list) else __import__("json").loads(table)
                assert [r["stage"] for r in table] == ["ingest", "filter", "curate", "embed", "cluster", "rewrite",
                                                       "longcap", "shard", "train", "eval"]
                assert {r["status"] for r in table} == {"computed"} and not any(r["cached"] for r in table)

                progress = [a for a in client.read_artifacts(flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[pipeline_run.id]))) if a.type == "progress"]
                assert progress and all(float(a.data) == 100.0 for a in progress)
        finally:
            stop_group(serve, signal.SIGINT, timeout=60)
            served_log.close()
