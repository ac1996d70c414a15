"""Artifacts and their lifetime: which runs need which artifact, and ``curaclip gc`` (docs/architecture.md,
"Artifacts and their lifetime").

**Run records.** Every run leaves ``reports/<run_id>.json``: ``write_report`` writes it for a run that finished,
:func:`record_failure` for one that raised (``"status": "failed"``, its error, the stages it had by then, and the
staging areas it left unfinished). A run killed outright (SIGKILL, a lost machine) leaves none. Records are never
deleted: they are small, and they are the history (each holds its run's eval results).

**What a run needs**: the artifacts its record names; their inputs, followed through each manifest's ``inputs``
(so a record naming only some stages still protects what they were built from); the caption-cache folders
(``cache/captions/<stage>-<backend>-<model>-<digest>``, one per (stage, backend, model): ``curation.captions.cache``)
that those artifacts' caption stages used, from the manifest's ``caption_cache``; and the staging areas its record
names (a failed run's unfinished stage: what lets its rerun resume).

**gc's rule.** The kept runs are the ``keep_runs`` newest records (run ids sort by start time). gc deletes every
artifact, staging area and caption-cache folder that no kept run needs, except:

- anything written at or after the start of the newest run (its newest file's modification time): it may belong
  to a run still going, or be the staging area of a run killed without a record, which its rerun resumes;
- with no run record at all, nothing: nothing is known to be unneeded;
- a caption stage's artifact recorded before manifests named their cache folders keeps every folder of its stage.

So the latest run's artifacts (what ``catalog.duckdb`` points at: the catalog is rebuilt from the refs of the run
that wrote the newest record) always stay. Nothing else removes a staging area: a stage's next run of the key
reuses its finished parts (``ArtifactStore.writing``), and only a forced recompute empties it first.

An artifact's manifest is deleted before its files, so a gc cut short never leaves a folder that looks complete.
Not collected: eval's image-feature cache (``cache/features``), the writer locks (``.<key>.lock``: never deleted,
``artifacts.LOCK``) and a replaced artifact's ``.old-*`` leftovers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec

from tasks.store import layout as L
from tasks.store import workdir as W
from tasks.store.artifacts import PARTIAL, ArtifactRef

DEFAULT_KEEP_RUNS = 3
"""The latest run and the two before it: enough to go back to the run before a change, or to compare two configs
run in turn, without keeping a whole history of artifacts."""
RUNS = "reports"
"""``<workdir>/reports/<run_id>.json``: one record per run."""
KINDS = ("artifact", "staging", "cache")
LABELS = {"artifact": "artifacts", "staging": "staging areas", "cache": "cache folders"}


# --- the workdir's files, local or on object storage ------------------------------------------------------------

def modified_time(info: Mapping[str, Any]) -> float:
    """A file's modification time (epoch seconds) from an fsspec ``info`` dict, whatever the filesystem names it;
    infinity when it gives none (the file then counts as new, so gc never deletes it)."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(name)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    return math.inf


class Files:
    """A workdir's files through its fsspec filesystem: the local one, or an object store's (where a deletion
    also clears the driver's mirror). ``workdir``: a folder, a URL, or the local path of an open mirror."""

    def __init__(self, workdir: str | Path):
        workdir = str(workdir)
        url = workdir.rstrip("/") if W.is_remote(workdir) else None
        self.mirror = W.driver_mirror(url) if url else W.mirror_of(W.local_path(workdir))
        if self.mirror is not None:
            self.fs, self.root, self.local = self.mirror.fs, self.mirror.root, self.mirror.local
        else:
            self.local = Path(W.local_path(workdir))
            self.fs, self.root = fsspec.filesystem("file"), self.local.as_posix()

    def exists(self) -> bool:
        return self.mirror is not None or self.local.is_dir()

    def files(self, rel: str) -> dict[str, tuple[int, float]]:
        """``{path relative to the workdir: (size, modified)}`` of every file under ``rel``."""
        try:
            found = self.fs.find(f"{self.root}/{rel}", detail=True, withdirs=False)
        except FileNotFoundError:
            return {}
        return {name[len(self.root):].lstrip("/"): (int(info.get("size") or 0), modified_time(info))
                for name, info in found.items() if info.get("type") != "directory"}

    def read_json(self, rel: str) -> dict[str, Any]:
        return json.loads(self.fs.cat_file(f"{self.root}/{rel}").decode())

    def write_text(self, rel: str, text: str) -> None:
        path = self.local / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        W.push(path)

    def remove(self, rel: str) -> None:
        if self.mirror is not None:
            self.mirror.remove(self.local / rel)
        else:
            W.remove_local(self.local / rel)


# --- run records ------------------------------------------------------------------------------------------------

def run_started(run_id: str) -> float | None:
    """A run's start (epoch seconds, UTC) from its id ``YYYYmmdd-HHMMSS-hex``; None for an id of another form."""
    try:
        return datetime.strptime(run_id[:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Run:
    """One run's record, as gc reads it."""

    run_id: str
    started: float
    stages: dict[str, str]
    """stage -> key of every artifact the run computed or found cached"""
    staging: tuple[tuple[str, str], ...] = ()
    """(stage, key) of the staging areas a failed run left unfinished"""
    failed: bool = False


def write_run_record(workdir: str | Path, record: Mapping[str, Any]) -> None:
    """``reports/<run_id>.json`` (uploaded to the store for an object-store workdir)."""
    Files(workdir).write_text(f"{RUNS}/{record['run_id']}.json", json.dumps(record, indent=2, default=str))


def read_runs(files: Files) -> list[Run]:
    """Every run record, oldest first."""
    runs = []
    for rel, (_, modified) in files.files(RUNS).items():
        if not rel.endswith(".json") or rel.count("/") != 1:
            continue
        record = files.read_json(rel)
        run_id = str(record.get("run_id") or Path(rel).stem)
        started = record.get("started_at")  # to the microsecond; the id's time is whole seconds
        started = run_started(run_id) if not isinstance(started, (int, float)) else float(started)
        runs.append(Run(
            run_id=run_id,
            started=modified if started is None else started,
            stages={stage: s["key"] for stage, s in (record.get("stages") or {}).items() if "key" in s},
            staging=tuple((s["stage"], s["key"]) for s in record.get("staging") or ()),
            failed=record.get("status") == "failed",
        ))
    return sorted(runs, key=lambda r: (r.started, r.run_id))


def record_failure(workdir: str | Path, run_id: str, config_hash: str, refs: Mapping[str, ArtifactRef],
                   seconds: float, error: BaseException, started_at: float | None = None) -> dict[str, Any]:
    """Write the record of a run that raised: the stages it had, and the staging areas written since it started
    (its unfinished stage's, which its rerun resumes), so gc keeps both while the run is kept. ``started_at``:
    the run's start to the microsecond, recorded for gc; the staging areas are those written since the id's whole
    second, which also holds where the store's times are whole seconds."""
    since = run_started(run_id) or 0.0
    staging = sorted({(stage, key) for kind, stage, key, _, _, modified in _artifact_folders(Files(workdir))
                      if kind == "staging" and modified >= since})
    record = {
        "run_id": run_id,
        "config_hash": config_hash,
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "seconds": round(seconds, 3),
        **({"started_at": started_at} if started_at is not None else {}),
        "stages": {stage: {"status": ref.status, "artifact": ref.path, "key": ref.key} for stage, ref in refs.items()},
        "staging": [{"stage": stage, "key": key} for stage, key in staging],
    }
    write_run_record(workdir, record)
    return record


# --- what is in the workdir -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One thing gc can delete: an artifact, a staging area (or an artifact folder whose publishing to object
    storage was cut short before its manifest: the same unfinished write of the key), or a caption-cache folder."""

    kind: str
    stage: str
    key: str
    """the artifact's key; a cache folder's name"""
    rel: str
    """its folder, relative to the workdir"""
    size: int
    modified: float
    """its newest file's modification time"""
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> tuple[str, str, str]:
        return self.kind, self.stage, Path(self.rel).name


def _grouped(found: Mapping[str, tuple[int, float]], depth: int) -> dict[str, tuple[int, float]]:
    """Total size and newest time per folder ``depth`` levels down."""
    groups: dict[str, tuple[int, float]] = {}
    for rel, (size, modified) in found.items():
        parts = rel.split("/")
        if len(parts) <= depth or parts[depth - 1].startswith("."):  # a lock file, a replaced artifact's trash
            continue
        folder = "/".join(parts[:depth])
        total, newest = groups.get(folder, (0, -math.inf))
        groups[folder] = (total + size, max(newest, modified))
    return groups


def _artifact_folders(files: Files) -> list[tuple[str, str, str, str, int, float]]:
    """(kind, stage, key, folder, size, modified) of every folder under ``artifacts/<stage>/``, from one listing."""
    found = files.files("artifacts")
    folders = []
    for folder, (size, modified) in sorted(_grouped(found, 3).items()):
        _, stage, name = folder.split("/")
        complete = not name.endswith(PARTIAL) and f"{folder}/{L.MANIFEST}" in found
        folders.append(("artifact" if complete else "staging", stage, name.removesuffix(PARTIAL), folder, size,
                        modified))
    return folders


def inventory(files: Files) -> list[Item]:
    """Every artifact (with its manifest), staging area and caption-cache folder."""
    items = [Item(kind, stage, key, folder, size, modified,
                  files.read_json(f"{folder}/{L.MANIFEST}") if kind == "artifact" else {})
             for kind, stage, key, folder, size, modified in _artifact_folders(files)]
    for folder, (size, modified) in sorted(_grouped(files.files(L.CAPTION_CACHE), 3).items()):
        name = Path(folder).name
        items.append(Item("cache", name.split("-")[0], name, folder, size, modified))
    return items


# --- what runs need, and the plan ---------------------------------------------------------------------------------

def needs(run: Run, manifests: Mapping[tuple[str, str], Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    """The item ids ``run`` needs: its artifacts and their inputs (through the manifests present), the cache folders
    their caption stages used, and its unfinished staging areas. A cache id ``("cache", stage, "*")`` stands for
    every folder of ``stage`` (a manifest written before manifests named their cache folders)."""
    needed: set[tuple[str, str, str]] = {("staging", stage, f"{key}{PARTIAL}") for stage, key in run.staging}
    needed |= {("staging", stage, key) for stage, key in run.staging}
    todo = list(run.stages.items())
    while todo:
        stage, key = todo.pop()
        if ("artifact", stage, key) in needed:
            continue
        needed.add(("artifact", stage, key))
        manifest = manifests.get((stage, key))
        if manifest is None:  # gone already (an earlier gc with fewer runs kept)
            continue
        todo.extend((manifest.get("inputs") or {}).items())
        if "caption_cache" in manifest:
            needed |= {("cache", stage, name) for name in manifest["caption_cache"]}
        elif stage in ("rewrite", "longcap"):
            needed.add(("cache", stage, "*"))
    return needed


@dataclass
class Plan:
    """What gc keeps and deletes, and why."""

    runs: list[Run]
    """every recorded run, oldest first"""
    keep_runs: int
    items: list[Item]
    delete: list[Item]
    keep: list[Item]
    why: dict[tuple[str, str, str], str]
    """why each kept item stays"""
    used_by: dict[tuple[str, str, str], list[str]]
    """the runs (kept or not) that need each item"""

    @property
    def kept_runs(self) -> list[Run]:
        return self.runs[-self.keep_runs:]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per kind: items found, kept, deleted, and the bytes of each."""
        out = {}
        for kind in KINDS:
            of = {name: [i for i in group if i.kind == kind]
                  for name, group in (("found", self.items), ("kept", self.keep), ("deleted", self.delete))}
            out[kind] = {**{n: len(g) for n, g in of.items()}, **{f"{n}_bytes": sum(i.size for i in g)
                                                                  for n, g in of.items()}}
        return out


def _used_by(runs: Iterable[Run], manifests: Mapping[tuple[str, str], Mapping[str, Any]]
             ) -> dict[tuple[str, str, str], list[str]]:
    used: dict[tuple[str, str, str], list[str]] = {}
    for run in runs:
        for item_id in needs(run, manifests):
            used.setdefault(item_id, []).append(run.run_id)
    return used


def plan_gc(workdir: str | Path, keep_runs: int = DEFAULT_KEEP_RUNS) -> Plan:
    """The plan of ``gc`` over ``workdir``, deleting nothing."""
    if keep_runs < 1:
        raise ValueError(f"--keep-runs must be at least 1 (the latest run's artifacts always stay), got {keep_runs}")
    files = Files(workdir)
    if not files.exists():
        raise FileNotFoundError(f"no workdir at {workdir}")
    items, runs = inventory(files), read_runs(files)
    manifests = {(i.stage, i.key): i.manifest for i in items if i.kind == "artifact"}
    used = _used_by(runs, manifests)
    kept_ids = {run.run_id for run in runs[-keep_runs:]}
    since = runs[-1].started if runs else -math.inf  # the newest run's start
    keep, delete, why = [], [], {}
    for item in items:
        users = [r for r in used.get(item.id, []) + used.get((item.kind, item.stage, "*"), []) if r in kept_ids]
        if users:
            why[item.id] = f"run {max(users)}"
        elif not runs:
            why[item.id] = "no run records"
        elif item.modified >= since:
            why[item.id] = "written since the newest run started"
        (keep if item.id in why else delete).append(item)
    return Plan(runs, keep_runs, items, delete, keep, why, used)


def collect(workdir: str | Path, plan: Plan) -> None:
    """Delete what ``plan`` deletes; an artifact's manifest first, so it never looks complete half-deleted."""
    files = Files(workdir)
    for item in plan.delete:
        if item.kind == "artifact":
            files.remove(f"{item.rel}/{L.MANIFEST}")
        files.remove(item.rel)


def gc(workdir: str | Path, keep_runs: int = DEFAULT_KEEP_RUNS, dry_run: bool = False) -> Plan:
    """Delete every artifact, staging area and caption-cache folder that no kept run needs (the module's rule);
    ``dry_run``: only say what would go."""
    plan = plan_gc(workdir, keep_runs)
    if not dry_run:
        collect(workdir, plan)
    return plan


# --- tables for the command line ----------------------------------------------------------------------------------

def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def _created(item: Item) -> float:
    created = item.manifest.get("created")
    return datetime.fromisoformat(created).timestamp() if created else item.modified


def artifact_table(plan: Plan, stage: str | None = None, now: float | None = None) -> tuple[list[str], list[tuple]]:
    """One row per artifact (oldest first): stage, key, inputs (stage:key, keys shortened), config hash, size, age,
    and the runs that need it."""
    now = datetime.now(timezone.utc).timestamp() if now is None else now
    columns = ["stage", "key", "inputs", "config", "size", "age", "runs"]
    rows = []
    artifacts = {(i.stage, i.key): i for i in plan.items if i.kind == "artifact"}
    depth: dict[tuple[str, str], int] = {}

    def depth_of(at: tuple[str, str]) -> int:  # lineage order: an artifact after its inputs
        if at not in depth:
            inputs = (artifacts[at].manifest.get("inputs") or {}).items() if at in artifacts else ()
            depth[at] = 1 + max((depth_of(i) for i in inputs), default=0)
        return depth[at]

    for item in sorted(artifacts.values(), key=lambda i: (depth_of((i.stage, i.key)), _created(i), i.key)):
        if stage is not None and item.stage != stage:
            continue
        inputs = " ".join(f"{s}:{k[:8]}" for s, k in sorted((item.manifest.get("inputs") or {}).items())) or "-"
        runs = ", ".join(plan.used_by.get(item.id, [])) or "-"
        rows.append((item.stage, item.key, inputs, str(item.manifest.get("config_hash", "-"))[:8],
                     human_size(item.size), human_age(now - _created(item)), runs))
    return columns, rows


def deletion_table(plan: Plan, now: float | None = None) -> tuple[list[str], list[tuple]]:
    """One row per item gc deletes: kind, stage, key (or cache folder), size, age, the runs (none kept) that used it."""
    now = datetime.now(timezone.utc).timestamp() if now is None else now
    rows = [(i.kind, i.stage, i.key, human_size(i.size), human_age(now - i.modified),
             ", ".join(plan.used_by.get(i.id, [])) or "-") for i in plan.delete]
    return ["kind", "stage", "key", "size", "age", "used by"], rows


def summary(plan: Plan, done: bool) -> str:
    """One line per kind: found, kept, deleted (or to delete), with sizes; and the runs kept."""
    lines = []
    verb = "deleted" if done else "to delete"
    for kind, c in plan.counts().items():
        lines.append(f"{LABELS[kind]:<16} {c['found']:>4} found "
                     f"({human_size(c['found_bytes'])}), {c['kept']:>4} kept ({human_size(c['kept_bytes'])}), "
                     f"{c['deleted']:>4} {verb} ({human_size(c['deleted_bytes'])})")
    kept = [r.run_id + (" (failed)" if r.failed else "") for r in plan.kept_runs]
    lines.append(f"runs kept ({len(kept)} of {len(plan.runs)}, --keep-runs {plan.keep_runs}): "
                 f"{', '.join(kept) or 'none recorded: nothing is deleted'}")
    return "\n".join(lines)
