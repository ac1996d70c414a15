"""One workdir, one writer, from the command line: `curaclip run` on a workdir another run holds stops at once
(exit 2, one line naming the holder's host and pid), `--wait` waits for it, `curaclip unlock` breaks a lock,
`curaclip stats` answers while a run holds the workdir, and the pipeline flow itself (what deployments run) takes
the lock of the workdir as given, a URL's in the store. The holders are real processes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from flows.cli import main
from flows.config import load_config
from flows.pipeline import pipeline
from tasks.store import workdir_lock as L
from tests.servers.s3_server import s3_server
from tests.tasks.store.lock_holder import ROOT, SECOND_WRITER, start_holder, stop

ARGS = ["--only", "ingest", "--set", "executor=local", "--set", "ingest.world.num_images=200"]
SINCE = r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """A workdir with one finished run (an ingest of 200 samples): a catalog for stats, a cache for reruns."""
    workdir = tmp_path_factory.mktemp("run")
    assert main(["run", "--workdir", str(workdir), *ARGS]) == 0
    return workdir


CLI_NO_PREFECT = ("import sys; from flows.cli import main; rc = main(sys.argv[1:]); "
                  "assert 'prefect' not in sys.modules, 'Prefect was imported'; sys.exit(rc)")
"""`curaclip run` as its own process, failing if it got as far as importing Prefect (let alone starting its
server): "at once" is before anything slow."""


def test_run_on_a_held_workdir_exits_at_once_with_code_2_naming_the_holder(tmp_path, reliability):
    holder = start_holder(tmp_path)
    try:
        proc = subprocess.run([sys.executable, "-c", CLI_NO_PREFECT, "run", "--workdir", str(tmp_path), *ARGS],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                              timeout=300)
    finally:
        stop(holder)
    w = re.escape(str(tmp_path))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.fullmatch(rf"curaclip run: error: workdir {w} is in use by run holder \(pid {holder.pid} on "
                        rf"{re.escape(socket.gethostname())}, {SINCE}\); wait for it, pass --wait, or "
                        rf"`curaclip unlock --workdir {w}` if that run is gone\n", proc.stderr), proc.stderr
    assert not (tmp_path / "artifacts").exists()  # nothing ran
    reliability.check(SECOND_WRITER)


def test_run_wait_waits_for_the_holder_then_runs(ingested, capsys):
    holder = start_holder(ingested, seconds=3)
    capsys.readouterr()
    assert main(["run", "--wait", "--workdir", str(ingested), *ARGS]) == 0
    assert holder.poll() == 0 and stop(holder) == ""  # it finished and released first
    out, err = capsys.readouterr()
    assert len(re.findall("waiting for it", err)) == 1
    assert re.search(rf"curaclip run: workdir .* is in use by run holder \(pid {holder.pid} on .*, {SINCE}\); "
                     r"waiting for it \(--wait\)", err)
    run_id = re.search(r"run (\S+) finished", out).group(1)
    assert json.loads((ingested / "report.json").read_text())["run_id"] == run_id
    assert L.holder(str(ingested)) is None  # released when the run ended


def test_stats_answers_while_a_run_holds_the_workdir(ingested, capsys):
    holder = start_holder(ingested)
    try:
        capsys.readouterr()
        assert main(["stats", "--workdir", str(ingested)]) == 0
        assert main(["stats", "--workdir", str(ingested), "SELECT count(*) AS n FROM ingest"]) == 0
        assert L.holder(str(ingested)).pid == holder.pid  # still held: stats took nothing
    finally:
        stop(holder)
    table, count = capsys.readouterr().out.split("n\n---\n")
    assert re.search(r"^ingest\s+\w+\s+200\s+200\s", table, re.M) and count == "200\n"


def test_unlock_breaks_a_lock_and_says_whose(tmp_path, capsys, reliability):
    holder = start_holder(tmp_path)
    try:
        assert main(["unlock", "--workdir", str(tmp_path)]) == 0
        assert L.holder(str(tmp_path)) is None
    finally:
        stop(holder)
    out = capsys.readouterr().out
    assert re.fullmatch(rf"broke the lock of run holder \(pid {holder.pid} on .*, {SINCE}\) on workdir "
                        rf"{re.escape(str(tmp_path))} \(its process is still running: it goes on without the "
                        r"lock\)\n", out), out
    assert main(["unlock", "--workdir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"workdir {tmp_path} is not locked: nothing to break\n"
    reliability.fault("lock broken by hand while its holder runs", "`curaclip unlock`")


def test_the_pipeline_flow_takes_the_lock_of_the_workdir_as_given(tmp_path, monkeypatch, reliability):
    """What a deployment runs: the flow alone. For an S3 workdir the lock is the store's, not the driver's
    mirror's (a second driver elsewhere has a mirror of its own)."""
    cfg = load_config(overrides=ARGS[3::2])
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(L.WorkdirBusyError, match=f"pid {holder.pid} on"):
            pipeline(cfg, workdir=str(tmp_path), only="ingest")
    finally:
        stop(holder)
    reliability.check(SECOND_WRITER)
    monkeypatch.setenv("CURACLIP_MIRROR_DIR", str(tmp_path / "mirrors"))
    with s3_server("held") as env:
        holder = start_holder("s3://held/run", env=env)
        try:
            with pytest.raises(L.WorkdirBusyError, match=f"pid {holder.pid} on"):
                pipeline(cfg, workdir="s3://held/run", only="ingest")
        finally:
            stop(holder)
    reliability.check(SECOND_WRITER)


def test_gc_on_a_held_workdir_is_refused_and_its_dry_run_answers(ingested, capsys, reliability):
    """gc deletes, so it is a writer: never while a run holds the workdir (that run's inputs from earlier runs are
    not all in a run record yet); its dry run only reads."""
    holder = start_holder(ingested)
    try:
        capsys.readouterr()
        assert main(["gc", "--workdir", str(ingested), "--keep-runs", "1"]) == 2
        assert f"is in use by run holder (pid {holder.pid}" in capsys.readouterr().err
        assert main(["gc", "--workdir", str(ingested), "--dry-run"]) == 0
    finally:
        stop(holder)
    assert main(["gc", "--workdir", str(ingested), "--keep-runs", "1"]) == 0
    reliability.check(SECOND_WRITER)  # gc deletes: a writer
