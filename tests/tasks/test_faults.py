"""Pause points (tasks/faults.py): a named point pauses one process, once, so the crash harness's one kill frees
the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks import faults

ROOT = Path(__file__).resolve().parents[2]


class Paused(Exception):
    """Raised in place of the pause's endless sleep."""


def never_sleep(seconds: float) -> None:
    raise Paused


@pytest.fixture
def point(monkeypatch, tmp_path) -> Path:
    """``unit:Part`` named (with a second point, so its pause file is ``<base>.0``); returns that pause file."""
    monkeypatch.setenv(faults.PAUSE_AT, "unit:Part,unit:Other")
    monkeypatch.setenv(faults.PAUSE_FILE, str(tmp_path / "pause"))
    monkeypatch.setattr(faults.time, "sleep", never_sleep)
    return tmp_path / "pause.0"


def test_the_first_process_at_a_point_pauses_and_names_itself(point):
    with pytest.raises(Paused):
        faults.pause_point("unit", "Part")
    assert json.loads(point.read_text()) == {"pid": os.getpid(), "point": "unit:Part"}
    assert sorted(p.name for p in point.parent.iterdir()) == ["pause.0"]  # no temporary file left


def test_a_point_already_paused_at_passes(point):
    point.write_text(json.dumps({"pid": 1, "point": "unit:Part"}))
    faults.pause_point("unit", "Part")  # the retried unit: no Paused
    faults.pause_point("unit", "Elsewhere")  # a point not named


def test_a_process_losing_the_race_to_a_point_passes_and_leaves_the_winners_file(point, monkeypatch):
    """Another process publishes the pause file between this one's check and its own publication: this one must
    not pause too (nobody would kill it) nor overwrite the file (the harness would kill the wrong process)."""
    winner = json.dumps({"pid": 1, "point": "unit:Part"})
    point.write_text(winner)

    class SeesNothingYet(type(point)):
        def exists(self, *args, **kwargs) -> bool:
            return False  # the check ran before the winner's file appeared

    monkeypatch.setattr(faults, "Path", SeesNothingYet)
    faults.pause_point("unit", "Part")
    assert point.read_text() == winner
    assert sorted(p.name for p in point.parent.iterdir()) == ["pause.0"]


def test_of_many_processes_reaching_a_point_together_exactly_one_pauses(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), faults.PAUSE_AT: "unit:Part,unit:Other",
           faults.PAUSE_FILE: str(tmp_path / "pause")}
    go = tmp_path / "go"
    code = (f"import time, pathlib\nwhile not pathlib.Path({str(go)!r}).exists(): time.sleep(0.001)\n"
            "from tasks.faults import pause_point\npause_point('unit', 'Part')\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True) for _ in range(8)]
    try:
        time.sleep(1.0)  # every process imported and waiting
        go.touch()
        deadline = time.monotonic() + 30
        while sum(p.poll() is None for p in procs) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a second pauser would still be sleeping now
        paused = [p for p in procs if p.poll() is None]
        assert len(paused) == 1
        assert all(p.returncode == 0 for p in procs if p not in paused)
        assert json.loads((tmp_path / "pause.0").read_text())["pid"] == paused[0].pid
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
