"""A full disk while the store writes a completion marker or a manifest (issue 15), on a real small filesystem:
the write raises ENOSPC and leaves nothing that reads as whole, and once there is space the same write succeeds."""

import errno
import json

import pytest
import torch

from tasks.stages.common import no_space
from tasks.store.artifacts import MANIFEST, ArtifactStore, Staging
from tests.tmpfs import DISK_FULL, fill, small_tmpfs
from training.checkpoints import save_atomic

BIG = "x" * 200_000
"""A field larger than the space left on the filesystem."""


@pytest.fixture
def disk(tmp_path):
    with small_tmpfs(tmp_path / "disk", "1m") as path:
        yield path


def test_a_marker_cut_short_by_a_full_disk_is_absent(disk, reliability):
    staging = Staging(disk / "stage.partial")
    staging.path.mkdir()
    ballast = fill(disk, leave=16_384)
    with pytest.raises(OSError) as raised:
        staging.mark("write", 0, "d1", {"blob": BIG})
    assert raised.value.errno == errno.ENOSPC
    assert staging.done("write", 0, "d1") is None
    assert [p.name for p in (staging.path / "_done" / "write").iterdir()] == []  # no marker, no temporary file
    ballast.unlink()
    staging.mark("write", 0, "d1", {"blob": BIG})
    assert staging.done("write", 0, "d1") == {"blob": BIG}
    reliability.fault(DISK_FULL, "store: completion marker")


def test_a_marker_that_does_not_parse_counts_as_absent(tmp_path, reliability):
    staging = Staging(tmp_path / "stage.partial")
    staging.mark("write", 0, "d1", {"rows": 3})
    marker = staging.path / "_done" / "write" / "00000.json"
    marker.write_text(marker.read_text()[:10])  # what a writer in place leaves when cut short
    assert staging.done("write", 0, "d1") is None
    reliability.fault("file cut short by its writer", "store: completion marker")


def test_a_manifest_cut_short_by_a_full_disk_publishes_nothing(disk, reliability):
    store = ArtifactStore(disk / "work")
    ballast = None
    with pytest.raises(OSError) as raised:
        with store.writing("shard", "k1", {"stage": "shard", "blob": BIG}) as area:
            (area.path / "data.bin").write_bytes(b"1" * 1000)
            ballast = fill(disk, leave=16_384)
    assert raised.value.errno == errno.ENOSPC
    assert not store.is_complete("shard", "k1") and not store.path("shard", "k1").exists()
    assert sorted(p.name for p in store.staging("shard", "k1").iterdir()) == ["data.bin"]  # no manifest, whole or not
    ballast.unlink()
    with store.writing("shard", "k1", {"stage": "shard", "blob": BIG}) as area:
        assert (area.path / "data.bin").exists()  # the rerun finds the staged files
    assert store.is_complete("shard", "k1")
    assert json.loads((store.path("shard", "k1") / MANIFEST).read_text())["blob"] == BIG
    reliability.fault(DISK_FULL, "store: manifest")


def test_a_checkpoint_cut_short_by_a_full_disk_says_so_and_leaves_no_temporary_file(disk, reliability):
    fill(disk, leave=65_536)
    with pytest.raises(RuntimeError) as raised:  # torch's writer, raised while handling Python's OSError
        save_atomic({"w": torch.zeros(100_000)}, disk / "ckpt" / "epoch_1.pt")
    assert no_space(raised.value) is not None
    assert list((disk / "ckpt").iterdir()) == []
    reliability.fault(DISK_FULL, "train: checkpoint save")
