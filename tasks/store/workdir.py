"""A run's workdir on any fsspec filesystem (docs/architecture.md, "Workdir on object storage").

``--workdir`` is a local folder or a URL: ``s3://bucket/run``, ``gs://bucket/run``, ``file:///abs/path``.
A local folder (or ``file://``) is used as it is, and on a Ray cluster it must be storage every node mounts at
the same path. A URL's files live in the object store and every process that works on them (the driver, each
Ray worker) keeps a **mirror**: a local folder standing for the workdir, where the code reads and writes
with plain paths, as it does for a local workdir.

Design: the library's units (``curation/``, ``training/``, ``eval/``) stay path-based and know nothing of
object stores; the executor's entry points move their files. Before a unit runs, every path field of it under
the workdir that exists in the store is downloaded into the worker's mirror (a file, or a folder's files);
after it ran, every file under those fields that it wrote or changed is uploaded. Only then does the driver
write the part's completion marker, so a marker never points at a file the store lacks. The driver's own
reads and writes (a stage's global tables, its listings, markers, manifests, the catalog and the report) go
through :func:`pull`, :func:`push`, :func:`listing` and the artifact store. Object stores have no rename:
publishing copies the staging area's objects to the artifact's prefix and writes the manifest last, so the
guarantee stays that an artifact is complete if and only if its ``manifest.json`` exists.

Endpoints and credentials come from the filesystems' standard environment (for S3: ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``; for GCS: ``GOOGLE_APPLICATION_
CREDENTIALS``), read by s3fs/gcsfs in every process; the Ray workers inherit the driver's through the runtime
environment (``worker_env``).

Limits: a unit that deletes a file does not delete it in the store (units only write); a mirror is a cache
that is never pruned (remove ``CURACLIP_MIRROR_DIR`` when no run is going); the writer lock of a key is a
local ``flock`` in the mirror, so one driver at a time may run a given object-store workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

MIRROR_ENV = "CURACLIP_MIRROR_DIR"
"""Where mirrors live (default: ``<tempdir>/curaclip-mirror``): ``<dir>/<owner>/<hash of the URL>/``."""
CREDENTIAL_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                  "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "GOOGLE_APPLICATION_CREDENTIALS",
                  MIRROR_ENV)
"""The environment a worker needs to reach the driver's object store, passed on in the Ray runtime env."""


def is_remote(workdir: str) -> bool:
    """True for a URL of a filesystem other than the local one (``file://`` is local)."""
    protocol = fsspec.core.split_protocol(str(workdir))[0]
    return protocol not in (None, "file", "local")


def local_path(workdir: str) -> str:
    """A local workdir's absolute path (``file://`` stripped)."""
    return str(Path(fsspec.core.strip_protocol(str(workdir)) if str(workdir).startswith("file://")
                    else workdir).resolve())


def mirror_base() -> Path:
    return Path(os.environ.get(MIRROR_ENV) or Path(tempfile.gettempdir()) / "curaclip-mirror").resolve()


@dataclass(frozen=True)
class WorkdirSpec:
    """What travels with every unit: the store's URL and the sender's mirror (the prefix of the unit's paths)."""

    url: str
    local: str


class Mirror:
    """The local stand-in for a workdir URL: local paths under ``local`` are objects under ``url``."""

    def __init__(self, url: str, local: str | Path):
        self.url = url.rstrip("/")
        self.local = Path(local)
        self.root = fsspec.core.url_to_fs(self.url)[1].rstrip("/")

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The store's filesystem, looked up on each use (fsspec caches the instance): it reads its endpoint and
        credentials from the environment when first made."""
        return fsspec.core.url_to_fs(self.url)[0]

    @property
    def spec(self) -> WorkdirSpec:
        return WorkdirSpec(self.url, str(self.local))

    def covers(self, path: str | Path) -> bool:
        return Path(path) == self.local or self.local in Path(path).parents

    def remote(self, path: str | Path) -> str:
        """The object path (without protocol) of a local path under the mirror."""
        rel = Path(path).relative_to(self.local).as_posix()
        return self.root if rel == "." else f"{self.root}/{rel}"

    def url_of(self, path: str | Path) -> str:
        """The full URL of a local path under the mirror (for DuckDB and messages)."""
        return self.fs.unstrip_protocol(self.remote(path))

    def _local_of(self, remote: str) -> Path:
        return self.local / remote[len(self.root):].lstrip("/")

    def exists(self, path: str | Path) -> bool:
        return self.fs.exists(self.remote(path))

    def files(self, path: str | Path) -> dict[str, int]:
        """``{object path: size}`` of the file at ``path``, or of every file under the folder at ``path``."""
        remote = self.remote(path)
        try:
            found = self.fs.find(remote, detail=True, withdirs=False)
        except FileNotFoundError:
            return {}
        return {name: int(info.get("size") or 0) for name, info in found.items() if info.get("type") != "directory"}

    def pull(self, path: str | Path) -> None:
        """Download the file or folder at ``path`` into the mirror (files already there at the same size stay)."""
        for remote, size in self.files(path).items():
            target = self._local_of(remote)
            if target.is_file() and target.stat().st_size == size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.download")  # workers race
            self.fs.get_file(remote, str(tmp))
            os.replace(tmp, target)

    def push(self, path: str | Path, unchanged: dict[str, tuple[int, int]] | None = None) -> None:
        """Upload the file or folder at ``path``; files whose (size, mtime) ``unchanged`` records are skipped."""
        for file in local_files(path):
            if unchanged is not None and unchanged.get(str(file)) == stat_of(file):
                continue
            try:
                self.fs.put_file(str(file), self.remote(file))
            except FileNotFoundError:  # replaced meanwhile by its writer (another rank on this node)
                continue

    def listing(self, folder: str | Path, suffix: str = "") -> list[str]:
        """Local paths of the files directly in ``folder`` (in the store) ending with ``suffix``, sorted."""
        try:
            names = self.fs.ls(self.remote(folder), detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(self._local_of(n)) for n in names
                      if n.endswith(suffix) and not Path(n).name.startswith("."))

    def remove(self, path: str | Path) -> None:
        """Delete ``path`` in the store and in the mirror."""
        remote = self.remote(path)
        if self.fs.exists(remote):
            self.fs.rm(remote, recursive=True)
        remove_local(Path(path))

    def read_text(self, path: str | Path) -> str | None:
        try:
            return self.fs.cat_file(self.remote(path)).decode()
        except FileNotFoundError:
            return None

    def write_text(self, path: str | Path, text: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        self.fs.pipe_file(self.remote(path), text.encode())

    def publish(self, staging: Path, final: Path, manifest: str) -> None:
        """Copy the staging area's objects to the artifact's prefix, replacing any there, then its manifest
        (last: only then is the artifact complete), then delete the staging area's objects."""
        source, target = self.remote(staging), self.remote(final)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        for name in self.files(staging):
            rel = name[len(source):].lstrip("/")
            if rel != manifest:
                self.fs.copy(name, f"{target}/{rel}")
        self.fs.put_file(str(staging / manifest), f"{target}/{manifest}")
        self.fs.rm(source, recursive=True)


def stat_of(file: Path) -> tuple[int, int]:
    """(size, mtime) of a file; (-1, -1) for one gone since it was listed."""
    try:
        info = file.stat()
    except FileNotFoundError:
        return -1, -1
    return info.st_size, info.st_mtime_ns


TEMPORARY = (".download", ".tmp")
"""Suffixes of files still being written (a download, a checkpoint before its rename): never uploaded."""


def local_files(path: str | Path) -> list[Path]:
    """The file at ``path``, or the files under the folder at ``path``, leaving out those still being written."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(TEMPORARY))
    return []


def remove_local(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# --- the mirrors of this process ---------------------------------------------------------------

_MIRRORS: dict[str, Mirror] = {}
"""Every mirror this process opened, by local root: the driver's helpers find a path's mirror here."""


def open_mirror(url: str, local: str | Path) -> Mirror:
    mirror = _MIRRORS.get(str(local))
    if mirror is None or mirror.url != url.rstrip("/"):
        mirror = _MIRRORS[str(local)] = Mirror(url, local)
        mirror.local.mkdir(parents=True, exist_ok=True)
    return mirror


def driver_mirror(url: str) -> Mirror:
    """The driver's mirror of ``url``: ``<mirror base>/driver/<hash>``."""
    return open_mirror(url, mirror_base() / "driver" / url_hash(url))


def node_mirror(spec: WorkdirSpec, owner: str) -> Mirror:
    """A worker's mirror of ``spec.url`` on its node (``owner``: the Ray node id)."""
    return open_mirror(spec.url, mirror_base() / owner[:16] / url_hash(spec.url))


def url_hash(url: str) -> str:
    return hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:12]


def mirror_of(path: str | Path) -> Mirror | None:
    """The open mirror ``path`` lies in, if any (None for a local workdir's path)."""
    for mirror in _MIRRORS.values():
        if mirror.covers(path):
            return mirror
    return None


def pull(*paths: str | Path) -> None:
    """Make the store's files at ``paths`` present locally (a no-op for a local workdir)."""
    for path in paths:
        if (mirror := mirror_of(path)) is not None:
            mirror.pull(path)


def push(*paths: str | Path) -> None:
    """Upload the files at ``paths`` (written by this process) to the store (a no-op for a local workdir)."""
    for path in paths:
        if (mirror := mirror_of(path)) is not None:
            mirror.push(path)


def listing(folder: str | Path, suffix: str = "") -> list[str]:
    """The files directly in ``folder`` ending with ``suffix``, sorted: in the store for a mirrored path."""
    if (mirror := mirror_of(folder)) is not None:
        return mirror.listing(folder, suffix)
    folder = Path(folder)
    return sorted(str(p) for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(suffix) and not p.name.startswith(".")) \
        if folder.is_dir() else []


def parquet_rows(path: str | Path) -> int:
    """A Parquet file's row count from its footer; in the store for a mirrored path (nothing downloaded)."""
    import pyarrow.parquet as pq

    if (mirror := mirror_of(path)) is not None:
        with mirror.fs.open(mirror.remote(path), "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows
    return pq.ParquetFile(path).metadata.num_rows


def read_text(path: str | Path) -> str:
    """A small file's text (a manifest); from the store for a mirrored path."""
    if (mirror := mirror_of(path)) is not None and (text := mirror.read_text(path)) is not None:
        return text
    return Path(path).read_text()


def exists(path: str | Path) -> bool:
    if (mirror := mirror_of(path)) is not None:
        return mirror.exists(path)
    return Path(path).exists()


def remove(path: str | Path) -> None:
    if (mirror := mirror_of(path)) is not None:
        mirror.remove(path)
    else:
        remove_local(Path(path))


# --- a unit's files, moved around its run ---------------------------------------------------------

def rebase(value: Any, old: str, new: str) -> Any:
    """``value`` with every string path under ``old`` moved under ``new``: through dataclass fields, tuples,
    lists, dicts and ``functools.partial`` arguments (a stateful worker's factory)."""
    if old == new:
        return value
    if isinstance(value, str):
        return new + value[len(old):] if value == old or value.startswith(old + "/") else value
    if isinstance(value, Path):
        return Path(rebase(str(value), old, new))
    if isinstance(value, functools.partial):
        return functools.partial(value.func, *rebase(value.args, old, new), **rebase(value.keywords, old, new))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: moved for f in dataclasses.fields(value) if f.init
                   if (moved := rebase(getattr(value, f.name), old, new)) is not getattr(value, f.name)}
        return dataclasses.replace(value, **changes) if changes else value
    if isinstance(value, tuple):
        moved = tuple(rebase(v, old, new) for v in value)
        return moved if any(a is not b for a, b in zip(moved, value)) else value
    if isinstance(value, list):
        return [rebase(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: rebase(v, old, new) for k, v in value.items()}
    return value


def paths_in(value: Any, root: str) -> list[str]:
    """Every string path under ``root`` in ``value`` (searched as :func:`rebase` does)."""
    found: list[str] = []

    def visit(v: Any) -> None:
        if isinstance(v, (str, Path)):
            if str(v) == root or str(v).startswith(root + "/"):
                found.append(str(v))
        elif isinstance(v, functools.partial):
            visit(v.args), visit(v.keywords)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            for f in dataclasses.fields(v):
                visit(getattr(v, f.name))
        elif isinstance(v, (tuple, list)):
            for item in v:
                visit(item)
        elif isinstance(v, dict):
            for item in v.values():
                visit(item)

    visit(value)
    return sorted(set(found))


def output_paths(unit: Any, root: str) -> set[str]:
    """The paths of a unit's output-only fields (its class's ``OUTPUTS``: folders many units write into, which
    pulling would download again for every unit)."""
    return {p for name in getattr(type(unit), "OUTPUTS", ()) for p in paths_in(getattr(unit, name), root)}


class UnitFiles:
    """One unit's files in a worker's mirror: pulled before it runs, its new or changed files pushed after."""

    def __init__(self, mirror: Mirror, paths: Iterable[str], outputs: Iterable[str] = ()):
        self.mirror, self.paths = mirror, sorted(set(paths))
        self.outputs = set(outputs)
        self.before: dict[str, tuple[int, int]] = {}

    def pull(self) -> None:
        for path in self.paths:
            if path not in self.outputs:
                self.mirror.pull(path)
            Path(path).parent.mkdir(parents=True, exist_ok=True)  # as the driver's mkdir left it on shared disk
        self.before = {str(f): stat_of(f) for path in self.paths for f in local_files(path)}

    def push(self) -> None:
        for path in self.paths:
            self.mirror.push(path, self.before)


def in_mirror(spec: WorkdirSpec | None, owner: str | None, run: Any, *objects: Any) -> Any:
    """``run(*objects)`` with the objects' files in this process's mirror of ``spec``: paths rebased from the
    sender's mirror to ours (``owner``: this node's id; None: the sender's own mirror), inputs pulled, outputs
    pushed, and paths in the result rebased back. ``spec`` None (a local workdir): just ``run(*objects)``."""
    if spec is None:
        return run(*objects)
    mirror = node_mirror(spec, owner) if owner is not None else open_mirror(spec.url, spec.local)
    mine = str(mirror.local)
    objects = tuple(rebase(o, spec.local, mine) for o in objects)
    files = UnitFiles(mirror, [p for o in objects for p in paths_in(o, mine)],
                      [p for o in objects for p in output_paths(o, mine)])
    files.pull()
    result = run(*objects)
    files.push()
    return rebase(result, mine, spec.local)


class MirroredWorker:
    """A stateful worker (built once by ``factory``, then called per unit) with its files in this process's
    mirror: the factory's paths (a checkpoint, a cache folder) are pulled once when it is built, each unit's
    before it runs; after each unit, what it or the worker wrote is pushed (a cache's new batch files)."""

    def __init__(self, spec: WorkdirSpec | None, owner: str | None, factory: Any):
        self.spec = spec
        if spec is None:
            self.process = factory()
            return
        self.mirror = node_mirror(spec, owner) if owner is not None else open_mirror(spec.url, spec.local)
        self.mine = str(self.mirror.local)
        factory = rebase(factory, spec.local, self.mine)
        self.own = UnitFiles(self.mirror, paths_in(factory, self.mine))
        self.own.pull()
        self.process = factory()

    def __call__(self, unit: Any) -> Any:
        if self.spec is None:
            return self.process(unit)
        unit = rebase(unit, self.spec.local, self.mine)
        files = UnitFiles(self.mirror, paths_in(unit, self.mine), output_paths(unit, self.mine))
        files.pull()
        result = self.process(unit)
        files.push()
        self.own.push()
        self.own.before = {str(f): stat_of(f) for path in self.own.paths for f in local_files(path)}
        return rebase(result, self.mine, self.spec.local)
