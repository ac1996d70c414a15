"""Content-addressed artifact store (docs/architecture.md, "Artifacts and caching").

A stage's artifact lives at ``<workdir>/artifacts/<stage>/<key>/`` with a ``manifest.json``. The key
hashes the stage name, its code version, its config and its inputs' keys, so the same inputs and
config find the same folder (a rerun skips) and a change anywhere upstream changes every key below.

Writes go to the key's staging area ``<workdir>/artifacts/<stage>/<key>.partial/`` and are renamed into
place only when the manifest is written, so a crash never leaves a half artifact that looks whole: an
artifact is complete if and only if its ``manifest.json`` exists. The staging area keeps a completion marker
per finished part, so a rerun after a crash redoes only the parts that had not finished.

With a workdir on object storage (``tasks/store/workdir.py``) the same layout lives in the store and the paths
here are the driver's mirror of it: completeness, manifests and markers are read from the store, markers and
manifests written to it, and publishing copies the staging area's objects with the manifest last.

This module is deliberately free of Prefect and Ray: tasks use it, tests use it alone.
"""

from __future__ import annotations

import dataclasses
import fcntl
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

from tasks.store import layout as L
from tasks.store.workdir import Mirror, remove_local

MANIFEST = L.MANIFEST
PARTIAL = ".partial"
"""Suffix of a key's staging area, ``artifacts/<stage>/<key>.partial/``: never read as an artifact."""
DONE_DIR = "_done"
"""Inside a staging area: one completion marker per finished part, ``_done/<step>/<index>.json``."""
LOCK = ".lock"
"""Beside a key's folders, ``artifacts/<stage>/.<key>.lock``: held by the one process writing the key (never
deleted, so a lock is never lost while held)."""


class Staging:
    """A stage's staging area: its files as they are written, and a completion marker per finished part.

    A marker is written only after its part's files are, and holds the part's result and a digest of its unit
    (inputs, outputs, settings): a rerun reuses a part only when the same unit finished before."""

    def __init__(self, path: Path, mirror: Mirror | None = None):
        self.path = path
        self.mirror = mirror
        """The workdir's mirror when it is on object storage: markers are written through to the store."""

    def clear(self) -> None:
        if self.mirror is not None:
            self.mirror.remove(self.path)
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)

    def _marker(self, step: str, index: int) -> Path:
        return self.path / DONE_DIR / step / f"{index:05d}.json"

    def done(self, step: str, index: int, digest: str) -> dict[str, Any] | None:
        """The result of part ``index`` of ``step`` when that same unit finished earlier, else None. A marker that
        does not parse (written by hand, or by a version that wrote in place) counts as absent: the part is redone."""
        marker = self._marker(step, index)
        if not marker.is_file():
            return None
        try:
            record = json.loads(marker.read_text())
        except ValueError:
            return None
        return record["result"] if isinstance(record, dict) and record.get("unit") == digest else None

    def mark(self, step: str, index: int, digest: str, result: dict[str, Any]) -> None:
        marker = self._marker(step, index)
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_whole(marker, json.dumps({"unit": digest, "result": result}, sort_keys=True, default=plain))
        if self.mirror is not None:
            self.mirror.push(marker)  # an object is whole or absent too

    def unmark(self, step: str) -> None:
        """Forget the markers of ``step`` (before deleting that step's intermediate files)."""
        self._remove(self.path / DONE_DIR / step)

    def unmark_all(self) -> None:
        self._remove(self.path / DONE_DIR)

    def _remove(self, path: Path) -> None:
        if self.mirror is not None:
            self.mirror.remove(path)
        remove_local(path)


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


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that ``path`` is whole or absent: a temporary name, flushed to the disk, then
    renamed over ``path``. A write cut short (a full disk, a crash) leaves no ``path``, and no temporary file
    either when it raised (its space is given back)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())  # else a power cut after the rename may leave the name with no bytes
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def plain(value: Any) -> Any:
    """JSON's stand-in for a value it has no type for: a path as its string, a set sorted, a numpy scalar or
    array as Python numbers; anything else raises (a result or unit field that cannot be written down)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"no plain form for {type(value).__name__}")


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

    def __init__(self, workdir: str | Path, mirror: Mirror | None = None):
        self.workdir = Path(workdir)
        self.root = self.workdir / "artifacts"
        self.mirror = mirror
        """Set when the workdir is on object storage: ``workdir`` is then the driver's mirror of it."""

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def is_complete(self, stage: str, key: str) -> bool:
        manifest = self.path(stage, key) / MANIFEST
        return self.mirror.exists(manifest) if self.mirror is not None else manifest.is_file()

    def manifest(self, stage: str, key: str) -> dict[str, Any]:
        path = self.path(stage, key) / MANIFEST
        text = self.mirror.read_text(path) if self.mirror is not None else None
        return json.loads(text if text is not None else path.read_text())

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

    def staging(self, stage: str, key: str) -> Path:
        """The key's staging area: where a stage writes until its manifest is published."""
        return self.root / stage / f"{key}{PARTIAL}"

    @contextmanager
    def locked(self, stage: str, key: str) -> Iterator[None]:
        """Hold the key's writer lock, waiting while another process holds it (an advisory ``flock``, released
        when its holder ends however it ends). Check ``is_complete`` again once it is held: the other process may
        have just published the artifact."""
        lock = self.root / stage / f".{key}{LOCK}"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def writing(self, stage: str, key: str, manifest: dict[str, Any], fresh: bool = False) -> Iterator[Staging]:
        """Yield the key's staging area; on success write ``manifest`` there and rename it into place.

        The area survives a failed or killed run, with a completion marker per finished part, so the next run of
        the same key redoes only the unfinished parts; ``fresh`` (a forced recompute) empties it first. The
        caller holds the key's lock (``locked``) and may add entries to ``manifest`` inside the block. An
        existing artifact at the same key (a forced recompute) is replaced only once the new one is complete.
        """
        final = self.path(stage, key)
        area = Staging(self.staging(stage, key), self.mirror)
        area.path.mkdir(parents=True, exist_ok=True)
        if fresh:
            area.clear()
        elif self.mirror is not None:
            self.mirror.pull(area.path / DONE_DIR)  # the markers of an interrupted run, from any machine
        started = time.perf_counter()
        yield area
        manifest.setdefault("seconds", round(time.perf_counter() - started, 3))
        area.unmark_all()
        write_whole(area.path / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str))
        if self.mirror is not None:
            self.mirror.publish(area.path, final, MANIFEST)
        self._replace(area.path, final)

    @staticmethod
    def _replace(tmp: Path, final: Path) -> None:
        if final.exists():
            trash = final.parent / f".old-{final.name}-{os.getpid()}"
            final.rename(trash)
            tmp.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(final)
