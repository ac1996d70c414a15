"""Entry points for Prefect deployments (``infra/prefect.yaml``): plain parameters in, the pipeline out.

A deployment cannot pass a :class:`~flows.config.RunConfig` object, so this flow takes a config path
and overrides as strings and calls the ``pipeline`` flow as a subflow.
"""

from __future__ import annotations

from prefect import flow

from flows.config import load_config
from flows.pipeline import pipeline


@flow(name="curaclip-scheduled")
def scheduled_pipeline(
    config_path: str | None = None,
    workdir: str = "runs/default",
    overrides: list[str] | None = None,
    only: str | None = None,
    force: list[str] | None = None,
) -> dict:
    cfg = load_config(config_path, overrides or [])
    return pipeline(cfg, workdir=workdir, only=only, force=tuple(force or ()))
