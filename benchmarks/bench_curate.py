"""Curate-stage scaling benchmark: the MetaCLIP curate work on one Ray worker against two.

Builds the same web-like alt-texts and MetaCLIP-style metadata as ``bench_matching.py`` (offline,
deterministic; default 100,000 texts and 300,000 entries), writes them as P Parquet parts of a
filtered pool (``uid``, ``text``, ``image_sha256``, ``width``, ``height``, and with ``--image-bytes``
a stand-in image payload the stage must copy), then runs the curate stage's per-partition work
exactly as ``tasks.stages.curate`` fans it out (the Ray executor, ``tasks.executors.ray_tasks.RayExecutor``,
over ``curation.partitions.MatchPart`` units, entry counts summed in the driver, ``entry_probs``, then over
``BalancePart`` units: match + count + balance + write) on a local two-CPU Ray cluster,
with one CPU and then two free for its tasks (for one, a sleeping task holds the other CPU, so the
same two warm worker processes serve both timings). Ray start-up and worker warm-up are not timed;
rounds interleave the two timings so load changes hit both.

It checks that one worker, two workers and a one-process, one-partition reference (bench_matching's
``curate_once``) keep the identical set of uids, and prints the seconds of each pass, the CPU
seconds the Ray tasks used (``cpu_per_wall`` well under the worker count means the cores were busy
elsewhere), the load average, and ``ratio_two_vs_one_worker`` (issue 3's goal: >= 1.7). For
scale it also prints ``stage_1_worker_over_match_batch``: the one-worker stage against one
``EntryMatcher.match_batch`` call over all texts in this process.

    python benchmarks/bench_curate.py [--texts N] [--entries M] [--parts P] [--repeats R] [--t T]
                                      [--image-bytes B] [--small]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
from bench_matching import curate_once, make_inputs  # noqa: E402  (its import pins BLAS threads to 1)

from curation import partitions as P  # noqa: E402
from curation.balancing import entry_probs  # noqa: E402
from curation.matching import EntryMatcher  # noqa: E402
from tasks.executors.base import Resources  # noqa: E402
from tasks.executors.ray_cluster import ensure_ray  # noqa: E402
from tasks.executors.ray_tasks import RayExecutor  # noqa: E402

GOAL_TWO_VS_ONE = 1.7
"""issue 3: two Ray workers at least 1.7x one."""
SMALL = {"texts": 3000, "entries": 10_000, "parts": 4, "repeats": 1}
"""--small: a smoke-test size (seconds, not a measurement)."""


def write_pool(root: Path, texts: Sequence[str], parts: int, image_bytes: int) -> tuple[list[str], list[str]]:
    """(part paths, uids): the texts as `parts` Parquet parts of a filtered pool, one row group each."""
    rng = np.random.default_rng(1)
    n = len(texts)
    uids = [f"{i:09d}" for i in range(n)]
    bounds = np.linspace(0, n, parts + 1).astype(int)
    paths = []
    for i in range(parts):
        a, b = int(bounds[i]), int(bounds[i + 1])
        columns = {"uid": uids[a:b], "text": list(texts[a:b]),
                   "image_sha256": [f"{j:064x}" for j in range(a, b)],
                   "width": pa.array(rng.integers(64, 1024, b - a), pa.int32()),
                   "height": pa.array(rng.integers(64, 1024, b - a), pa.int32())}
        if image_bytes:
            payload = rng.integers(0, 256, (b - a) * image_bytes, dtype=np.uint8).tobytes()
            columns["image"] = [payload[k * image_bytes:(k + 1) * image_bytes] for k in range(b - a)]
        paths.append(str(root / "pool" / P.part_name(i)))
        P.write_table(pa.table(columns), paths[-1])
    return paths, uids


@dataclass(frozen=True)
class TimedMatch(P.MatchPart):
    """The stage's match unit, also returning the CPU seconds of its worker process (threads included)."""

    def run(self) -> dict:
        start = time.process_time()
        return {**super().run(), "cpu_s": time.process_time() - start}


@dataclass(frozen=True)
class TimedBalance(P.BalancePart):
    """The stage's balance unit, also returning the CPU seconds of its worker process (threads included)."""

    def run(self) -> dict:
        start = time.process_time()
        return {**super().run(), "cpu_s": time.process_time() - start}


def curate_parts(parts: Sequence[str], entries: Sequence[str], t: int, seed: int, out: Path) -> dict[str, float]:
    """tasks.stages.curate's fan-out on the Ray cluster: match pass, count sum, balance pass.

    Returns the wall seconds of each pass and the CPU seconds its Ray tasks used."""
    executor, one_cpu = RayExecutor(), Resources()
    start = time.perf_counter()
    matcher = EntryMatcher(entries)  # as the stage does: built once in the driver, shared by every unit
    units = [TimedMatch(p, matcher, str(out / "matched" / P.part_name(i)), str(out / "counts" / f"{i}.npy"))
             for i, p in enumerate(parts)]
    matched = [r for _, r in executor.map(units, one_cpu)]
    probs = entry_probs(np.sum([np.load(u.counts) for u in units], axis=0), t)
    middle = time.perf_counter()
    units = [TimedBalance(p, str(out / "matched" / P.part_name(i)), probs, seed, str(out / "parts" / P.part_name(i)),
                          str(out / "filtered" / P.part_name(i)), str(out / "after" / f"{i}.npy"))
             for i, p in enumerate(parts)]
    balanced = [r for _, r in executor.map(units, one_cpu)]
    np.sum([np.load(u.counts_after) for u in units], axis=0)  # the stage's after-balancing entry counts
    end = time.perf_counter()
    return {"seconds": end - start, "match_pass_s": middle - start, "balance_pass_s": end - middle,
            "task_cpu_s": sum(r["cpu_s"] for r in matched + balanced)}


def kept_uids(folder: Path) -> list[str]:
    """Sorted uids of every kept part in a folder."""
    return sorted(uid for path in P.list_parts(folder) for uid in P.read_table(path, ["uid"]).column("uid").to_pylist())


def check_kept(kept: dict[int, list[str]], reference: list[str]) -> None:
    """Raise unless every worker count kept exactly the reference's sorted uids."""
    for workers, uids_kept in kept.items():
        if uids_kept != reference:
            raise AssertionError(f"{workers} worker(s) kept {len(uids_kept)} uids, the one-process reference "
                                 f"{len(reference)}: not the same set")


def _warm(seconds: float) -> int:
    """Hold a worker briefly (so each worker gets one) after importing what the curate tasks import."""
    import curation.partitions  # noqa: F401  (the import is the warm-up)
    time.sleep(seconds)
    return os.getpid()


def _hold(started: str, release: str, limit_s: float) -> int:
    """Occupy one Ray CPU, asleep, from creating `started` until `release` exists (or limit_s passes)."""
    Path(started).touch()
    deadline = time.monotonic() + limit_s
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.getpid()


def start_ray(num_cpus: int) -> None:
    """A fresh local Ray cluster of num_cpus CPUs, both workers warm."""
    ray.shutdown()
    ensure_ray(None, num_cpus)
    if __name__ != "__main__":  # imported (the smoke test): Ray workers cannot import this file by name
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.get([ray.remote(num_cpus=1)(_warm).remote(0.3) for _ in range(num_cpus)])


def time_workers(workers: int, parts: Sequence[str], entries: Sequence[str], t: int, seed: int, out: Path
                 ) -> dict[str, float]:
    """curate_parts into a fresh `out` with `workers` of the cluster's CPUs free for its tasks."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    flags = (str(out / "hold-started"), str(out / "hold-release"))
    hold = None
    if workers < ray.cluster_resources().get("CPU", 0):
        hold = ray.remote(num_cpus=1)(_hold).remote(*flags, 3600.0)
        while not os.path.exists(flags[0]):
            time.sleep(0.01)
    try:
        return curate_parts(parts, entries, t, seed, out)
    finally:
        Path(flags[1]).touch()
        if hold is not None:
            ray.get(hold)


def load() -> str:
    return "load_avg_1m_5m_15m=" + ",".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=100_000, help="captions in the pool")
    parser.add_argument("--entries", type=int, default=300_000, help="metadata entries")
    parser.add_argument("--parts", type=int, default=8, help="Parquet parts (the ingest stage's default: 8)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the fastest of each worker count counts")
    parser.add_argument("--t", type=int, default=20, help="balancing threshold")
    parser.add_argument("--seed", type=int, default=0, help="seed of the keep decisions")
    parser.add_argument("--image-bytes", type=int, default=0, help="bytes of stand-in image payload per row")
    parser.add_argument("--small", action="store_true", help="smoke-test size: " + str(SMALL))
    args = parser.parse_args(argv)
    if args.small:
        vars(args).update(SMALL)
    return args


def run_rounds(args: argparse.Namespace, parts: Sequence[str], entries: Sequence[str], root: Path
               ) -> tuple[dict[int, list[dict[str, float]]], dict[int, list[str]]]:
    """Every round's figures per worker count, and each worker count's kept uids (of its last round)."""
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    kept: dict[int, list[str]] = {}
    for repeat in range(args.repeats):
        for workers in runs:
            runs[workers].append(time_workers(workers, parts, entries, args.t, args.seed, root / f"run-{workers}"))
            kept[workers] = kept_uids(root / f"run-{workers}" / "parts")
        print(f"round={repeat} " + " ".join(f"workers_{w}_s={r[-1]['seconds']:.3f}" for w, r in runs.items()),
              load(), flush=True)
    return runs, kept


def reference_kept(texts: Sequence[str], uids: list[str], matcher: EntryMatcher, args: argparse.Namespace,
                   root: Path) -> tuple[list[str], float]:
    """(kept uids of bench_matching's one-process, one-partition curate, seconds of one match_batch)."""
    assert args.seed == 0, "curate_once keeps with seed 0"
    curate_once(matcher, uids, list(texts), args.t, str(root / "reference.parquet"))
    start = time.perf_counter()
    matcher.match_batch(texts)
    match_s = time.perf_counter() - start
    return sorted(pq.read_table(root / "reference.parquet", columns=["uid"]).column("uid").to_pylist()), match_s


def report(runs: dict[int, list[dict[str, float]]], match_s: float, kept: int, n: int) -> dict[str, float]:
    """Print the best round of each worker count and the ratios; return the ratios."""
    best = {w: min(r, key=lambda x: x["seconds"]) for w, r in runs.items()}
    for workers, figures in best.items():
        print(f"curate_stage_{workers}_worker texts_per_s={n / figures['seconds']:.0f} "
              + " ".join(f"{k}={v:.3f}" for k, v in figures.items())
              + f" cpu_per_wall={figures['task_cpu_s'] / figures['seconds']:.2f}")
    result = {"ratio_two_vs_one_worker": best[1]["seconds"] / best[2]["seconds"],
              "ratio_two_vs_one_worker_match_pass": best[1]["match_pass_s"] / best[2]["match_pass_s"],
              "ratio_two_vs_one_worker_balance_pass": best[1]["balance_pass_s"] / best[2]["balance_pass_s"],
              "stage_1_worker_over_match_batch": best[1]["seconds"] / match_s,
              "kept": kept}
    print(f"kept={kept} of {n} (identical for 1 worker, 2 workers and the one-process reference)")
    for name, value in result.items():
        goal = f" (goal >= {GOAL_TWO_VS_ONE})" if name == "ratio_two_vs_one_worker" else ""
        if name != "kept":
            print(f"{name}={value:.2f}{goal}")
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_curate-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        texts, entries = make_inputs(args.texts, args.entries)
        parts, uids = write_pool(root, texts, args.parts, args.image_bytes)
        matcher = EntryMatcher(entries)
        reference, match_s = reference_kept(texts, uids, matcher, args, root)
        print(f"texts={len(texts)} entries={len(entries)} parts={args.parts} t={args.t} "
              f"image_bytes={args.image_bytes} prepared_s={time.perf_counter() - started:.1f} {load()}", flush=True)
        start_ray(2)
        try:
            runs, kept = run_rounds(args, parts, entries, root)
        finally:
            ray.shutdown()
    check_kept(kept, reference)
    return report(runs, match_s, len(reference), len(texts))


if __name__ == "__main__":
    main()
