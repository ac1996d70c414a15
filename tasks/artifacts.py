"""Content-addressed artifact store (docs/architecture.md, "Artifacts and caching").

A stage's artifact lives at ``<workdir>/artifacts/<stage>/<key>/`` with a ``manifest.json``. The key
hashes the stage name, its code version, its config and its inputs' keys, so the same inputs and
config find the same folder (a rerun skips) and a change anywhere upstream changes every key below.

Writes go to ``<workdir>/artifacts/<stage>/.tmp-<key>-<pid>/`` and are renamed into place only when
the manifest is written, so a crash never leaves a half artifact that looks whole: an artifact is
complete if and only if its ``manifest.json`` exists.

This module is deliberately free of Prefect and Ray: tasks use it, tests use it alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ArtifactRef:
    """The small reference that is all that passes between tasks."""

    stage: str
    key: str
    path: str
    counts: dict[str, int] = field(default_factory=dict)
    status: str = "computed"
    """"computed" when this run wrote it, "cached" when it was found complete."""
    seconds: float = 0.0
    """Wall time of the computation that wrote it (0 for a cache hit's own lookup)."""

    def file(self, name: str) -> Path:
        return Path(self.path) / name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_dict(cfg: Any) -> Any:
    """Plain nested dict (tuples as lists) of a config dataclass, or a list of them, for YAML, hashing
    and manifests."""
    if isinstance(cfg, (tuple, list)):
        return [to_dict(c) for c in cfg]
    if not dataclasses.is_dataclass(cfg):
        return cfg  # a plain JSON value beside the configs (e.g. a flag the stage's key depends on)
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_hash(cfg: Any) -> str:
    """Stable short hash of a config dataclass (or any JSON-able value)."""
    value = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    blob = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stage_key(stage: str, code_version: str, config: Any, input_keys: list[str]) -> str:
    """Hash of (stage, code version, config, input keys): the artifact's address."""
    payload = {"stage": stage, "code_version": code_version, "config": config, "inputs": list(input_keys)}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class ArtifactStore:
    """Artifacts under ``<workdir>/artifacts``."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.root = self.workdir / "artifacts"

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def is_complete(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / MANIFEST).is_file()

    def manifest(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads((self.path(stage, key) / MANIFEST).read_text())

    def ref(self, stage: str, key: str, status: str = "cached") -> ArtifactRef:
        """Reference to a complete artifact, read back from its manifest."""
        manifest = self.manifest(stage, key)
        return ArtifactRef(
            stage=stage,
            key=key,
            path=str(self.path(stage, key)),
            counts=manifest.get("counts", {}),
            status=status,
            seconds=float(manifest.get("seconds", 0.0)),
        )

    @contextmanager
    def writing(self, stage: str, key: str, manifest: dict[str, Any]) -> Iterator[Path]:
        """Yield a temporary folder; on success write ``manifest`` there and rename it into place.

        The caller may add entries to ``manifest`` (counts, reasons) inside the block. An existing
        artifact at the same key (a forced recompute) is replaced only once the new one is complete.
        """
        final = self.path(stage, key)
        tmp = final.parent / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        started = time.perf_counter()
        try:
            yield tmp
            manifest.setdefault("seconds", round(time.perf_counter() - started, 3))
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
            self._replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _replace(tmp: Path, final: Path) -> None:
        if final.exists():
            trash = final.parent / f".old-{final.name}-{os.getpid()}"
            final.rename(trash)
            tmp.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(final)
