"""Data-parallel training on Ray Train: one `training.loop.train` per worker, DDP over torch.distributed.

Ray Train's `TorchTrainer` starts `ranks` workers, joins them in a process group (gloo on CPUs, NCCL with
one GPU per rank) and runs `training.loop.train` in each; the loop sees the group, wraps the model in DDP
and reads its rank's part of the data. Every checkpoint the loop writes is also reported to Ray Train
(`ray.train.report` is a barrier, so the loop calls its checkpoint hook on every rank: the path on rank 0,
None elsewhere). When a worker fails, Ray Train restarts the whole group (up to `max_failures` times) and
each worker resumes from the newest checkpoint: the run folder's own (`checkpoints/latest.json`), or Ray
Train's copy when that one is newer (a run folder that lost its checkpoints). A single rank skips Ray
Train: it runs as one Ray task that Ray retries, resuming from the run folder the same way.

Storage: Ray Train keeps its run state and its copy of the newest reported checkpoint in
`<out_dir>/ray_train/`. On a cluster, `out_dir` must be on storage every node sees (NFS, a mounted
bucket), as Ray Train requires of its storage path, and all ranks read the run folder to resume. With an
object-store workdir (tasks.store.workdir) that storage is the store itself: Ray Train's storage path is the
store's URL (through an fsspec handler), and each rank works in its node's mirror, pulling the shards and the
run folder first and pushing each checkpoint as it is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import ray.train
import torch.distributed as torch_dist
from ray.train import Checkpoint, CheckpointConfig, CheckpointUploadMode, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from tasks.executors.ray_cluster import cluster_cpus, ensure_ray, node_cpus, worker_env
from tasks.faults import checkpoint_pauses
from tasks.store import workdir as W
from tasks.store.layout import RAY_TRAIN
from training.checkpoints import LATEST, checkpoint_step, load_checkpoint, write_checkpoint
from training.config import TrainConfig
from training.jobs import TrainJob, print_progress

PROGRESS = print_progress("train")
"""The default metrics callback: one printed line per metrics line."""

MARKER = "checkpoint.json"
"""Inside a reported checkpoint: which file it holds and its step (checkpoints/latest.json's content)."""


@dataclasses.dataclass(frozen=True)
class Workers:
    """How many Ray Train workers, and what each reserves."""

    ranks: int
    cpus: float
    gpus: float


def plan_workers(cfg: TrainConfig, cpus_per_rank: float | None = None) -> Workers:
    """train.distribution.ranks workers with gpus_per_rank GPUs each. CPUs, unless given: a CPU rank takes an
    equal share of the cluster's (its torch threads), a GPU rank its dataloader processes plus one."""
    dist = cfg.distribution
    if dist.ranks < 1 or dist.gpus_per_rank < 0:
        raise ValueError(f"need at least one rank and no negative GPUs, got ranks={dist.ranks} "
                         f"gpus_per_rank={dist.gpus_per_rank}")
    if cpus_per_rank is None:  # a rank runs on one node: never more than the largest node holds
        cpus_per_rank = float(cfg.data.workers + 1) if dist.gpus_per_rank > 0 \
            else float(max(1, min(cluster_cpus() // dist.ranks, int(max(node_cpus(), default=1)))))
    return Workers(dist.ranks, cpus_per_rank, dist.gpus_per_rank)


def report_checkpoint(path: str | None) -> None:
    """The loop's checkpoint hook, on every rank (ray.train.report is a barrier): rank 0 passes the file it
    wrote and reports it with its marker, from a staging folder beside it holding a hard link (no copy; the
    link survives the loop replacing or pruning the file).

    The upload runs in Ray Train's background thread (ASYNC), which deletes the staging folder after it:
    training does not wait for the controller to take each report (it polls every 2 s)."""
    if path is None:
        ray.train.report({}, checkpoint=None, checkpoint_upload_mode=CheckpointUploadMode.ASYNC)
        return
    marker = json.loads((Path(path).parent / LATEST).read_text())
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=Path(path).parent))
    try:
        os.link(path, staging / Path(path).name)
    except OSError:  # a file system without hard links
        shutil.copy2(path, staging / Path(path).name)
    (staging / MARKER).write_text(json.dumps(marker))
    ray.train.report({"step": marker["step"]}, checkpoint=Checkpoint.from_directory(staging),
                     checkpoint_dir_name=f"checkpoint_step_{marker['step']:08d}",
                     checkpoint_upload_mode=CheckpointUploadMode.ASYNC)


def restore_reported(folder: str | Path, out_dir: str | Path) -> bool:
    """Copy a reported checkpoint (a folder from `report_checkpoint`) into the run folder when it is newer
    than the run folder's own; True when it did."""
    marker = json.loads((Path(folder) / MARKER).read_text())
    if checkpoint_step(out_dir) >= marker["step"]:
        return False
    write_checkpoint(out_dir, marker["path"], load_checkpoint(Path(folder) / marker["path"]))
    return True


def restore_before_training(out_dir: str) -> None:
    """Rank 0 restores Ray Train's checkpoint when the run folder lags it; the others wait for it."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None and ray.train.get_context().get_world_rank() == 0:
        with checkpoint.as_directory() as folder:
            restore_reported(folder, out_dir)
    if torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1:
        torch_dist.barrier()


def push_checkpoint(path: str | None) -> None:
    """Upload a checkpoint and its marker as soon as they are written (a no-op for a local workdir), so a rank
    killed later resumes from it on any node."""
    if path is not None:
        W.push(path, Path(path).parent / LATEST)


def this_node() -> str:
    return ray.get_runtime_context().get_node_id()


def in_node_mirror(workdir: W.WorkdirSpec | None, run: Callable[..., dict[str, Any]], *paths: Any) -> dict[str, Any]:
    """``run(*paths)`` with the paths' files in this node's mirror of an object-store workdir."""
    return W.in_mirror(workdir, this_node() if workdir is not None else None, run, *paths)


def train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """One Ray Train worker: Ray Train's checkpoint restored if the run folder lags it, then training.jobs.TrainJob."""
    def run(out_dir: str, data: str | pa.Table) -> dict[str, Any]:
        restore_before_training(out_dir)
        job = TrainJob(config["cfg"], data, out_dir, config["threads"])

        def on_checkpoint(path: str | None) -> None:
            push_checkpoint(path)
            report_checkpoint(path)
        return job.run(config["log"], checkpoint_pauses(on_checkpoint))

    summary = in_node_mirror(config.get("workdir"), run, config["out_dir"], config["data"])
    return {**summary, "ranks": ray.train.get_context().get_world_size(), "workers": [this_node()]}


def single_rank_job(cfg: TrainConfig, data: str | pa.Table, out_dir: str, threads: int,
                    log: Callable[[dict], None] | None, workdir: W.WorkdirSpec | None = None) -> dict[str, Any]:
    """One rank as a plain Ray task (retried by Ray on failure), resuming from the run folder."""
    summary = in_node_mirror(workdir, lambda job: job.run(log, checkpoint_pauses(push_checkpoint)),
                             TrainJob(cfg, data, out_dir, threads))
    return {**summary, "ranks": 1, "workers": [this_node()]}


def storage(out_dir: str, workdir: W.WorkdirSpec | None) -> dict[str, Any]:
    """Ray Train's storage for a run folder: ``<out_dir>/ray_train`` on shared disk, or in the object store."""
    path = Path(out_dir) / RAY_TRAIN
    if workdir is None:
        return {"storage_path": str(path)}
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    mirror = W.open_mirror(workdir.url, workdir.local)
    return {"storage_path": mirror.remote(path), "storage_filesystem": PyFileSystem(FSSpecHandler(mirror.fs))}


def fit_ranks(cfg: TrainConfig, data: str | pa.Table, out_dir: str, workers: Workers, max_failures: int,
              log: Callable[[dict], None] | None, workdir: W.WorkdirSpec | None = None) -> dict[str, Any]:
    """Ray Train TorchTrainer over `workers.ranks` DDP workers; rank 0's summary."""
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"cfg": cfg, "data": data, "out_dir": out_dir, "log": log, "threads": rank_threads(workers),
                           "workdir": workdir},
        torch_config=TorchConfig(backend="nccl" if workers.gpus >= 1 else "gloo"),  # NCCL: one GPU per rank
        scaling_config=ScalingConfig(num_workers=workers.ranks, use_gpu=workers.gpus > 0,
                                     resources_per_worker={"CPU": workers.cpus, "GPU": workers.gpus}),
        run_config=RunConfig(
            name="train", **storage(out_dir, workdir),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            worker_runtime_env={"env_vars": worker_env()},
        ),
    )
    return trainer.fit().return_value


def rank_threads(workers: Workers) -> int:
    """torch threads of one rank: its whole CPUs."""
    return max(1, math.floor(workers.cpus))


def train_distributed(cfg: TrainConfig, data: str | pa.Table, out_dir: str, max_failures: int = 2,
                      cpus_per_rank: float | None = None,
                      log: Callable[[dict], None] | None = PROGRESS,
                      workdir: W.WorkdirSpec | None = None) -> dict[str, Any]:
    """Train `cfg` on a shard folder (the shard stage's `shards/`, with sizes.json) or a table into out_dir;
    returns training.jobs.TrainJob.run's summary plus "ranks" and "resumed_from_step" (where the last attempt began).

    train.distribution.ranks / gpus_per_rank say how many ranks and GPUs (plan_workers: CPUs). Several ranks
    train with Ray Train DDP, its state in `<out_dir>/ray_train/`; one rank runs as a plain Ray task, because Ray
    Train's controller, worker actor and process group add ~25-45 s of start-up on two loaded cores and have
    nothing to synchronise. Either way a failure restarts training up to `max_failures` times (-1: without
    limit), resuming from the last checkpoint. `log` runs on rank 0 for each metrics line. Joins or starts
    Ray (tasks.executors.ray_cluster.ensure_ray). A table travels through Ray's object store: meant for tests.
    ``workdir``: an object-store workdir whose mirror ``data`` and ``out_dir`` lie in (see the module's notes).
    The summary's ``workers``: the Ray node(s) that trained (rank 0's for several ranks)."""
    ensure_ray()
    workers = plan_workers(cfg, cpus_per_rank)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if workers.ranks > 1:
        return fit_ranks(cfg, data, str(out), workers, max_failures, log, workdir)
    job = ray.remote(num_cpus=workers.cpus, num_gpus=workers.gpus, max_retries=max_failures, retry_exceptions=True,
                     runtime_env={"env_vars": worker_env()})(single_rank_job)
    return ray.get(job.remote(cfg, data, str(out), rank_threads(workers), log, workdir))
