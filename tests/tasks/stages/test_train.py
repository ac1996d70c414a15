"""The train stage on the in-process executor."""

from pathlib import Path

from tasks.store import layout as L
from tests.tasks.stages.artifact_checks import manifest


def test_train_on_the_local_executor(local_run):
    _, refs = local_run
    summary = manifest(refs["train"])["train"]
    assert summary["ranks"] == 1 and (Path(refs["train"].path) / summary["checkpoint"]).is_file()
    assert (Path(refs["train"].path) / L.TRAIN_METRICS).is_file()


def test_mlcd_takes_its_class_count_from_the_cluster_artifact(local_run, tmp_path):
    import dataclasses

    import numpy as np
    import pytest
    import torch

    from tasks.stages import train
    from tasks.stages.common import RunContext

    cfg, refs = local_run
    ctx = RunContext(workdir=str(tmp_path), run_id="mlcd", executor="local", resources=cfg.resources)
    mlcd_cfg = dataclasses.replace(cfg.train, objectives={"clip": 1.0, "mlcd": 0.5})
    with pytest.raises(ValueError, match="centers.npy"):
        train.train.fn(ctx, mlcd_cfg, refs["shard"], refs["curate"])
    ref = train.train.fn(ctx, mlcd_cfg, refs["shard"], refs["curate"], refs["cluster"])
    centers = np.load(Path(refs["cluster"].path) / L.CENTERS)
    state = torch.load(next((Path(ref.path) / "checkpoints").glob("*.pt")), weights_only=False)
    assert state["objectives"]["terms.mlcd.weight"].shape[0] == centers.shape[0] == cfg.cluster.num_centers
    assert manifest(ref)["inputs"]["cluster"] == refs["cluster"].key  # new centers retrain
