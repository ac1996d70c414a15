"""infra/prefect.yaml, read by Prefect's own loader (what `prefect deploy` runs), and consistent with the code: its
entrypoint loads, its parameters are valid for the flow, its job variables are the process work pool's, its pull
step exists, and its first deployment is the one `curaclip serve` serves."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from prefect.cli.deploy._config import _load_deploy_configs_and_actions
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron
from prefect.workers.process import ProcessWorker
from rich.console import Console

from flows.deployments import DEPLOYMENT, scheduled_pipeline

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "infra" / "prefect.yaml"


@pytest.fixture(scope="module")
def loaded():
    console = Console(record=True, width=200)
    deployments, actions = _load_deploy_configs_and_actions(PREFECT_YAML, console=console)
    return deployments, actions, console.export_text()


def test_prefects_loader_reads_every_deployment_without_a_complaint(loaded):
    deployments, actions, printed = loaded
    assert printed == ""  # the loader prints validation errors and skips the file instead of raising
    assert [d["name"] for d in deployments] == [DEPLOYMENT, "rerun-stage"]
    PrefectYamlModel.model_validate(yaml.safe_load(PREFECT_YAML.read_text()))
    (step,) = actions["pull"]
    (name,) = step
    module, function = name.rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), function))


def test_each_deployment_runs_the_scheduled_flow_with_valid_parameters(loaded):
    deployments, _, _ = loaded
    for deployment in deployments:
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        assert flow.name == scheduled_pipeline.name
        flow.validate_parameters(deployment["parameters"])  # raises on an unknown or mistyped parameter
    with pytest.raises(Exception, match="nope"):
        scheduled_pipeline.validate_parameters({"nope": 1})


def test_the_work_pool_is_a_process_pool_and_the_schedule_a_valid_cron(loaded):
    deployments, _, _ = loaded
    variables = set(ProcessWorker.get_default_base_job_template()["variables"]["properties"])
    for deployment in deployments:
        assert deployment["work_pool"]["name"] == "curaclip-pool"
        assert set(deployment["work_pool"]["job_variables"]) <= variables
    (schedule,) = deployments[0]["schedules"]
    Cron(schedule["cron"], timezone=schedule["timezone"])
    assert "--type process" in PREFECT_YAML.read_text()  # the pool's type, in the commands that create it
