"""Caption-backend throughput: the rewrite stage's worker on the `openai` backend against a loopback
OpenAI-compatible server with a fixed per-request latency.

The server (tests/servers/openai_server.py) answers every request after ``--latency`` seconds, so a client that
keeps ``--concurrency`` requests in flight can do at best concurrency / latency requests a second. The benchmark
runs :class:`curation.captions.runner.Rewriter` (LaCLIP prompts, the answer cache, cleaning: the stage's whole
per-part work) over captions asking ``--requests`` rewrites in all, then, as a reference in the same process, a
bare thread pool posting the same bodies with httpx and nothing else. It prints:

- ``in_flight_share``: requests in flight on average (measured by the server, between the first arrival and
  the last answer) over the configured concurrency; issue 10's goal >= 0.9;
- ``throughput_share``: requests a second over concurrency / latency; goal >= 0.9;
- ``stage_over_bare_pool``: the stage's requests a second over the bare pool's.

    python benchmarks/bench_captions.py [--requests N] [--latency S] [--concurrency C] [--small]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import pyarrow as pa  # noqa: E402

from curation.captions import OpenAIConfig, RewriteConfig  # noqa: E402
from curation.captions.runner import Rewriter  # noqa: E402
from tests.servers.openai_server import OpenAICompatibleServer  # noqa: E402

GOAL = 0.9
"""issue 10: in flight >= 90% of the concurrency on average, throughput >= 90% of concurrency / latency."""
SUBJECTS = ("red star", "small dog", "blue car", "old bridge", "two cups", "green kite", "wooden chair", "tall tree")
PLACES = ("on grass", "by the river", "on a table", "in the snow", "at night", "near a wall")


def captions(n: int) -> list[str]:
    return [f"a {SUBJECTS[i % len(SUBJECTS)]} {PLACES[(i // len(SUBJECTS)) % len(PLACES)]} number {i}"
            for i in range(n)]


def run_stage(server: OpenAICompatibleServer, n_captions: int, k: int, concurrency: int, cache: str) -> dict:
    cfg = RewriteConfig(backend="openai", k=k, progress=False,
                        openai=OpenAIConfig(base_url=server.url, model="bench-llm", concurrency=concurrency,
                                            timeout_s=30, max_retries=0))
    table = pa.table({"uid": [f"u{i}" for i in range(n_captions)], "text": captions(n_captions)})
    worker = Rewriter(cfg, cache)
    started = time.perf_counter()
    _, tally = worker.rewrite_table(table, seed=0)
    seconds = time.perf_counter() - started
    worker.close()
    if tally.failed or tally.sent != n_captions * k:
        raise RuntimeError(f"the benchmark's requests failed: {tally.as_dict()}")
    return {"seconds": seconds, "requests": tally.sent, "in_flight": server.in_flight_average()}


def run_bare_pool(server: OpenAICompatibleServer, bodies: list[dict], concurrency: int) -> dict:
    """The reference: the same bodies posted by a plain thread pool over one httpx client."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=server.url + "/", limits=limits, timeout=30) as client, \
            ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        responses = list(pool.map(lambda body: client.post("chat/completions", json=body).status_code, bodies))
        seconds = time.perf_counter() - started
    if set(responses) != {200}:
        raise RuntimeError(f"bare pool: statuses {sorted(set(responses))}")
    return {"seconds": seconds, "requests": len(bodies), "in_flight": server.in_flight_average()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1280, help="rewrites asked in all (k=4 per caption)")
    parser.add_argument("--latency", type=float, default=0.2, help="the server's seconds per request")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--small", action="store_true", help="a few seconds: 128 requests at 50 ms, concurrency 8")
    args = parser.parse_args(argv)
    if args.small:
        args.requests, args.latency, args.concurrency = 128, 0.05, 8
    k = 4
    n_captions = max(1, args.requests // k)
    with tempfile.TemporaryDirectory() as tmp, OpenAICompatibleServer(latency_s=args.latency) as server:
        stage = run_stage(server, n_captions, k, args.concurrency, tmp)
        bodies = [entry["body"] for entry in server.log]
        server.log.clear()
        bare = run_bare_pool(server, bodies, args.concurrency)
    bound = args.concurrency / args.latency
    rate = stage["requests"] / stage["seconds"]
    result = {
        "requests": stage["requests"], "latency_s": args.latency, "concurrency": args.concurrency,
        "stage_seconds": round(stage["seconds"], 3), "stage_requests_per_s": round(rate, 2),
        "bound_requests_per_s": round(bound, 2), "bare_pool_seconds": round(bare["seconds"], 3),
        "in_flight_average": round(stage["in_flight"], 2),
        "in_flight_share": round(stage["in_flight"] / args.concurrency, 3),
        "throughput_share": round(rate / bound, 3),
        "stage_over_bare_pool": round(rate / (bare["requests"] / bare["seconds"]), 3),
    }
    print(json.dumps(result, indent=1))
    for name in ("in_flight_share", "throughput_share"):
        print(f"{name}: {result[name]:.3f} (goal >= {GOAL})")
    return result


if __name__ == "__main__":
    main()
