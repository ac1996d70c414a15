"""The workdir's run lock (tasks/store/workdir_lock.py): one holder at a time, named when refused; a dead holder
taken over at once, a lease not renewed taken over once it expires, a live holder's lease renewed; the same on an
S3 workdir (moto's server on loopback). Holders are real processes (tests/tasks/store/lock_holder.py); records of
other hosts, which no process here could write as they would, are written as such a host leaves them."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import fsspec
import pytest

from tasks.store import workdir_lock as L
from tests.servers.s3_server import s3_server
from tests.tasks.store.lock_holder import SECOND_WRITER, start_holder, stop

LOCAL, S3 = "workdir lock (local)", "workdir lock (S3)"
"""Where the lock faults are injected (the reliability ledger's `where`)."""
RACE_LOSER = "workdir lock (S3): the second of two runs taking over one expired lock"


def refused(workdir: str) -> L.WorkdirBusyError:
    with pytest.raises(L.WorkdirBusyError) as caught:
        L.acquire(workdir, "second")
    return caught.value


def names(err: L.WorkdirBusyError, proc: subprocess.Popen, run_id: str = "holder") -> bool:
    return f"run {run_id} (pid {proc.pid} on {socket.gethostname()}, since " in str(err)


def test_a_held_workdir_is_refused_at_once_naming_the_holder(tmp_path, reliability):
    holder = start_holder(tmp_path)
    try:
        started = time.monotonic()
        err = refused(str(tmp_path))
        assert time.monotonic() - started < 2
        assert names(err, holder) and f"`curaclip unlock --workdir {tmp_path}`" in str(err)
        assert err.holder.pid == holder.pid
    finally:
        stop(holder)
    reliability.check(SECOND_WRITER)


def test_a_holder_killed_with_sigkill_is_taken_over_at_once(tmp_path, reliability):
    holder = start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    stop(holder)
    assert L.holder(str(tmp_path)).pid == holder.pid  # the dead holder's record stays behind
    said = []
    started = time.monotonic()
    lock = L.acquire(str(tmp_path), "next", say=said.append)
    assert time.monotonic() - started < 2
    assert L.holder(str(tmp_path)).run_id == "next"
    assert len(said) == 1 and f"pid {holder.pid} on" in said[0] and "its process is gone" in said[0]
    lock.release()
    assert not (tmp_path / L.LOCK_NAME).exists()
    reliability.fault("lock holder killed (SIGKILL)", LOCAL)


def write_record(path, record: L.Record) -> None:
    path.write_bytes(record.to_bytes())


def test_a_reused_pid_is_not_taken_for_its_holder(tmp_path, reliability):
    """A record naming a live pid of this host: another process now (its start time differs) is a dead holder; the
    same process, though it lacks the flock (a filesystem that does not enforce flock), still holds."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = L.Record.mine("old", 120.0)
        write_record(tmp_path / L.LOCK_NAME, dataclasses.replace(mine, pid=other.pid, pid_start="1"))
        L.acquire(str(tmp_path), "next", say=lambda m: None).release()
        write_record(tmp_path / L.LOCK_NAME, dataclasses.replace(mine, pid=other.pid,
                                                                 pid_start=L.process_start(other.pid)))
        assert refused(str(tmp_path)).holder.pid == other.pid
    finally:
        other.kill()
        other.wait()
    reliability.fault("lock holder's pid reused by another process", LOCAL)
    reliability.check(SECOND_WRITER)


def elsewhere(renewed_s_ago: float, lease_s: float = 120.0) -> L.Record:
    """The record a run on another host leaves on a shared filesystem (its pid cannot be checked from here)."""
    renewed = datetime.now(timezone.utc) - timedelta(seconds=renewed_s_ago)
    return L.Record("node-7", 4242, "remote-run", renewed.isoformat(), renewed.isoformat(), lease_s, "t0ken",
                    "another-boot/pid:[1]", "99")


def test_another_hosts_lock_holds_until_its_lease_expires(tmp_path, reliability):
    write_record(tmp_path / L.LOCK_NAME, elsewhere(renewed_s_ago=100))
    assert "run remote-run (pid 4242 on node-7" in str(refused(str(tmp_path)))
    write_record(tmp_path / L.LOCK_NAME, elsewhere(renewed_s_ago=130))
    said = []
    L.acquire(str(tmp_path), "next", say=said.append).release()
    assert "from run remote-run (pid 4242 on node-7" in said[0] and "its lease expired" in said[0]
    reliability.check(SECOND_WRITER)
    reliability.fault("lock holder on another host gone (lease not renewed)", LOCAL)


def test_a_live_holder_renews_its_record(tmp_path):
    holder = start_holder(tmp_path, lease_s=0.9)
    try:
        first = L.holder(str(tmp_path)).renewed
        time.sleep(1.2)
        assert L.holder(str(tmp_path)).renewed > first
    finally:
        stop(holder)


def test_wait_waits_for_the_holder_to_release(tmp_path):
    holder = start_holder(tmp_path, seconds=2.5)
    said = []
    started = time.monotonic()
    lock = L.acquire(str(tmp_path), "waiter", wait=True, say=said.append, poll_s=0.1)
    assert holder.wait(timeout=30) == 0 and time.monotonic() - started > 1.5
    assert len(said) == 1 and names(said[0], holder) and "waiting for it" in said[0]
    lock.release()


def test_broken_by_hand_the_next_run_takes_it_and_the_old_holder_hears_of_it(tmp_path, reliability):
    holder = start_holder(tmp_path, lease_s=0.9, seconds=2.0)
    assert L.break_lock(str(tmp_path)).pid == holder.pid
    assert L.holder(str(tmp_path)) is None
    lock = L.acquire(str(tmp_path), "next")
    assert holder.wait(timeout=30) == 0  # its release leaves the new holder's record alone
    assert "was broken" in stop(holder)
    assert L.holder(str(tmp_path)).run_id == "next"
    lock.release()
    assert L.break_lock(str(tmp_path)) is None
    reliability.fault("lock broken by hand while its holder runs", LOCAL)


def test_the_same_run_holds_again_another_run_of_this_process_is_refused(tmp_path, reliability):
    with L.hold(str(tmp_path), "run-a") as outer:
        with L.hold(str(tmp_path), "run-a") as inner:
            assert inner is outer
        assert L.holder(str(tmp_path)).run_id == "run-a"  # the inner block released nothing
        assert refused(str(tmp_path)).holder.run_id == "run-a"
    assert L.holder(str(tmp_path)) is None
    reliability.check(SECOND_WRITER)


# --- an S3 workdir ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bucket():
    with s3_server("locks"):
        yield "s3://locks"


def test_s3_a_held_workdir_is_refused_and_a_killed_holder_taken_over_at_once(bucket, reliability):
    url = f"{bucket}/killed"
    holder = start_holder(url)
    assert names(refused(url), holder)
    holder.send_signal(signal.SIGKILL)
    stop(holder)
    said = []
    lock = L.acquire(url, "next", say=said.append)
    assert "its process is gone" in said[0] and L.holder(url).run_id == "next"
    lock.release()
    assert not fsspec.filesystem("s3").exists(f"locks/killed/{L.LOCK_NAME}")
    reliability.check(SECOND_WRITER)
    reliability.fault("lock holder killed (SIGKILL)", S3)


def test_s3_a_live_holders_lease_is_renewed_and_not_taken(bucket, reliability):
    url = f"{bucket}/renewed"
    holder = start_holder(url, lease_s=1.5)
    try:
        first = L.holder(url).renewed
        deadline = time.monotonic() + 4  # more than two leases
        while time.monotonic() < deadline:
            refused(url)
            time.sleep(0.3)
        assert L.holder(url).renewed > first
    finally:
        stop(holder)
    reliability.check(SECOND_WRITER)  # once: how many polls were refused depends on timing


def test_s3_a_lease_not_renewed_is_taken_over_once_it_expires(bucket, reliability):
    """A holder stopped (SIGSTOP: alive, not renewing) loses its lease after ``lease_s``; resumed, it learns it."""
    url = f"{bucket}/expired"
    holder = start_holder(url, lease_s=1.5)
    try:
        holder.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        said: list[str] = []
        while True:
            try:
                lock = L.acquire(url, "next", say=said.append)
                break
            except L.WorkdirBusyError:
                assert time.monotonic() - stopped < 10
                time.sleep(0.1)
        assert time.monotonic() - stopped > 1.0  # not before the lease ran out (it was renewed at most 0.5 s ago)
        assert names(said[0], holder) and "its lease expired" in said[0]
        holder.send_signal(signal.SIGCONT)
        time.sleep(1.5)
        assert L.holder(url).run_id == "next"  # its renewal did not overwrite ours
        lock.release()
    finally:
        holder.send_signal(signal.SIGCONT)
        err = stop(holder)
    assert "was broken" in err
    reliability.check(SECOND_WRITER)  # once: how many polls were refused depends on timing
    reliability.fault("lock holder stopped (SIGSTOP) past its lease", S3)


def test_s3_of_two_runs_replacing_the_same_expired_record_one_wins(bucket, reliability):
    url = f"{bucket}/race"
    fs = fsspec.filesystem("s3")
    fs.pipe_file(f"locks/race/{L.LOCK_NAME}", elsewhere(renewed_s_ago=300).to_bytes())
    first, second = L.ObjectLockFile(url), L.ObjectLockFile(url)
    version, record = first._versioned()
    assert second._versioned()[0] == version and record.run_id == "remote-run"
    first._put(L.Record.mine("first", 120.0), version)
    with pytest.raises(OSError):
        second._put(L.Record.mine("second", 120.0), version)
    assert json.loads(fs.cat_file(f"locks/race/{L.LOCK_NAME}"))["run_id"] == "first"
    reliability.check(RACE_LOSER)
    with pytest.raises(FileExistsError):
        second._put(L.Record.mine("second", 120.0), None)  # nor can it create one over it
    reliability.check(RACE_LOSER)


def test_lease_from_the_environment(monkeypatch):
    monkeypatch.setenv(L.LEASE_ENV, "7.5")
    assert L.lease_seconds() == 7.5 and L.lease_seconds(2) == 2.0
    monkeypatch.delenv(L.LEASE_ENV)
    assert L.lease_seconds() == L.DEFAULT_LEASE_S
    assert os.environ.get(L.LEASE_ENV) is None
