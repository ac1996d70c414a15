"""A stage killed half-way redoes only its unfinished parts: the ingest stage runs in a child process whose
executor SIGKILLs the process after K of its parts finished; the rerun of the same key, in this process, runs only
the other parts (counted by a counting executor and by the manifest's ``parts`` tally) and publishes the same
artifact an uninterrupted run does."""

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq

import tasks.stages.common
from curation import partitions as P
from curation.sources import IngestConfig
from flows.config import from_dict
from tasks.executors.local import LocalExecutor
from tasks.stages.common import RunContext
from tasks.stages.ingest import ingest

ROOT = Path(__file__).resolve().parents[3]
PARTS, KILL_AFTER = 6, 4
CONFIG = {"partitions": PARTS, "world": {"num_images": 360, "image_size": 32, "seed": 3}}

CHILD = textwrap.dedent("""
    import os, signal, sys
    import tasks.stages.common
    from flows.config import from_dict
    from curation.sources import IngestConfig
    from tasks.stages.common import RunContext
    from tasks.executors.local import LocalExecutor
    from tasks.stages.ingest import ingest

    class KilledAfter(LocalExecutor):
        def map(self, units, resources):
            for done, item in enumerate(super().map(units, resources)):
                yield item
                if done + 1 == {kill_after}:
                    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind, as a crash

    tasks.stages.common.make_executor = lambda *args: KilledAfter()
    ingest.fn(RunContext(workdir=sys.argv[1], run_id="killed", executor="local"),
              from_dict(IngestConfig, {config}, "ingest"))
""")


class Counting(LocalExecutor):
    def __init__(self):
        super().__init__()
        self.ran: list = []

    def map(self, units, resources):
        self.ran.extend(units)
        return super().map(units, resources)


def test_a_killed_stage_redoes_only_its_unfinished_parts(tmp_path, monkeypatch, reliability):
    cfg = from_dict(IngestConfig, CONFIG, "ingest")
    script = CHILD.format(kill_after=KILL_AFTER, config=CONFIG)
    child = subprocess.run([sys.executable, "-c", script, str(tmp_path / "work")], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    stage_dir = tmp_path / "work" / "artifacts" / "ingest"
    (staging,) = stage_dir.glob("*.partial")
    assert staging.name.endswith(".partial")  # nothing published
    assert len(list((staging / "_done" / "read").glob("*.json"))) == KILL_AFTER

    counting = Counting()
    monkeypatch.setattr(tasks.stages.common, "make_executor", lambda *args: counting)
    ref = ingest.fn(RunContext(workdir=str(tmp_path / "work"), run_id="rerun", executor="local"), cfg)
    manifest = json.loads((Path(ref.path) / "manifest.json").read_text())
    read_units = [u for u in counting.ran if isinstance(u, P.IngestPart)]
    assert len(read_units) == PARTS - KILL_AFTER  # only the unfinished parts were read again
    assert manifest["parts"]["read"] == {"computed": PARTS - KILL_AFTER, "reused": KILL_AFTER}
    assert manifest["parts"]["dedup"] == {"computed": PARTS, "reused": 0}  # the kill came before this step
    assert not (Path(ref.path) / "_done").exists() and not staging.exists()

    whole = ingest.fn(RunContext(workdir=str(tmp_path / "clean"), run_id="whole", executor="local"), cfg)
    assert whole.key == ref.key and whole.counts == ref.counts
    for folder in ("parts", "quarantine", "truth"):
        got, want = P.list_parts(Path(ref.path) / folder), P.list_parts(Path(whole.path) / folder)
        assert [Path(p).name for p in got] == [Path(p).name for p in want]
        assert all(pq.read_table(a).equals(pq.read_table(b)) for a, b in zip(got, want))
    reliability.fault("SIGKILL of the stage's process", "ingest")


class Recording(LocalExecutor):
    def __init__(self):
        super().__init__()
        self.seen: list = []

    def map(self, units, resources):
        self.seen.append(resources)
        return super().map(units, resources)


def test_a_stage_hands_its_own_resources_to_the_executor(tmp_path, monkeypatch):
    from tasks.executors.base import Resources, StageResources

    recording = Recording()
    monkeypatch.setattr(tasks.stages.common, "make_executor", lambda *args: recording)
    wanted = Resources(cpus=0.5, memory_gb=1.5)
    ctx = RunContext(workdir=str(tmp_path), run_id="r", executor="local", resources=StageResources(ingest=wanted))
    ingest.fn(ctx, from_dict(IngestConfig, {"partitions": 2, "world": {"num_images": 120, "image_size": 32}},
                             "ingest"))
    assert recording.seen == [wanted, wanted]  # the read and the dedup steps, each with ingest's resources
