"""Fan-out on Ray: the only place that starts or joins a Ray cluster.

Ray workers run library functions from ``curation/``, ``training/`` and ``eval/`` only; those folders
never import Prefect, so no worker ever starts a Prefect server of its own (what happens when
Prefect tasks themselves are shipped to Ray workers without ``PREFECT_API_URL``). As a second guard,
workers get ``PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=false``: were Prefect imported there after all, it
would fail loudly instead of spawning a server.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import ray

import curation
import eval as eval_pkg
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
        # A remote cluster may not have this checkout installed: ship the library packages with the job.
        runtime_env["py_modules"] = [curation, training, eval_pkg]
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
            configure_logging=False,
        )


def cluster_cpus() -> int:
    """CPUs Ray can schedule on (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def ray_map(fn: Callable[..., Any], calls: Sequence[tuple], num_cpus: float = 1, **options: Any) -> list[Any]:
    """Run ``fn(*args)`` for every ``args`` in ``calls`` as Ray tasks; results in call order.

    ``fn`` must be a library function that returns something small (counts, a path): data moves
    through the artifact folders, never through Ray's object store.
    """
    remote = ray.remote(num_cpus=num_cpus, **options)(fn)
    return ray.get([remote.remote(*args) for args in share_repeated(calls)])


def share_repeated(calls: Sequence[tuple]) -> list[tuple]:
    """Calls with each argument that every call passes as the same object (a matcher, an entry list)
    put in the object store once: Ray would otherwise serialise it again for every task. Ray hands
    tasks the value, not the reference, so the library functions see no difference."""
    if len(calls) < 2:
        return list(calls)
    width = min(len(args) for args in calls)
    same = [i for i in range(width) if all(args[i] is calls[0][i] for args in calls)
            and not isinstance(calls[0][i], (str, int, float, bool, type(None)))]
    refs = {i: ray.put(calls[0][i]) for i in same}
    return [tuple(refs.get(i, a) for i, a in enumerate(args)) for args in calls]


def ray_call(fn: Callable[..., Any], *args: Any, num_cpus: float | None = None, **options: Any) -> Any:
    """One Ray task using ``num_cpus`` (default: the whole cluster's CPUs, for single big jobs)."""
    cpus = cluster_cpus() if num_cpus is None else num_cpus
    return ray_map(fn, [args], num_cpus=cpus, **options)[0]
