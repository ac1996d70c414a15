"""gc over run histories built with the real artifact store: artifacts published as the stages publish them (staging
area, manifest with inputs and caption-cache folders, rename into place), staging areas left by failed and killed
runs, caption-cache folders written by the caption stage, and run records as the pipeline writes them. A model of
the history (what exists, who recorded what, when each thing was last written) says what gc must keep; gc must
keep exactly that and delete everything else."""

import json
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.cli import main
from tasks.store import layout as L
from tasks.store import lifetime
from tasks.store import workdir as W
from tasks.store.artifacts import PARTIAL, ArtifactRef, ArtifactStore, stage_key

CHAIN = ("ingest", "curate", "rewrite", "train")
"""A line of stages, each the input of the next; ``rewrite`` is the caption stage (it uses a cache folder)."""
NAMESPACES = ("rewrite-openai-m0-000000000000", "rewrite-openai-m1-111111111111", None)
"""The cache folder of each rewrite variant; None: a simulated backend, which keeps no cache."""
BASE = time.time() - 30 * 86400  # every modelled time is in the past, so a file written now is told apart
SPACING = 1000.0


def run_id_at(t: float, i: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y%m%d-%H%M%S-") + f"{i:06x}"


class History:
    """A workdir and the model of its history."""

    def __init__(self, root: Path):
        self.root, self.store = root, ArtifactStore(root)
        self.inputs: dict[tuple[str, str], tuple[str, str] | None] = {}
        self.namespace: dict[tuple[str, str], str | None] = {}
        self.written: dict[tuple[str, str, str], float] = {}
        """(kind, stage, folder name) of what exists -> the modelled time it was last written"""
        self.records: list[dict] = []
        """{"run_id", "started", "names" (stage -> key), "staging" ((stage, key) or None)}"""

    def run(self, i: int, config: tuple[int, ...], outcome: str, stop_at: int, partial: bool) -> None:
        """Run ``i``: each stage of CHAIN is found or published; a failed or killed run stops at ``stop_at``
        leaving that stage's staging area; a run's record (none if killed) names its stages, or with ``partial``
        only the last it had, so only the manifests' inputs protect the others."""
        t = BASE + SPACING * (i + 1)
        run_id, refs, upstream, left = run_id_at(t, i), {}, None, False
        stop = stop_at if outcome != "finished" else len(CHAIN)
        for index, stage in enumerate(CHAIN[:stop + 1]):
            key = stage_key(stage, "1", config[index], [upstream[1]] if upstream else [])
            if index == stop:  # found complete, it failed reading it: no staging area (as run_stage never
                left = not self.store.is_complete(stage, key)  # writes one for a complete key, unless forced)
                if left:
                    self._compute(stage, key, upstream, config[index], t, failing=True)
                break
            if not self.store.is_complete(stage, key):
                self._compute(stage, key, upstream, config[index], t, failing=False)
            refs[stage] = ArtifactRef(stage, key, str(self.store.path(stage, key)))
            upstream = (stage, key)
        if partial and refs:
            last = list(refs)[-1]
            refs = {last: refs[last]}
        if outcome == "finished":
            lifetime.write_run_record(self.root, {"run_id": run_id, "stages": {
                s: {"key": r.key, "artifact": r.path} for s, r in refs.items()}})
        elif outcome == "failed":
            lifetime.record_failure(self.root, run_id, "cfg", refs, 1.0, RuntimeError("stage failed"))
        if outcome != "killed":
            self.records.append({"run_id": run_id, "started": t, "names": {s: r.key for s, r in refs.items()},
                                 "staging": (CHAIN[stop], key) if outcome == "failed" and left else None})
        self._retime(t)

    def _compute(self, stage: str, key: str, upstream, variant: int, t: float, failing: bool) -> None:
        ns = NAMESPACES[variant] if stage == "rewrite" else None
        manifest = {"stage": stage, "key": key, "inputs": dict([upstream]) if upstream else {},
                    "config_hash": f"{variant:016x}", "created": datetime.fromtimestamp(t, timezone.utc).isoformat(),
                    "counts": {}, **({"caption_cache": [ns] if ns else []} if stage == "rewrite" else {})}
        if ns is not None:  # the caption stage answers (a batch file) before it can fail
            (self.root / L.CAPTION_CACHE / ns).mkdir(parents=True, exist_ok=True)
            (self.root / L.CAPTION_CACHE / ns / f"{uuid.uuid4().hex}.parquet").write_bytes(b"x" * 50)
            self.written[("cache", "rewrite", ns)] = t
        try:
            with self.store.writing(stage, key, manifest) as staging:
                (staging.path / "parts").mkdir(exist_ok=True)
                (staging.path / "parts" / f"part-{variant}.parquet").write_bytes(b"p" * (100 + variant))
                staging.mark("step", 0, "unit", {"rows": 1})
                if failing:
                    raise RuntimeError("killed mid-stage")
        except RuntimeError:
            self.written[("staging", stage, f"{key}{PARTIAL}")] = t
            return
        self.written.pop(("staging", stage, f"{key}{PARTIAL}"), None)  # renamed into place
        self.written[("artifact", stage, key)] = t
        self.inputs[(stage, key)] = upstream
        self.namespace[(stage, key)] = ns

    def _retime(self, t: float) -> None:
        """Files this run wrote (their real mtime is now) get the run's modelled time."""
        for path in self.root.rglob("*"):
            if path.is_file() and path.stat().st_mtime > BASE + 1e6:
                os.utime(path, (t + 10, t + 10))

    def expected_keep(self, keep_runs: int) -> set[tuple[str, str, str]]:
        """The model of gc's rule: what kept runs need (artifacts and their inputs, their caption-cache folders,
        a failed run's staging area), and everything written since the newest run started; with no record, all."""
        if not self.records:
            return set(self.written)
        kept = sorted(self.records, key=lambda r: r["run_id"])[-keep_runs:]
        since = max(r["started"] for r in self.records)
        need = {item for item, t in self.written.items() if t >= since}
        for record in kept:
            todo = list(record["names"].items())
            while todo:
                artifact = todo.pop()
                need.add(("artifact", *artifact))
                if (up := self.inputs.get(artifact)) is not None:
                    todo.append(up)
                if ns := self.namespace.get(artifact):
                    need.add(("cache", "rewrite", ns))
            if record["staging"]:
                stage, key = record["staging"]
                need.add(("staging", stage, f"{key}{PARTIAL}"))
        return need & set(self.written)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


RUN = st.tuples(st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 2), st.integers(0, 1)),
                st.sampled_from(["finished", "finished", "failed", "killed"]), st.integers(0, len(CHAIN) - 1),
                st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(RUN, min_size=1, max_size=6), keep_runs=st.integers(1, 4))
def test_gc_keeps_exactly_what_kept_runs_need(tmp_path_factory, runs, keep_runs):
    root = tmp_path_factory.mktemp("history")
    history = History(root)
    for i, run in enumerate(runs):
        history.run(i, *run)
    keep = history.expected_keep(keep_runs)
    before = snapshot(root)

    dry = lifetime.gc(root, keep_runs, dry_run=True)
    assert snapshot(root) == before  # a dry run deletes nothing
    assert {i.id for i in dry.items} == set(history.written)  # every artifact, staging area, cache folder found
    assert {i.id for i in dry.keep} == keep
    assert {i.id for i in dry.delete} == set(history.written) - keep

    done = lifetime.gc(root, keep_runs)
    assert [i.id for i in done.delete] == [i.id for i in dry.delete]  # the dry run listed exactly what goes
    for c in done.counts().values():  # counts reconcile
        assert c["found"] == c["kept"] + c["deleted"] and c["found_bytes"] == c["kept_bytes"] + c["deleted_bytes"]
    after = snapshot(root)
    for item in done.keep:  # every file of what stays is untouched
        assert {k: v for k, v in before.items() if k.startswith(item.rel + "/")} == \
            {k: v for k, v in after.items() if k.startswith(item.rel + "/")}
    for item in done.delete:
        assert not (root / item.rel).exists()
    for record in sorted(history.records, key=lambda r: r["run_id"])[-keep_runs:]:
        for stage, key in record["names"].items():  # what a kept run names is still complete
            assert history.store.is_complete(stage, key)
    assert lifetime.gc(root, keep_runs).delete == []  # nothing left to collect
    assert len(lifetime.read_runs(lifetime.Files(root))) == len(history.records)  # records are never deleted


def test_a_failed_runs_staging_area_is_kept_while_the_run_is_and_its_rerun_resumes_it(tmp_path):
    """Run 0 fails at curate; run 1 (another ingest config) finishes after it. With both kept, run 0's staging area
    stays although it is older than run 1, and the next run of its key reuses its finished part."""
    history = History(tmp_path)
    history.run(0, (0, 0, 2, 0), "failed", 1, False)
    history.run(1, (1, 0, 2, 0), "finished", 0, False)
    record = json.loads(next((tmp_path / lifetime.RUNS).glob("*-000000.json")).read_text())
    assert record["status"] == "failed" and [s["stage"] for s in record["staging"]] == ["curate"]
    curate_key = record["staging"][0]["key"]
    assert lifetime.gc(tmp_path, keep_runs=2).delete == []
    with history.store.writing("curate", curate_key, {}) as staging:
        assert staging.done("step", 0, "unit") == {"rows": 1}  # the finished part, reused
    history._retime(BASE + 1.5 * SPACING)  # published between the two runs, for the next check
    assert {i.id for i in lifetime.gc(tmp_path, keep_runs=1).delete} == {
        ("artifact", "ingest", record["stages"]["ingest"]["key"]), ("artifact", "curate", curate_key)}


def test_a_run_started_in_the_same_second_as_the_last_write_of_the_one_before_does_not_keep_that_write(tmp_path):
    """Run ids carry whole seconds; the records carry the start to the microsecond (``started_at``), so an artifact
    only an unkept run needs is deleted although it was written in the same second the newest run started (the
    CI flake of test_lifetime_e2e: a smoke run's eval published at hh:mm:25.05, the next run started at 25.60)."""
    store, second = ArtifactStore(tmp_path), float(int(time.time()) - 100)
    for i, config in enumerate((0, 1)):
        key = stage_key("train", "1", config, [])
        with store.writing("train", key, {"stage": "train", "key": key, "inputs": {}}) as staging:
            (staging.path / "model.pt").write_bytes(b"w")
        for path in store.path("train", key).rglob("*"):
            os.utime(path, (second + 0.05, second + 0.05))
        lifetime.write_run_record(tmp_path, {"run_id": run_id_at(second, i), "started_at": second + 0.6 * i,
                                             "stages": {"train": {"key": key}}})
    old = ("artifact", "train", stage_key("train", "1", 0, []))
    assert [i.id for i in lifetime.gc(tmp_path, keep_runs=1).delete] == [old]


def test_cli_lists_artifacts_and_collects(tmp_path, capsys):
    history = History(tmp_path)
    history.run(0, (0, 0, 0, 0), "finished", 0, False)
    history.run(1, (0, 0, 1, 0), "finished", 0, False)  # another rewrite model: rewrite and train recompute
    ids = [r["run_id"] for r in history.records]
    assert main(["artifacts", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["stage", "key", "inputs", "config", "size", "age", "runs"]
    assert len([line for line in lines if line.startswith(("ingest", "curate", "rewrite", "train"))]) == 6
    assert any(line.startswith("ingest") and line.endswith(f"{ids[0]}, {ids[1]}") for line in lines)  # shared
    curate = history.records[0]["names"]["curate"]
    assert f"ingest:{history.records[0]['names']['ingest'][:8]}" in next(x for x in lines if curate in x)
    assert main(["artifacts", "--workdir", str(tmp_path), "--stage", "train"]) == 0
    assert len([x for x in capsys.readouterr().out.splitlines() if x.startswith("train")]) == 2

    before = snapshot(tmp_path)
    assert main(["gc", "--workdir", str(tmp_path), "--dry-run"]) == 0  # the default keeps both runs
    assert "artifacts           6 found" in capsys.readouterr().out and snapshot(tmp_path) == before
    assert main(["gc", "--workdir", str(tmp_path), "--keep-runs", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would delete:") and snapshot(tmp_path) == before
    assert main(["gc", "--workdir", str(tmp_path), "--keep-runs", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("deleted:") and f"runs kept (1 of 2, --keep-runs 1): {ids[1]}" in out
    assert "cache folders       2 found" in out and "1 deleted" in out
    gone = {(s, k) for s, k in history.records[0]["names"].items()} - set(history.records[1]["names"].items())
    assert {s for s, _ in gone} == {"rewrite", "train"}
    assert all(not history.store.path(s, k).exists() for s, k in gone)
    cache = tmp_path / L.CAPTION_CACHE
    assert not (cache / NAMESPACES[0]).exists() and (cache / NAMESPACES[1]).is_dir()


@pytest.mark.parametrize("argv, message", [(["gc", "--keep-runs", "0"], "--keep-runs must be at least 1"),
                                           (["artifacts"], "no workdir at")])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    assert main([*argv, "--workdir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"curaclip {argv[0]}: error: ") and message in err and err.count("\n") == 1


def test_no_run_record_means_nothing_is_deleted(tmp_path):
    history = History(tmp_path)
    history.run(0, (0, 0, 0, 0), "killed", 2, False)
    plan = lifetime.gc(tmp_path, keep_runs=1)
    assert plan.delete == [] and {plan.why[i.id] for i in plan.keep} == {"no run records"}


def test_a_manifest_without_cache_folders_keeps_every_folder_of_its_stage(tmp_path):
    """A rewrite artifact from before manifests named their cache folders: gc cannot tell which it used."""
    history = History(tmp_path)
    history.run(0, (0, 0, 0, 0), "finished", 0, False)
    history.run(1, (0, 0, 1, 0), "finished", 0, False)
    key = history.records[1]["names"]["rewrite"]
    manifest = history.store.path("rewrite", key) / L.MANIFEST
    manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "caption_cache"}))
    os.utime(manifest, (BASE, BASE))
    assert {i.kind for i in lifetime.gc(tmp_path, keep_runs=1).delete} == {"artifact"}
    assert (tmp_path / L.CAPTION_CACHE / NAMESPACES[0]).is_dir()


def test_an_object_store_workdir_is_collected_in_the_store_and_its_mirror(tmp_path, monkeypatch):
    """fsspec's in-memory filesystem stands for the store: artifacts published through the driver's mirror as
    the stages publish them; run 0's own artifact goes, in the store and in the mirror."""
    monkeypatch.setenv(W.MIRROR_ENV, str(tmp_path / "mirrors"))
    url = f"memory://bucket-{uuid.uuid4().hex[:8]}/run"
    mirror = W.driver_mirror(url)
    store = ArtifactStore(mirror.local, mirror)
    now = time.time()
    for i, (t, variant) in enumerate([(now - 100, 0), (now + 50, 1)]):  # ids around now: nothing is "recent"
        key = stage_key("ingest", "1", variant, [])
        with store.writing("ingest", key, {"inputs": {}, "config_hash": "c", "counts": {}}) as staging:
            (staging.path / "part.txt").write_text("rows")
            mirror.push(staging.path / "part.txt")
        lifetime.write_run_record(mirror.local, {"run_id": run_id_at(t, i),
                                                 "stages": {"ingest": {"key": key, "artifact": "x"}}})
    old, new = stage_key("ingest", "1", 0, []), stage_key("ingest", "1", 1, [])
    plan = lifetime.gc(url, keep_runs=1)
    assert [i.id for i in plan.delete] == [("artifact", "ingest", old)]
    assert not mirror.exists(store.path("ingest", old)) and not store.path("ingest", old).exists()
    assert store.is_complete("ingest", new) and mirror.exists(store.path("ingest", new) / "part.txt")
