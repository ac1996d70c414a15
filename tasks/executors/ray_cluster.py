"""Starting or joining the Ray cluster: the only place that does (the Ray executor and Ray Train call it)."""

from __future__ import annotations

import os
from typing import Any

import ray

import curation
import eval as eval_pkg
import tasks
import training

WORKER_ENV = {
    "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false",
    "TOKENIZERS_PARALLELISM": "false",
    # torch's spin-waiting threads made training ~3x slower on a loaded 2-core machine (measured).
    "OMP_WAIT_POLICY": "PASSIVE",
}


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start Ray locally; idempotent."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env: dict[str, Any] = {"env_vars": dict(WORKER_ENV)}
    if address is not None:
        # A remote cluster may not have this checkout installed: ship the packages its workers import.
        runtime_env["py_modules"] = [curation, training, eval_pkg, tasks]
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
            configure_logging=False,
        )


def node_gpus() -> list[float]:
    """GPUs of each alive node of the Ray cluster (empty or zeros on a cluster without GPUs)."""
    return [float(node["Resources"].get("GPU", 0)) for node in ray.nodes() if node.get("Alive")]


def cluster_cpus() -> int:
    """CPUs Ray can schedule on (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
