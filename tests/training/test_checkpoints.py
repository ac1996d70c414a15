import json

import torch

from training.checkpoints import latest_checkpoint, load_checkpoint, prune_epoch_checkpoints, write_checkpoint


def state(step: int, epoch: int) -> dict:
    return {"step": step, "epoch": epoch, "state_dict": {"w": torch.full((2,), float(step))}}


def test_latest_marker_names_the_newest_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    write_checkpoint(tmp_path, "epoch_1.pt", state(10, 1))
    path = write_checkpoint(tmp_path, "latest.pt", state(15, 1))
    assert latest_checkpoint(tmp_path) == path
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text()) == {"path": "latest.pt", "step": 15,
                                                                                  "epoch": 1}
    loaded = load_checkpoint(path)  # weights_only=True
    assert loaded["step"] == 15 and torch.equal(loaded["state_dict"]["w"], torch.full((2,), 15.0))
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_pruning_keeps_the_newest_epochs_and_the_resume_point(tmp_path):
    for epoch in (1, 2, 3, 10):
        write_checkpoint(tmp_path, f"epoch_{epoch}.pt", state(epoch * 5, epoch))
    deleted = prune_epoch_checkpoints(tmp_path, keep=2)
    assert sorted(p.rsplit("/", 1)[1] for p in deleted) == ["epoch_1.pt", "epoch_2.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == ["epoch_10.pt", "epoch_3.pt"]
    prune_epoch_checkpoints(tmp_path, keep=0)
    assert [p.name for p in (tmp_path / "checkpoints").glob("*.pt")] == ["epoch_10.pt"]  # named by latest.json
