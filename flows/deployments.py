"""Entry points for Prefect deployments: ``curaclip serve`` (this process serves the schedule) and
``infra/prefect.yaml`` (``prefect deploy`` onto a work pool). Both deploy the flow below with the same parameters.

A deployment cannot pass a :class:`~flows.config.RunConfig` object, so this flow takes a config path, a preset and
overrides as strings and calls the ``pipeline`` flow as a subflow (whose run carries the report and stage-table
artifacts).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.config import load_config
from flows.pipeline import pipeline
from flows.presets import preset_overrides

DEPLOYMENT = "curaclip"
"""The deployment name `curaclip serve` uses by default: the deployment is `curaclip-scheduled/curaclip`."""


@flow(name="curaclip-scheduled", persist_result=False)
def scheduled_pipeline(
    config_path: str | None = None,
    workdir: str = "runs/default",
    preset: str = "default",
    overrides: list[str] | None = None,
    only: str | None = None,
    force: list[str] | None = None,
) -> dict:
    """One pipeline run from plain parameters (the flow of every curaclip deployment)."""
    cfg = load_config(config_path, [*preset_overrides(preset), *(overrides or [])])
    return pipeline(cfg, workdir=workdir, only=only, force=tuple(force or ()))


def deployment_parameters(config_path: str | None, workdir: str, preset: str, overrides: list[str]) -> dict[str, Any]:
    """The parameters a deployment stores; the config is loaded once here so a bad one fails before serving."""
    load_config(config_path, [*preset_overrides(preset), *overrides])
    return {"config_path": config_path, "workdir": workdir, "preset": preset, "overrides": list(overrides)}


def serve(cron: str, parameters: dict[str, Any], name: str = DEPLOYMENT, timezone: str = "UTC") -> None:
    """Serve the pipeline as the deployment ``curaclip-scheduled/<name>`` on ``cron`` until interrupted: this
    process polls the Prefect server (``PREFECT_API_URL``) and runs each scheduled or triggered run."""
    from prefect.schedules import Cron

    scheduled_pipeline.serve(name=name, schedules=[Cron(cron, timezone=timezone)], parameters=parameters,
                             description=f"curaclip end to end on {parameters['workdir']} ({cron} {timezone})",
                             pause_on_shutdown=False)
