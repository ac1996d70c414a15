"""A real Prefect server on loopback: ``prefect server start`` in a process of its own, with its own
``PREFECT_HOME`` (its SQLite database), reached through ``PREFECT_API_URL``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers.s3_server import free_port


@contextmanager
def prefect_server(home: Path, timeout: float = 180) -> Iterator[dict[str, str]]:
    """Start the server and yield the environment that reaches it; the server stops when the block ends."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_API_URL": ""}
    env.pop("PREFECT_API_URL")
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                             "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield {"PREFECT_API_URL": url, "PREFECT_HOME": str(home)}
    finally:
        stop_group(proc, signal.SIGTERM)
        log.close()


def stop_group(proc: subprocess.Popen, sig: int, timeout: float = 30) -> None:
    """Send ``sig`` to the process group ``proc`` leads (started with ``start_new_session``), and SIGKILL it if it
    has not ended within ``timeout`` seconds."""
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
