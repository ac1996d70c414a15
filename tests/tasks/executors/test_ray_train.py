"""tasks.executors.ray_train: two Ray Train DDP workers on CPU (gloo) follow the 1-worker loss curve at the same global
batch; an injected failure restarts training, which resumes from its last checkpoint and ends on the same
curve; a reported checkpoint restores a run folder that lost its own.

The 2-worker tests rely on the loop's side of the contract: the checkpoint hook runs on every rank (Ray
Train's report is a barrier) and a metrics line's losses are means over the ranks.

Ray starts locally with 2 CPUs. On two loaded cores Ray Train's start-up (controller, worker actors, process
group) costs ~20-40 s per attempt: the default tests take ~1 min, the restart test (slow) another ~1 min."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from tasks.executors.ray_train import MARKER, Workers, plan_workers, restore_reported, train_distributed
from training.checkpoints import checkpoint_step, latest_checkpoint, load_checkpoint, write_checkpoint
from training.config import DataConfig, DistConfig, OptimConfig, ProgressConfig, ScheduleConfig, TrainConfig
from training.jobs import omp_threads

MICRO_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "layers": 1, "width": 64, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
}
COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230), "yellow": (230, 230, 30)}
GLOBAL_BATCH = 8
STEPS = 8  # 2 epochs of 32 rows at the global batch


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """Ray with 2 CPUs. A Ray Train barrier (ray.train.report) that not every rank reaches fails after 60 s
    instead of hanging the suite."""
    import ray

    from tasks.executors.ray_cluster import ensure_ray

    if ray.is_initialized():  # another module's cluster may have other CPU counts
        ray.shutdown()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TRAIN_COLLECTIVE_TIMEOUT_S", "60")  # the driver passes it on to Ray Train's controller
        ensure_ray(num_cpus=2)
        yield
        ray.shutdown()


def square_png(colour: tuple[int, int, int], offset: int) -> bytes:
    pixels = np.full((32, 32, 3), 90, np.uint8)
    pixels[8 + offset:24 + offset, 8 + offset:24 + offset] = colour
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def table() -> pa.Table:
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    return pa.Table.from_pylist([{"uid": f"u{i}", "text": f"a {names[i % 4]} square",
                                  "image": square_png(COLOURS[names[i % 4]], int(rng.integers(-3, 4)))}
                                 for i in range(32)])


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> TrainConfig:
    """Micro model, every step logged, epoch checkpoints only. crop_scale_min=1.0 makes the crop the whole
    32x32 image (RandomResizedCrop accepts only w = h = 32 at area scale 1), so no augmentation randomness
    differs between one process drawing 8 crops and two drawing 4 each."""
    path = tmp_path_factory.mktemp("configs") / "curaclip-ray-micro.json"
    path.write_text(json.dumps(MICRO_CONFIG))
    return TrainConfig(model=str(path), optim=OptimConfig(lr=2e-3), schedule=ScheduleConfig(epochs=2, warmup_steps=2),
                       data=DataConfig(batch_size=GLOBAL_BATCH, context_length=16, workers=0, crop_scale_min=1.0),
                       distribution=DistConfig(device="cpu"), progress=ProgressConfig(log_every=1, checkpoint_every=0))


def halves(cfg: TrainConfig) -> TrainConfig:
    """`cfg` on two ranks of half the batch each: the same global batch."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=GLOBAL_BATCH // 2),
                               distribution=dataclasses.replace(cfg.distribution, ranks=2))


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_workers(cfg, table, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("two")
    half = halves(cfg)
    return train_distributed(half, table, str(out), max_failures=0, cpus_per_rank=1, log=None), out


def test_two_ddp_workers_follow_the_one_worker_curve_at_the_same_global_batch(cfg, table, two_workers, tmp_path):
    one = train_distributed(cfg, table, str(tmp_path), cpus_per_rank=1, log=None)
    two, two_dir = two_workers
    assert one["ranks"] == 1 and two["ranks"] == 2
    assert one["steps"] == two["steps"] == STEPS and one["samples_seen"] == two["samples_seen"] == STEPS * 8
    a, b = metrics(tmp_path), metrics(two_dir)
    assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(1, STEPS + 1))
    # Rank r takes positions r, r+2, ... of the 1-worker batch: the same samples, permuted, and the CLIP loss
    # is invariant to permuting image-text pairs. Only float summation order differs (measured <= 1e-6 rel).
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-5), (x, y)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-3, abs=1e-5), (x, y)
    assert a[-1]["loss"] < a[0]["loss"]
    w1 = torch.load(tmp_path / "final.pt", weights_only=True)["state_dict"]
    w2 = torch.load(two_dir / "final.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(w1[k], w2[k], rtol=1e-3, atol=1e-5) for k in w1)
    reported = sorted(p.name for p in (two_dir / "ray_train" / "train").glob("checkpoint_step_*"))
    assert reported == [f"checkpoint_step_{STEPS:08d}"]  # num_to_keep=1: the epoch-2 checkpoint
    assert not list((two_dir / "checkpoints").glob(".report-*"))  # staging folders removed after upload
    assert two["resumed_from_step"] == 0 and two["num_samples"] == 32


def fail_once(flag: Path, after_step: int):
    """A rank-0 metrics callback that raises the first time it sees a step past `after_step`."""
    def log(line: dict) -> None:
        if line["step"] > after_step and not flag.exists():
            flag.write_text(str(line["step"]))
            raise RuntimeError(f"injected failure at step {line['step']}")
    return log


def assert_resumed_on_the_curve(out: Path, summary: dict, flag: Path, reference: list[dict]) -> None:
    assert int(flag.read_text()) == 5  # the first attempt failed right after step 5
    assert summary["steps"] == STEPS and summary["resumed_from_step"] == 4  # the epoch-1 checkpoint
    lines = metrics(out)
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1))  # step 5 logged twice, kept once
    for x, y in zip(reference, lines):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-5), (x, y)


def test_a_failed_single_rank_task_is_retried_and_resumes(cfg, table, tmp_path):
    flag = tmp_path / "failed_once"
    reference = train_distributed(cfg, table, str(tmp_path / "ref"), cpus_per_rank=1, log=None)
    summary = train_distributed(cfg, table, str(tmp_path / "run"), cpus_per_rank=1, log=fail_once(flag, after_step=4))
    assert reference["resumed_from_step"] == 0
    assert_resumed_on_the_curve(tmp_path / "run", summary, flag, metrics(tmp_path / "ref"))
    with pytest.raises(Exception, match="injected failure"):
        train_distributed(cfg, table, str(tmp_path / "no_retry"), max_failures=0, cpus_per_rank=1,
                          log=fail_once(tmp_path / "flag2", after_step=4))


@pytest.mark.slow
def test_ray_train_restarts_a_failed_worker_group_from_the_reported_checkpoint(cfg, table, two_workers, tmp_path):
    flag = tmp_path / "failed_once"
    half = halves(cfg)
    summary = train_distributed(half, table, str(tmp_path), max_failures=1, cpus_per_rank=1,
                                log=fail_once(flag, after_step=4))
    assert summary["ranks"] == 2
    assert_resumed_on_the_curve(tmp_path, summary, flag, metrics(two_workers[1]))


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_training_on_an_object_store_workdir_writes_its_run_folder_there(cfg, table, two_workers, ranks, tmp_path,
                                                                        monkeypatch):
    """One rank (a Ray task) and two (Ray Train, its storage path in the store) on an S3 workdir (moto's server):
    each rank works in its node's mirror, and the run folder (checkpoints, metrics) lands in the store, on the
    same curve as on local disk."""
    import ray

    from tasks.executors.ray_cluster import ensure_ray
    from tasks.store import workdir as W
    from tests.servers.s3_server import s3_server

    with s3_server("train-workdir"):
        monkeypatch.setenv(W.MIRROR_ENV, str(tmp_path / "mirrors"))
        ray.shutdown()  # a run starts (or joins) Ray with the store's endpoint and credentials in its environment
        ensure_ray(num_cpus=2)
        mirror = W.driver_mirror(f"s3://train-workdir/run{ranks}")
        out = mirror.local / "artifacts" / "train" / "k.partial"
        run_cfg = halves(cfg) if ranks == 2 else cfg
        summary = train_distributed(run_cfg, table, str(out), max_failures=0, cpus_per_rank=1, log=None,
                                    workdir=mirror.spec)
        assert summary["ranks"] == ranks and len(summary["workers"]) == 1
        stored = [n.rsplit("/", 1)[-1] for n in mirror.fs.find(mirror.remote(out))]
        assert "metrics.jsonl" in stored and "latest.json" in stored and Path(summary["checkpoint"]).name in stored
        W.pull(out)
        reference = metrics(two_workers[1]) if ranks == 2 else None
        if reference is not None:
            assert [m["loss"] for m in metrics(out)] == pytest.approx([m["loss"] for m in reference], rel=1e-4)
        assert load_checkpoint(summary["checkpoint"])["step"] == STEPS
    ray.shutdown()
    ensure_ray(num_cpus=2)


def test_a_reported_checkpoint_restores_a_run_folder_only_when_newer(tmp_path):
    state = {"name": "m", "epoch": 1, "step": 4, "state_dict": {"w": torch.arange(3.0)}}
    reported = tmp_path / "reported"
    reported.mkdir()
    torch.save(state, reported / "epoch_1.pt")
    (reported / MARKER).write_text(json.dumps({"path": "epoch_1.pt", "step": 4, "epoch": 1}))
    run = tmp_path / "run"
    assert checkpoint_step(run) == -1
    assert restore_reported(reported, run) and checkpoint_step(run) == 4
    assert torch.equal(load_checkpoint(latest_checkpoint(run))["state_dict"]["w"], torch.arange(3.0))
    write_checkpoint(run, "latest.pt", {**state, "step": 6})
    assert not restore_reported(reported, run) and checkpoint_step(run) == 6


def test_training_threads_are_set_then_restored(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with omp_threads(2):
        assert os.environ["OMP_NUM_THREADS"] == "2"
    assert os.environ["OMP_NUM_THREADS"] == "7"
    monkeypatch.delenv("OMP_NUM_THREADS")
    with omp_threads(3):
        assert os.environ["OMP_NUM_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in os.environ


def test_ranks_and_their_resources_come_from_the_config():
    def ranks(count: int, gpus: float = 0.0) -> TrainConfig:
        return TrainConfig(data=DataConfig(workers=3), distribution=DistConfig(ranks=count, gpus_per_rank=gpus))

    cfg = ranks(2)
    assert plan_workers(cfg, 1.5) == Workers(2, 1.5, 0.0)
    assert plan_workers(cfg) == Workers(2, 1.0, 0.0)  # the 2 cluster CPUs shared by 2 ranks
    assert plan_workers(ranks(1)) == Workers(1, 2.0, 0.0)
    # A GPU rank: its 3 dataloader processes plus the training process.
    assert plan_workers(ranks(4, gpus=1.0)) == Workers(4, 4.0, 1.0)
    with pytest.raises(ValueError, match="at least one rank"):
        plan_workers(ranks(0))
