"""A real small filesystem for the disk-full tests (issue 15): a size-limited tmpfs mounted for the test, and a
ballast file that fills it to a chosen free space. Mounting needs root (CAP_SYS_ADMIN): without it the test is
skipped, saying so."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DISK_FULL = "disk full (size-limited tmpfs)"
"""The reliability ledger's fault (tests/conftest.py) for a write these filesystems stop."""


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's spelling: ``4m``) at ``path``, unmounted however the test ends."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root; this test fills a real filesystem")
    mounted = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def resize(path: Path, size: str) -> None:
    """Grow (or shrink, down to what is used) the tmpfs at ``path``."""
    done = _mount("-o", f"remount,size={size}", str(path))
    assert done.returncode == 0, done.stderr


def fill(path: Path, leave: int) -> Path:
    """A ballast file under ``path`` taking all its free space but about ``leave`` bytes."""
    ballast = path / "ballast"
    with open(ballast, "wb", buffering=0) as handle:  # unbuffered: the close has nothing left to fail on
        try:
            while True:
                handle.write(b"\0" * (1 << 16))
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
    os.truncate(ballast, max(0, ballast.stat().st_size - leave))
    return ballast
