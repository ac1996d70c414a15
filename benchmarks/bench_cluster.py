"""Cluster-stage benchmark: two-level against flat spherical k-means, IVF against exact top-k assignment.

Builds, offline and deterministically, clustered unit vectors standing in for CLIP image embeddings:
a multi-scale Gaussian mixture on the sphere (``--groups`` broad topics, ``--modes`` sub-modes scattered
around them, rows scattered around the sub-modes in low-dimensional local subspaces; see
``clustered_vectors``). Then, in this process,
on the CPU (faiss-cpu, every OpenMP thread):

(1) ``fit_centers`` with ``method="flat"`` (faiss.Kmeans over all K) and ``method="two_level"`` (sqrt(K)
    coarse cells, centers allotted by cell size) at the same K, niter and sample: prints
    ``ratio_time_flat_vs_two_level`` (goal >= 3) and ``ratio_objective_two_level_vs_flat`` (the mean
    cosine of each row to its nearest center; goal >= 0.98);
(2) ``search_topk`` of every row over the flat centers, exact (IndexFlatIP) and IVF (IndexIVFFlat over
    the centers, default nlist and nprobe): prints ``recall_at_k`` (the share of exact top-k labels IVF
    also returns; goal >= 0.95) and ``ratio_assign_exact_vs_ivf`` (search time; goal >= 5), with the
    IVF build time apart, and the recall of other nprobe values;
(3) a two-level fit at K = ``--big-centers`` over ``--big-rows`` rows: its time, its objective and IVF's
    recall@k and speed against exact (over a seeded sample of BIG_OBJECTIVE_ROWS rows), and its cluster
    sizes (IVF top-1 of every row).

Each line holds ``cpu_per_wall``: on a shared machine, well under the core count means the cores were
busy elsewhere; the ``_cpu`` ratios compare CPU seconds instead, which such load disturbs less. The last
line is one JSON object of every figure.

    python benchmarks/bench_cluster.py [--rows N] [--dim D] [--centers K] [--modes M] [--row-spread S] [--niter I]
                                       [--big-rows N] [--big-dim D] [--big-centers K] [--skip-big] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.clustering import (  # noqa: E402
    DEFAULT_NPROBE,
    ClusterConfig,
    center_index,
    cluster_sizes,
    fit_centers,
    ivf_nlist,
    l2_normalize,
    search_topk,
    size_summary,
)

GOAL_TIME = 3.0
"""two_level at least 3x faster than flat k-means at the same K."""
GOAL_OBJECTIVE = 0.98
"""two_level's mean cosine at most 2% below flat's."""
GOAL_RECALL = 0.95
"""IVF recall@k of the exact top-k labels."""
GOAL_ASSIGN = 5.0
"""IVF search at least 5x faster than exact."""
TOP_K = 8
"""MLCD's multi-labels per sample."""
BIG_OBJECTIVE_ROWS = 50_000
"""rows of (3) searched exactly (and by IVF) for its objective and its IVF recall."""
QUICK = {"rows": 4000, "dim": 16, "centers": 64, "modes": 40, "big_rows": 6000, "big_dim": 16, "big_centers": 400}
"""--quick sizes (the smoke test)."""


def clustered_vectors(n: int, d: int, groups: int, modes: int, seed: int, mode_spread: float = 0.7,
                      row_spread: float = 0.5, local_dim: int = 8, bases: int = 64) -> np.ndarray:
    """n unit rows (n, d) float32 of a multi-scale mixture on the sphere with low local dimension, seeded.

    `groups` unit topic directions; `modes` sub-modes, each a topic plus isotropic Gaussian noise of norm
    ~mode_spread, renormalised; rows, each a uniformly drawn sub-mode plus Gaussian noise of norm
    ~row_spread spanning a `local_dim`-dimensional subspace (one of `bases` random ones, by mode), plus
    isotropic noise a tenth as large, renormalised. Embeddings are locally low-dimensional, so more
    centers keep lowering the k-means objective instead of meeting an isotropic noise floor.
    """
    rng = np.random.default_rng(seed)
    topics = l2_normalize(rng.standard_normal((groups, d)))
    centres = l2_normalize(topics[rng.integers(0, groups, modes)] + mode_spread / np.sqrt(d) *
                           rng.standard_normal((modes, d)).astype(np.float32))
    spans = np.linalg.qr(rng.standard_normal((bases, d, local_dim)))[0].transpose(0, 2, 1)  # (bases, r, d)
    spans = spans.astype(np.float32) * (row_spread / np.sqrt(local_dim))
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 1 << 18):  # chunks keep the temporaries small at 10^6 rows
        stop = min(start + (1 << 18), n)
        mode = rng.integers(0, modes, stop - start)
        z = rng.standard_normal((stop - start, local_dim)).astype(np.float32)
        local = np.einsum("nr,nrd->nd", z, spans[mode % bases])
        iso = (0.1 * row_spread / np.sqrt(d)) * rng.standard_normal((stop - start, d)).astype(np.float32)
        x[start:stop] = l2_normalize(centres[mode] + local + iso)
    return x


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process) of one call fn()."""
    cpu, start = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


def line(name: str, wall: float, cpu: float, **figures: float) -> None:
    extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"{name} seconds={wall:.2f} cpu_s={cpu:.1f} cpu_per_wall={cpu / max(wall, 1e-9):.2f} {extra}", flush=True)


def objective(x: np.ndarray, centers: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean cosine of each row to its nearest center, nearest center per row)."""
    labels, scores = search_topk(center_index(centers, ClusterConfig(num_centers=len(centers), top_k=1,
                                                                     gpu="never")), x, 1)
    return float(scores.mean(dtype=np.float64)), labels[:, 0]


def compare_kmeans(x: np.ndarray, cfg: ClusterConfig) -> tuple[dict[str, float], np.ndarray]:
    """(1): flat and two_level fits of x at cfg's K; figures and the flat centers."""
    runs = {}
    for method in ("flat", "two_level"):
        centers, wall, cpu = timed(lambda m=method: fit_centers(x, dataclasses.replace(cfg, method=m)))
        obj, labels = objective(x, centers)
        sizes = size_summary(cluster_sizes(labels, cfg.num_centers))
        line(f"kmeans_{method}", wall, cpu, objective=obj, empty=int(sizes["empty"]), imbalance=sizes["imbalance"])
        runs[method] = (centers, wall, obj, cpu)
    result = {"flat_s": runs["flat"][1], "two_level_s": runs["two_level"][1],
              "ratio_cpu_flat_vs_two_level": runs["flat"][3] / runs["two_level"][3],
              "flat_objective": runs["flat"][2], "two_level_objective": runs["two_level"][2],
              "ratio_time_flat_vs_two_level": runs["flat"][1] / runs["two_level"][1],
              "ratio_objective_two_level_vs_flat": runs["two_level"][2] / runs["flat"][2]}
    return result, runs["flat"][0]


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k labels of each row that `found` holds too."""
    return float((found[:, :, None] == exact[:, None, :]).any(axis=2).mean())


def compare_assign(x: np.ndarray, centers: np.ndarray, cfg: ClusterConfig) -> dict[str, float]:
    """(2): exact vs IVF top-k over the centers; build timed apart from search."""
    k = min(TOP_K, len(centers))
    exact_cfg = dataclasses.replace(cfg, num_centers=len(centers), top_k=k, assign="exact")
    ivf_cfg = dataclasses.replace(exact_cfg, assign="ivf")
    exact_index, _, _ = timed(lambda: center_index(centers, exact_cfg))
    (exact, _), exact_s, exact_cpu = timed(lambda: search_topk(exact_index, x, k))
    line("assign_exact", exact_s, exact_cpu, k=k)
    ivf, build_s, _ = timed(lambda: center_index(centers, ivf_cfg))
    (found, _), ivf_s, ivf_cpu = timed(lambda: search_topk(ivf, x, k))
    recall = recall_at_k(found, exact)
    line("assign_ivf", ivf_s, ivf_cpu, nlist=ivf_nlist(len(centers)), nprobe=ivf.index.nprobe,
         build_s=build_s, recall_at_k=recall)
    sweep = {}
    for nprobe in (4, 8, 16, 64):
        index = center_index(centers, dataclasses.replace(ivf_cfg, nprobe=nprobe))
        (other, _), wall, cpu = timed(lambda i=index: search_topk(i, x, k))
        sweep[f"recall_at_k_nprobe_{nprobe}"] = recall_at_k(other, exact)
        sweep[f"ratio_assign_exact_vs_ivf_nprobe_{nprobe}"] = exact_s / wall
        line(f"assign_ivf_nprobe_{nprobe}", wall, cpu, recall_at_k=sweep[f"recall_at_k_nprobe_{nprobe}"])
    return {"assign_exact_s": exact_s, "assign_ivf_s": ivf_s, "ivf_build_s": build_s, "recall_at_k": recall,
            "ratio_assign_exact_vs_ivf": exact_s / ivf_s, "ratio_assign_exact_vs_ivf_cpu": exact_cpu / ivf_cpu,
            "ratio_assign_exact_vs_ivf_with_build": exact_s / (ivf_s + build_s), **sweep}


def big_two_level(args: argparse.Namespace, cfg: ClusterConfig) -> dict[str, float]:
    """(3): two_level at --big-centers over --big-rows rows of --big-dim."""
    x = clustered_vectors(args.big_rows, args.big_dim, args.groups, args.big_modes or args.big_centers // 4,
                          args.seed + 1, row_spread=args.row_spread)
    big = dataclasses.replace(cfg, num_centers=args.big_centers, method="two_level")
    centers, wall, cpu = timed(lambda: fit_centers(x, big))
    # Exact search of all rows over 10^5 centers would outlast the fit: the objective and IVF's recall
    # are measured over a seeded sample, the cluster sizes come from IVF top-1 labels of every row.
    sample = x[np.random.default_rng(args.seed).choice(len(x), size=min(len(x), BIG_OBJECTIVE_ROWS), replace=False)]
    k = min(TOP_K, args.big_centers)
    exact_index = center_index(centers, dataclasses.replace(big, top_k=k))
    (exact, scores), exact_s, exact_cpu = timed(lambda: search_topk(exact_index, sample, k))
    ivf = center_index(centers, dataclasses.replace(big, top_k=k, assign="ivf"))
    (found, _), ivf_s, ivf_cpu = timed(lambda: search_topk(ivf, sample, k))
    obj, recall = float(scores[:, 0].mean(dtype=np.float64)), recall_at_k(found, exact)
    sizes = size_summary(cluster_sizes(search_topk(ivf, x, 1)[0][:, 0], args.big_centers))
    line("kmeans_two_level_big", wall, cpu, rows=args.big_rows, dim=args.big_dim, centers=args.big_centers,
         objective=obj, empty=int(sizes["empty"]), median_size=sizes["median"], max_size=sizes["max"])
    line("assign_ivf_big", ivf_s, ivf_cpu, rows=len(sample), nlist=ivf_nlist(args.big_centers),
         nprobe=ivf.index.nprobe, recall_at_k=recall, exact_s=exact_s, ratio_vs_exact=exact_s / ivf_s)
    return {"big_two_level_s": wall, "big_two_level_objective": obj, "big_empty_clusters": sizes["empty"],
            "big_imbalance": sizes["imbalance"], "big_recall_at_k": recall,
            "big_ratio_assign_exact_vs_ivf": exact_s / ivf_s, "big_ratio_assign_exact_vs_ivf_cpu": exact_cpu / ivf_cpu}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--centers", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=64, help="broad topics of the synthetic mixture")
    parser.add_argument("--modes", type=int, default=None, help="sub-modes (default centers / 4)")
    parser.add_argument("--row-spread", type=float, default=0.5,
                        help="noise norm of a row around its sub-mode (0.5: cosine ~0.9; 1.0: ~0.7)")
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--big-dim", type=int, default=64)
    parser.add_argument("--big-centers", type=int, default=100_000)
    parser.add_argument("--big-modes", type=int, default=None, help="sub-modes of (3) (default big centers / 4)")
    parser.add_argument("--skip-big", action="store_true", help="skip (3)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse(argv)
    cfg = ClusterConfig(num_centers=args.centers, niter=args.niter, seed=args.seed, gpu="never")
    x, wall, _ = timed(lambda: clustered_vectors(args.rows, args.dim, args.groups, args.modes or args.centers // 4,
                                                 args.seed, row_spread=args.row_spread))
    print(f"rows={args.rows} dim={args.dim} centers={args.centers} niter={args.niter} row_spread={args.row_spread} "
          f"prepared_s={wall:.1f} "
          f"cores={os.cpu_count()} load_avg_1m={os.getloadavg()[0]:.2f}", flush=True)
    result, flat_centers = compare_kmeans(x, cfg)
    result |= compare_assign(x, flat_centers, cfg)
    if not args.skip_big:
        result |= big_two_level(args, cfg)
    goals = {"ratio_time_flat_vs_two_level": GOAL_TIME, "ratio_objective_two_level_vs_flat": GOAL_OBJECTIVE,
             "recall_at_k": GOAL_RECALL, "ratio_assign_exact_vs_ivf": GOAL_ASSIGN}
    for name, goal in goals.items():
        print(f"{name}={result[name]:.3f} (goal >= {goal})")
    print(json.dumps({"bench": "cluster", "rows": args.rows, "dim": args.dim, "centers": args.centers,
                      "niter": args.niter, "row_spread": args.row_spread, "nprobe": DEFAULT_NPROBE, **result},
                     sort_keys=True))
    return result


if __name__ == "__main__":
    main()
