"""A local run (no RAY_ADDRESS) starts a Ray instance of its own: it never joins the cluster record a killed
`ray start` left behind on this machine (`<ray temp dir>/ray_current_cluster`, pointing at a dead address)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = """
import ray
from tasks.executors.ray_cluster import ensure_ray
ensure_ray(None, 1)
print("gcs", ray.get_runtime_context().gcs_address)
print("answer", ray.get(ray.remote(lambda: 41 + 1).remote()))
"""


def test_a_local_run_ignores_a_dead_clusters_record(reliability):
    system_temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths live below it
    try:
        (system_temp / "ray").mkdir()
        (system_temp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")  # a killed `ray start --head`'s
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                              timeout=240, env={**env, "RAY_TMPDIR": str(system_temp), "PYTHONPATH": str(ROOT)})
    finally:
        shutil.rmtree(system_temp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "answer 42" in proc.stdout and "gcs 127.0.0.1:1\n" not in proc.stdout
    reliability.fault("stale Ray cluster record of a killed `ray start`", "Ray executor (local run)")
