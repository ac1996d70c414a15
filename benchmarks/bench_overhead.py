"""Orchestration overhead: a fully cached rerun's wall time, and one stage through Prefect and an executor against
its library function in process.

1. Cached rerun. ``curaclip run`` on a workdir whose every stage is cached (the workdir is first filled by a
   normal run if it has no report yet; that run is not timed), as a user runs it: a new process, Prefect's
   temporary server (no ``PREFECT_API_URL``). Where the time goes: the same rerun against a Prefect server that is
   already running (``prefect server start``, started by this script) takes the temporary server's start out;
   ``python -c "import flows.pipeline"`` is the imports; the report's own ``seconds`` is the flow body (ten cache
   look-ups, the catalog and the report).
2. Stage overhead. The shard stage on the workdir's longcap artifact (forced, into a scratch workdir), in a Prefect
   flow, on the local executor and on the Ray executor (Ray started before the timing, as in a run where an
   earlier stage started it), against ``curation.sharding.write_shards`` on the same rows read in this process.
   Rounds interleave the three, so load changes hit each; the medians are compared.

    python benchmarks/bench_overhead.py [--workdir DIR] [--preset default|smoke] [--repeats R]

Goals (issue 14): the cached rerun under 15 s at the default size, the stage's overhead under 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLI = [sys.executable, "-m", "flows.cli"]


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started, proc.stdout


def start_prefect_server(home: Path) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                             "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    raise SystemExit("prefect server did not start")


def cached_rerun(workdir: Path, preset: str, repeats: int) -> dict:
    run = [*CLI, "run", "--workdir", str(workdir), "--preset", preset]
    if not (workdir / "report.json").exists():
        print(f"filling {workdir} with a first run (not timed) ...", flush=True)
        timed(run)
    imports = statistics.median(timed([sys.executable, "-c", "import flows.pipeline"])[0] for _ in range(repeats))
    temporary, body = [], []
    for _ in range(repeats):
        seconds, _ = timed(run)
        report = json.loads((workdir / "report.json").read_text())
        assert {s["status"] for s in report["stages"].values()} == {"cached"}, report["stages"]
        temporary.append(seconds)
        body.append(report["seconds"])
    home = Path(tempfile.mkdtemp(prefix="bench-prefect-"))
    server, url = start_prefect_server(home)
    try:
        running = [timed(run, {"PREFECT_API_URL": url})[0] for _ in range(repeats)]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    wall, warm = statistics.median(temporary), statistics.median(running)
    return {"cached_rerun_seconds": round(wall, 2), "with_running_server_seconds": round(warm, 2),
            "temporary_server_seconds": round(wall - warm, 2), "imports_seconds": round(imports, 2),
            "flow_body_seconds": round(statistics.median(body), 2),
            "rest_seconds": round(warm - imports - statistics.median(body), 2)}


def stage_overhead(workdir: Path, preset: str, repeats: int) -> dict:
    import pyarrow.parquet as pq
    from prefect import flow

    from curation.sharding import write_shards
    from flows.config import load_config
    from flows.presets import preset_overrides
    from tasks.executors.ray_cluster import ensure_ray
    from tasks.stages import shard as shard_stage
    from tasks.stages.common import RunContext, parts_of
    from tasks.store.artifacts import ArtifactStore

    cfg = load_config(None, list(preset_overrides(preset)))
    report = json.loads((workdir / "report.json").read_text())
    upstream = ArtifactStore(str(workdir)).ref("longcap", report["stages"]["longcap"]["key"], status="cached")
    scratch = Path(tempfile.mkdtemp(prefix="bench-overhead-"))

    @flow(persist_result=False, validate_parameters=False)  # pydantic cannot see RunContext, imported in here
    def one_stage(ctx: RunContext):
        return shard_stage.shard(ctx, cfg.shard, upstream)

    def through(executor: str) -> float:
        ctx = RunContext(workdir=str(scratch / executor), run_id="bench", force=frozenset({"shard"}),
                         executor=executor)
        started = time.perf_counter()
        one_stage(ctx)
        return time.perf_counter() - started

    def library() -> float:
        out = scratch / "library"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        started = time.perf_counter()
        table = pq.ParquetDataset(parts_of(upstream)).read()
        write_shards(table, str(out), cfg.shard)
        return time.perf_counter() - started

    ensure_ray(None, 2)
    through("ray")  # warm: the Ray workers and the flow engine
    through("local")
    times: dict[str, list[float]] = {"library": [], "local": [], "ray": []}
    for _ in range(repeats):
        times["library"].append(library())
        times["local"].append(through("local"))
        times["ray"].append(through("ray"))
    shutil.rmtree(scratch, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"samples": upstream.counts.get("rows_out"), "library_seconds": round(med["library"], 3),
            "stage_local_seconds": round(med["local"], 3), "stage_ray_seconds": round(med["ray"], 3),
            "overhead_local": round(med["local"] / med["library"] - 1, 3),
            "overhead_ray": round(med["ray"] / med["library"] - 1, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "default"))
    parser.add_argument("--preset", default="default")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    print(json.dumps({"preset": args.preset, **cached_rerun(workdir, args.preset, args.repeats)}), flush=True)
    print(json.dumps({"stage": "shard", **stage_overhead(workdir, args.preset, args.repeats)}), flush=True)
    print(json.dumps({"load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
