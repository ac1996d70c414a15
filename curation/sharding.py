"""WebDataset shards for the `shard` stage, in the layout img2dataset writes and open_clip reads.

Each shard is `{shard:05d}.tar` holding, per sample and under one key
(`{shard:05d}{index:04d}`, img2dataset's naming): `<key>.jpg|png|webp` (the image bytes as
stored, extension from their magic number), `<key>.txt` (the caption) and `<key>.json`
(every other JSON-able column). Beside it, `{shard:05d}.parquet` is the sidecar (every
column but `image`, plus `shard` and `key`), and `sizes.json` maps tar names to sample
counts, which open_clip_train's `get_dataset_size` reads. Tar member metadata is fixed
(mtime 0, mode 0o644, uid/gid 0, empty owner names), so a rerun writes byte-identical tars.
"""

from __future__ import annotations

import datetime
import json
import posixpath
import tarfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class ShardConfig:
    """Configuration of the `shard` stage (WebDataset tars + Parquet sidecars)."""

    samples_per_shard: int = 1000
    """samples per tar (img2dataset's number_sample_per_shard; ~100 MB at web image sizes)."""
    workers: int = 2
    """shards written in parallel by `write_shards` (threads; the task fans out on Ray instead)."""


IMAGE_MAGIC = {
    "jpg": (b"\xff\xd8\xff",),
    "png": (b"\x89PNG\r\n\x1a\n",),
}
"""Leading bytes of each image format open_clip's image_key ("jpg;png;jpeg;webp") accepts."""

EMBEDDING_SUFFIXES = ("_emb", "_embedding")
"""Column-name endings of embeddings: kept in the Parquet sidecar, left out of the tar's .json."""


def shard_key(shard: int, index: int) -> str:
    """img2dataset's sample key: 5-digit shard number then 4-digit index within the shard."""
    return f"{shard:05d}{index:04d}"


def shard_name(shard: int) -> str:
    """The tar's file name, the form open_clip's sizes.json is keyed by."""
    return f"{shard:05d}.tar"


def image_extension(data: bytes) -> str:
    """File extension of encoded image bytes from their magic number ("jpg", "png" or "webp")."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for ext, prefixes in IMAGE_MAGIC.items():
        if data.startswith(prefixes):
            return ext
    raise ValueError(f"image bytes are not JPEG, PNG or WebP (start {data[:12]!r})")


def _json_column(field: pa.Field) -> bool:
    if field.name == "image" or field.name.endswith(EMBEDDING_SUFFIXES):
        return False
    # Raw bytes have no JSON form; everything else Arrow holds converts via to_pylist.
    return not (pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)
                or pa.types.is_fixed_size_binary(field.type))


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)  # Decimal, timedelta: a readable string rather than a failed shard


TAR_BLOCK = tarfile.BLOCKSIZE
"""tar's block: every header and every member's padded payload is a multiple of it (512 bytes)."""
TAR_RECORD = tarfile.RECORDSIZE
"""tar's record (20 blocks): tarfile pads a closed archive to a multiple of it."""
_FIXED_IDS = b"0000644\0" + b"0000000\0" * 2  # mode 0o644, uid 0, gid 0 (octal, NUL-terminated)
_MTIME_ZERO = b"%011o\0" % 0
# typeflag "0" (regular file), empty linkname, GNU magic, empty uname/gname, empty device fields,
# empty prefix, then padding to 512: what tarfile writes after the checksum for such a member.
_HEADER_TAIL = b"0" + bytes(100) + tarfile.GNU_MAGIC + bytes(64) + bytes(16) + bytes(155)
_HEADER_TAIL += bytes(TAR_BLOCK - 156 - len(_HEADER_TAIL))  # the header's last 356 bytes
_TAIL_SUM = 8 * ord(" ") + sum(_HEADER_TAIL)
"""Checksum share of the bytes from the checksum field on (the field itself counts as 8 spaces)."""


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def member_header(name: str, size: int) -> bytes:
    """The header tarfile (GNU format) writes for a regular file with the fixed metadata above.

    Built from a template (only name, size and checksum vary) because tarfile's generic header
    code is most of the time a shard takes; names over 100 bytes and sizes of 8 GiB and more,
    which need GNU extensions, go through tarfile itself.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 100 or size >= 8**11:
        return _tarinfo(name, size).tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    head = raw.ljust(100, b"\0") + _FIXED_IDS + b"%011o\0" % size + _MTIME_ZERO
    return head + b"%06o\0 " % (sum(head) + _TAIL_SUM) + _HEADER_TAIL


def write_tar(f: Any, samples: Iterable[Sequence[tuple[str, bytes]]]) -> int:
    """Write a tar of (name, payload) members, grouped by sample, to the binary file f; returns its size.

    Byte for byte what ``tarfile.open(fileobj=f, mode="w", format=GNU_FORMAT)`` with `member_header`'s
    metadata writes (padded payloads, two zero blocks, zero-filled to a whole record), one write per sample.
    """
    offset = 0
    for members in samples:
        chunks: list[bytes] = []
        for name, payload in members:
            chunks += (member_header(name, len(payload)), payload, bytes(-len(payload) % TAR_BLOCK))
        blob = b"".join(chunks)
        f.write(blob)
        offset += len(blob)
    end = 2 * TAR_BLOCK
    end += -(offset + end) % TAR_RECORD
    f.write(bytes(end))
    return offset + end


def _sample_members(row: dict[str, Any], key: str, image: bytes) -> list[tuple[str, bytes]]:
    meta = json.dumps(row, ensure_ascii=False, sort_keys=True, default=_json_default)
    return [
        (f"{key}.{image_extension(image)}", image),
        (f"{key}.txt", (row.get("text") or "").encode("utf-8")),
        (f"{key}.json", meta.encode("utf-8")),
    ]


def sidecar_table(table: pa.Table, shard: int) -> pa.Table:
    """The shard's Parquet sidecar: every column but `image`, plus `shard` (tar name) and `key`."""
    keep = [name for name in table.column_names if name not in ("image", "shard", "key")]
    side = table.select(keep)
    keys = [shard_key(shard, i) for i in range(table.num_rows)]
    side = side.append_column("shard", pa.array([shard_name(shard)] * table.num_rows, pa.string()))
    return side.append_column("key", pa.array(keys, pa.string()))


def _leaf_paths(name: str, typ: pa.DataType) -> list[tuple[str, pa.DataType]]:
    """Parquet column paths (as pyarrow names them) and Arrow types of the leaves under one field."""
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return _leaf_paths(f"{name}.list.element", typ.value_type)
    if pa.types.is_map(typ):
        return _leaf_paths(f"{name}.key_value.key", typ.key_type) + _leaf_paths(f"{name}.key_value.value",
                                                                                typ.item_type)
    if pa.types.is_struct(typ):
        return [leaf for i in range(typ.num_fields) for leaf in _leaf_paths(f"{name}.{typ.field(i).name}",
                                                                             typ.field(i).type)]
    return [(name, typ)]


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Sidecar leaves to dictionary-encode: all but floating-point ones (embeddings, scores).

    Float values hardly ever repeat, so a dictionary only grows the file, and building one for an
    embedding column was most of a sidecar's write time.
    """
    leaves = [leaf for field in schema for leaf in _leaf_paths(field.name, field.type)]
    return [path for path, typ in leaves if not pa.types.is_floating(typ)]


def write_shard(table: pa.Table, out_dir: str, shard: int) -> dict:
    """Write out_dir/{shard:05d}.tar and its .parquet sidecar; out_dir may be an fsspec URL."""
    if table.num_rows >= 10_000:
        raise ValueError(f"a shard holds at most 9999 samples (4-digit key index), got {table.num_rows}")
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    side = sidecar_table(table, shard)
    json_cols = [f.name for f in side.schema if _json_column(f)]
    rows = side.select(json_cols).to_pylist()
    images = table.column("image").to_pylist()
    tar_path = posixpath.join(root, shard_name(shard))
    with fs.open(tar_path, "wb") as f:
        size = write_tar(f, (_sample_members(row, row["key"], image) for row, image in zip(rows, images, strict=True)))
    with fs.open(posixpath.join(root, f"{shard:05d}.parquet"), "wb") as f:
        pq.write_table(side, f, use_dictionary=dictionary_columns(side.schema))
    return {"shard": shard_name(shard), "count": table.num_rows, "bytes": size}


def write_sizes(out_dir: str, counts: dict[str, int]) -> None:
    """out_dir/sizes.json {"00000.tar": n, ...}: open_clip_train's get_dataset_size reads it."""
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    with fs.open(posixpath.join(root, "sizes.json"), "w") as f:
        json.dump({name: int(counts[name]) for name in sorted(counts)}, f, indent=1)


def split_shards(table: pa.Table, samples_per_shard: int) -> list[pa.Table]:
    """Consecutive slices of at most samples_per_shard rows, shard i holding rows [i*s, (i+1)*s)."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    return [table.slice(start, samples_per_shard) for start in range(0, table.num_rows, samples_per_shard)]


def write_shards(table: pa.Table, out_dir: str, cfg: ShardConfig, first_shard: int = 0) -> list[dict]:
    """Write every shard of table (cfg.workers at a time) and sizes.json; returns write_shard's dicts."""
    parts = split_shards(table, cfg.samples_per_shard)
    numbers = range(first_shard, first_shard + len(parts))
    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        results = list(pool.map(lambda p, s: write_shard(p, out_dir, s), parts, numbers))
    write_sizes(out_dir, {r["shard"]: r["count"] for r in results})
    return results
