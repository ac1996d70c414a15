"""Starting or joining the Ray cluster: the only place that does (the Ray executor and Ray Train call it)."""

from __future__ import annotations

import os
from typing import Any

import ray

import curation
import eval as eval_pkg
import tasks
import training
from tasks.store.workdir import CREDENTIAL_ENV

WORKER_ENV = {
    "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false",
    "TOKENIZERS_PARALLELISM": "false",
    # torch's spin-waiting threads made training ~3x slower on a loaded 2-core machine (measured).
    "OMP_WAIT_POLICY": "PASSIVE",
}


def worker_env() -> dict[str, str]:
    """The environment every Ray worker gets: WORKER_ENV plus the driver's object-store endpoint and credentials
    (tasks.store.workdir.CREDENTIAL_ENV), so workers on other machines reach the same workdir."""
    return {**WORKER_ENV, **{name: os.environ[name] for name in CREDENTIAL_ENV if os.environ.get(name)}}


SHIPPED = (curation, training, eval_pkg, tasks)
"""The packages Ray workers import (library code, and the executor's entry points and the store in ``tasks``):
shipped to a remote cluster, which may not have this checkout installed. ``flows`` is driver-only."""
EXCLUDES = ["__pycache__", "*.pyc", ".venv", "runs", ".git", "*.duckdb", "*.parquet", "*.tar", "*.pt"]
"""Never shipped: bytecode, environments, run folders, data and checkpoints (the packages hold none, and a stray
file must not travel to every node)."""


def runtime_env(address: str | None) -> dict[str, Any]:
    """The Ray runtime environment of the run's workers: their env, and on a remote cluster the code."""
    env: dict[str, Any] = {"env_vars": worker_env()}
    if address is not None:
        env["py_modules"] = list(SHIPPED)
        env["excludes"] = list(EXCLUDES)
    return env


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a Ray instance of this process's own;
    idempotent. The local start passes ``address="local"``: a bare ``ray.init()`` joins whatever cluster
    ``ray start`` last recorded on this machine (``<ray temp dir>/ray_current_cluster``), and when that cluster was
    killed it waited minutes on the dead address and failed with a GCS timeout that did not say why."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        ray.init(address=address, runtime_env=runtime_env(address), log_to_driver=True)
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            runtime_env=runtime_env(None),
            log_to_driver=True,
            configure_logging=False,
        )


def node_gpus() -> list[float]:
    """GPUs of each alive node of the Ray cluster (empty or zeros on a cluster without GPUs)."""
    return [float(node["Resources"].get("GPU", 0)) for node in ray.nodes() if node.get("Alive")]


def node_cpus() -> list[float]:
    """CPUs of each alive node of the Ray cluster."""
    return [float(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]


def cluster_cpus() -> int:
    """CPUs Ray can schedule on (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
