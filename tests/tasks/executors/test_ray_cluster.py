"""What a remote Ray cluster's workers get: the project's code in the runtime env (closed under its imports, bulk
excluded) and the driver's object-store endpoint and credentials."""

from __future__ import annotations

import ast
from pathlib import Path

from tasks.executors.ray_cluster import EXCLUDES, SHIPPED, WORKER_ENV, runtime_env

ROOT = Path(__file__).resolve().parents[3]
PROJECT = {"flows", "tasks", "curation", "training", "eval"}


def project_imports(package: str) -> set[str]:
    """The project's top-level packages that any module of ``package`` imports (at the top or inside functions)."""
    found: set[str] = set()
    for file in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            found |= {n.split(".")[0] for n in names} & PROJECT
    return found


def test_the_shipped_packages_hold_every_project_module_a_worker_can_import():
    shipped = {m.__name__ for m in SHIPPED}
    assert shipped == {"curation", "training", "eval", "tasks"}
    for package in shipped:
        assert project_imports(package) <= shipped, package  # flows (driver-only) is never needed on a worker


def test_a_remote_cluster_gets_the_code_and_the_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    remote = runtime_env("ray://head:10001")
    assert remote["py_modules"] == list(SHIPPED)
    assert {".venv", "runs", "__pycache__", "*.pt", "*.parquet"} <= set(remote["excludes"]) == set(EXCLUDES)
    assert remote["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert remote["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "secret"
    assert "AWS_SESSION_TOKEN" not in remote["env_vars"]  # only what the driver has is passed on
    assert WORKER_ENV.items() <= remote["env_vars"].items()
    local = runtime_env(None)  # a local Ray runs this checkout: nothing to ship
    assert "py_modules" not in local and local["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"


def test_ray_retries_a_lost_unit_and_prefect_retries_nothing_inside_a_stage():
    """Ray reruns a unit whose worker or node died (tests/flows/test_scale_out.py kills a node mid-unit); Prefect
    retries nothing inside a stage: a stage task's own decorator and the flows retry nothing (the pipeline retries a
    whole stage on a transient failure only, from its config: tests/flows/test_orchestration.py)."""
    from flows.pipeline import pipeline
    from tasks.executors.ray_tasks import RETRIES
    from tasks.stages import captions, cluster, curate, embed, ingest, shard, train
    from tasks.stages import eval as eval_stage
    from tasks.stages import filter as filter_stage

    stage_tasks = [ingest.ingest, filter_stage.filter_, curate.curate, embed.embed, cluster.cluster,
                   captions.rewrite, captions.longcap, shard.shard, train.train, eval_stage.evaluate]
    assert RETRIES >= 1
    assert [t.retries for t in stage_tasks] == [0] * len(stage_tasks)
    assert not pipeline.retries
