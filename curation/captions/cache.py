"""The per-sample answer cache of the caption stages: a rerun asks a model only for what it has not answered.

A request's key hashes everything that decides its answer: the backend and model (``identity``), the sampling
settings, the prompt and the image's bytes. The stage config's other fields are not in it, so a rerun after a
crash, after a change to another stage, or forced with ``--force rewrite`` finds every answer already given.

Answers are stored in batches: one Parquet file of (key, text) per ``batch`` answers, written to a temporary
name and renamed, so a file is whole or absent and a crash loses at most the answers not yet flushed. Batches
rather than a file per sample keep the file count low (and suit object storage, where a listing and a few large
reads beat many small ones). A lookup reads the ``key`` column of every batch of the namespace and the texts
of the keys it wants; a namespace per (stage, backend, model) keeps that to the answers that can match.
Only answers are cached, never failures: a failed request is asked again on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.captions.config import SamplingConfig
from curation.captions.requests import Request

SCHEMA = pa.schema([("key", pa.string()), ("text", pa.string())])


def request_key(identity: dict, sampling: SamplingConfig, request: Request) -> str:
    """The cache key of one request: identity (backend, model, api, ...), sampling, prompt, image digest."""
    image = hashlib.sha256(request.image).hexdigest() if request.image is not None else None
    blob = json.dumps({"identity": identity, "sampling": asdict(sampling), "prompt": request.prompt,
                       "image": image, "max_new_tokens": request.max_new_tokens}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def namespace(stage: str, identity: dict) -> str:
    """The folder of one (stage, backend, model): a short readable name plus a digest of the identity."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    model = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(identity.get("model", "")))[-40:]
    return f"{stage}-{identity.get('backend', 'unknown')}-{model}-{digest}"


class AnswerCache:
    """The answers under ``root`` (one namespace's folder); ``put`` buffers, every ``batch`` answers are flushed."""

    def __init__(self, root: str | Path, batch: int = 256):
        self.root, self.batch = Path(root), max(1, batch)
        self._keys: list[str] = []
        self._texts: list[str] = []

    def files(self) -> list[Path]:
        return sorted(self.root.glob("*.parquet")) if self.root.is_dir() else []

    def lookup(self, keys: Iterable[str]) -> dict[str, str]:
        """The stored text of each of ``keys`` that has one."""
        wanted = pa.array(sorted(set(keys)), pa.string())
        found: dict[str, str] = {}
        if len(wanted) == 0:
            return found
        for path in self.files():
            table = pq.read_table(path, schema=SCHEMA)
            table = table.filter(pc.is_in(table.column("key"), value_set=wanted))
            for key, text in zip(table.column("key").to_pylist(), table.column("text").to_pylist()):
                found.setdefault(key, text)
        return found

    def stored_keys(self) -> set[str]:
        """Every key on disk (the key column only)."""
        return {k for path in self.files() for k in pq.read_table(path, columns=["key"]).column("key").to_pylist()}

    def put(self, key: str, text: str) -> None:
        self._keys.append(key)
        self._texts.append(text)
        if len(self._keys) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Write the buffered answers as one batch file (atomically: a temporary name, then a rename)."""
        if not self._keys:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.parquet"
        tmp = self.root / f".{name}.tmp"
        pq.write_table(pa.table({"key": self._keys, "text": self._texts}, schema=SCHEMA), tmp)
        os.replace(tmp, self.root / name)
        self._keys, self._texts = [], []

    def __len__(self) -> int:
        """Answers stored on disk (with any repeats)."""
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.files())


def open_cache(cache_root: str | Path | None, stage: str, identity: dict, batch: int = 256) -> AnswerCache | None:
    """The cache of one (stage, backend, model) under ``cache_root``; None when the stage keeps none."""
    return AnswerCache(Path(cache_root) / namespace(stage, identity), batch) if cache_root else None


def keys_for(identity: dict, sampling: SamplingConfig, requests: Sequence[Request]) -> list[str]:
    return [request_key(identity, sampling, r) for r in requests]
