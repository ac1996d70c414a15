"""A real holder of a workdir's lock for the tests: another process that takes it through
``tasks.store.workdir_lock``, says so, and keeps it (renewing) for a while, then releases it and exits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SECOND_WRITER = "workdir lock: a second writer while a run holds it"
"""The reliability ledger's check (tests/conftest.py) for each refused writer, in the store's and the CLI's tests."""
SCRIPT = """
import sys, time
from tasks.store import workdir_lock as L
workdir, run_id, lease, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
lock = L.acquire(workdir, run_id, lease_s=lease)
print("held", flush=True)
time.sleep(seconds)
lock.release()
print("released", flush=True)
"""


def start_holder(workdir: str | Path, run_id: str = "holder", lease_s: float = 120.0, seconds: float = 600.0,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """The holder, once it holds the lock (its stderr: what it said, e.g. that its lock was broken)."""
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(workdir), run_id, str(lease_s), str(seconds)],
                            cwd=ROOT, env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line != "held\n":
        proc.kill()
        raise RuntimeError(f"the holder did not take the lock: {line!r} {proc.stderr.read()[-2000:]}")
    return proc


def stop(proc: subprocess.Popen) -> str:
    """End the holder (if it still runs) and return what it wrote to stderr."""
    if proc.poll() is None:
        proc.kill()
    _, err = proc.communicate(timeout=30)
    return err
