"""Tests of curation/sharding.py: WebDataset shards, Parquet sidecars, sizes.json, open_clip reading."""

import io
import json
import tarfile
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from curation.sharding import (
    ShardConfig,
    dictionary_columns,
    image_extension,
    shard_key,
    write_shard,
    write_shards,
    write_sizes,
    write_tar,
)


def _encode(color: tuple[int, int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format=fmt)
    return buf.getvalue()


def _table(n: int = 4, fmt: str = "PNG") -> pa.Table:
    colors = [(10 * i, 200 - 10 * i, 30) for i in range(n)]
    return pa.table({
        "uid": [f"u{i}" for i in range(n)],
        "text": [f"a red circle number {i} ✓" for i in range(n)],
        "image": pa.array([_encode(c, fmt) for c in colors], pa.binary()),
        "width": pa.array([8] * n, pa.int32()),
        "height": pa.array([6] * n, pa.int32()),
        "rewrites": [[f"circle {i}", f"round thing {i}"] for i in range(n)],
        "keep_prob": pa.array([0.5] * n, pa.float32()),
        "cluster_labels": pa.array([[i, i + 1, i + 2] for i in range(n)], pa.list_(pa.int32())),
        "cluster_scores": pa.array([[0.9, 0.5, 0.25]] * n, pa.list_(pa.float32())),
        "image_emb": pa.array([[0.1, 0.2]] * n, pa.list_(pa.float32())),
    })


def test_shard_key_is_img2dataset_style():
    assert shard_key(3, 17) == "000030017"
    assert shard_key(12345, 9999) == "123459999"


def test_image_extension_by_magic_number():
    assert image_extension(_encode((1, 2, 3), "PNG")) == "png"
    assert image_extension(_encode((1, 2, 3), "JPEG")) == "jpg"
    assert image_extension(_encode((1, 2, 3), "WEBP")) == "webp"
    with pytest.raises(ValueError, match="not JPEG, PNG or WebP"):
        image_extension(b"GIF89a......")


def test_shard_round_trips_through_webdataset(tmp_path):
    table = _table()
    info = write_shard(table, str(tmp_path), 0)
    tar = tmp_path / "00000.tar"
    assert info == {"shard": "00000.tar", "count": 4, "bytes": tar.stat().st_size}
    with tarfile.open(tar) as tf:
        names = tf.getnames()
        assert all(m.mtime == 0 and m.mode == 0o644 and m.uid == 0 for m in tf.getmembers())
    assert names[:3] == ["000000000.png", "000000000.txt", "000000000.json"]
    samples = list(wds.WebDataset(str(tar), shardshuffle=False).decode("pil").to_tuple("png", "txt", "json"))
    assert len(samples) == 4
    for i, (img, txt, meta) in enumerate(samples):
        assert img.size == (8, 6)
        assert img.getpixel((0, 0)) == (10 * i, 200 - 10 * i, 30)
        assert txt == table["text"][i].as_py()
        assert meta["uid"] == f"u{i}" and meta["key"] == shard_key(0, i) and meta["shard"] == "00000.tar"
        assert meta["rewrites"] == [f"circle {i}", f"round thing {i}"]
        assert meta["cluster_labels"] == [i, i + 1, i + 2]
        assert meta["cluster_scores"] == pytest.approx([0.9, 0.5, 0.25])
        assert meta["keep_prob"] == 0.5 and meta["width"] == 8
        assert "image" not in meta and "image_emb" not in meta


def test_raw_image_bytes_are_stored_as_is(tmp_path):
    table = _table(2)
    write_shard(table, str(tmp_path), 4)
    with tarfile.open(tmp_path / "00004.tar") as tf:
        stored = tf.extractfile("000040001.png").read()
    assert stored == table["image"][1].as_py()


def test_sidecar_has_shard_and_key_columns(tmp_path):
    table = _table(3)
    write_shard(table, str(tmp_path), 7)
    side = pq.read_table(tmp_path / "00007.parquet")
    assert "image" not in side.column_names
    assert side["shard"].to_pylist() == ["00007.tar"] * 3
    assert side["key"].to_pylist() == ["000070000", "000070001", "000070002"]
    assert side["uid"].to_pylist() == table["uid"].to_pylist()
    assert side["image_emb"].to_pylist() == table["image_emb"].to_pylist()  # embeddings kept here
    with tarfile.open(tmp_path / "00007.tar") as tf:
        tar_keys = sorted({name.split(".")[0] for name in tf.getnames()})
    assert tar_keys == side["key"].to_pylist()


def test_rerun_writes_byte_identical_files(tmp_path):
    table = _table()
    write_shard(table, str(tmp_path / "a"), 2)
    write_shard(table, str(tmp_path / "b"), 2)
    for name in ("00002.tar", "00002.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_jpeg_input_gets_jpg_member(tmp_path):
    write_shard(_table(2, fmt="JPEG"), str(tmp_path), 0)
    with tarfile.open(tmp_path / "00000.tar") as tf:
        assert [n for n in tf.getnames() if not n.endswith((".txt", ".json"))] == ["000000000.jpg",
                                                                                   "000000001.jpg"]


def test_write_to_fsspec_url():
    import fsspec

    info = write_shard(_table(2), "memory://shards-test", 1)
    fs = fsspec.filesystem("memory")
    assert fs.exists("/shards-test/00001.tar") and fs.exists("/shards-test/00001.parquet")
    assert info["bytes"] == fs.size("/shards-test/00001.tar")
    write_sizes("memory://shards-test", {"00001.tar": 2})
    assert json.loads(fs.cat("/shards-test/sizes.json")) == {"00001.tar": 2}


def test_write_shards_splits_and_writes_sizes(tmp_path):
    results = write_shards(_table(5), str(tmp_path), ShardConfig(samples_per_shard=2, workers=2))
    assert [r["count"] for r in results] == [2, 2, 1]
    sizes = json.loads((tmp_path / "sizes.json").read_text())
    assert sizes == {"00000.tar": 2, "00001.tar": 2, "00002.tar": 1}
    keys = pq.read_table(tmp_path / "00002.parquet")["key"].to_pylist()
    assert keys == ["000020000"]


def test_open_clip_train_reads_our_shards(tmp_path):
    """open_clip_train's own get_wds_dataset (train mode, sizes.json for the length) reads our layout."""
    data = pytest.importorskip("open_clip_train.data")
    import torch

    write_shards(_table(6), str(tmp_path), ShardConfig(samples_per_shard=3, workers=1))
    args = SimpleNamespace(
        train_data=str(tmp_path / "{00000..00001}.tar"), val_data=None, dataset_resampled=False,
        train_num_samples=None, val_num_samples=None, train_data_upsampling_factors=None,
        seed=0, batch_size=2, workers=0, world_size=1,
    )
    preprocess = lambda img: torch.from_numpy(np.asarray(img, dtype=np.float32))  # noqa: E731
    tokenizer = lambda text: torch.tensor([[len(text)]])  # noqa: E731  (called per sample, [0] taken)
    info = data.get_wds_dataset(args, preprocess, is_train=True, tokenizer=tokenizer)
    assert info.dataloader.num_samples == 6  # from our sizes.json
    batches = list(info.dataloader)
    assert sum(len(images) for images, _ in batches) == 6
    images, texts = batches[0]
    assert images.shape == (2, 6, 8, 3)  # decoded RGB pixels (H, W, C)
    assert texts.shape == (2, 1)
    lengths = sorted(int(t) for _, ts in batches for t in ts)
    assert lengths == sorted(len(f"a red circle number {i} ✓") for i in range(6))


def _tarfile_bytes(samples):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, payload in (m for members in samples for m in members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(payload), 0, 0o644, 0, 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_write_tar_is_byte_identical_to_tarfile():
    if tarfile.TarInfo("x").tobuf(tarfile.GNU_FORMAT)[329:345] != bytes(16):
        pytest.skip("this Python's tarfile writes device numbers for regular files (before CPython 3.11.4)")
    rng = np.random.default_rng(0)
    names = ["000000000.png", "000000000.txt", "a" * 100, "b" * 101, "dir/" + "c" * 150, "é✓.json", ""]
    samples = [[(name, rng.bytes(size)) for name, size in zip(names, sizes, strict=False)]
               for sizes in ([0, 1, 511, 512, 513, 1024, 3000], [7, 0, 10240, 5, 9, 1, 2])]
    samples.append([])
    buf = io.BytesIO()
    size = write_tar(buf, samples)
    assert buf.getvalue() == _tarfile_bytes(samples)
    assert size == len(buf.getvalue()) and size % tarfile.RECORDSIZE == 0
    assert write_tar(io.BytesIO(), []) == tarfile.RECORDSIZE  # an empty archive, as tarfile writes it


def test_sidecar_dictionary_encodes_all_but_float_columns(tmp_path):
    write_shard(_table(), str(tmp_path), 0)
    meta = pq.ParquetFile(tmp_path / "00000.parquet").metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    for float_leaf in ("image_emb.list.element", "cluster_scores.list.element", "keep_prob"):
        assert "RLE_DICTIONARY" not in encodings[float_leaf]
    for leaf in ("uid", "text", "rewrites.list.element", "cluster_labels.list.element", "shard", "key"):
        assert "RLE_DICTIONARY" in encodings[leaf]
    nested = pa.schema([("m", pa.map_(pa.string(), pa.float32())), ("s", pa.struct([("x", pa.int8()),
                                                                                       ("y", pa.float64())]))])
    assert dictionary_columns(nested) == ["m.key_value.key", "s.x"]
