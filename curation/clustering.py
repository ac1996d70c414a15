"""Spherical k-means centers and top-k multi-labels for the `cluster` stage.

Method: MLCD, "Multi-label Cluster Discrimination for Visual Representation Learning"
(An et al., ECCV 2024). Image embeddings are clustered into K centers (K = one million at
full scale, over ~10^9 LAION/COYO images); each sample keeps its `top_k` = 8 nearest centers
as multi-labels, which the MLCD loss then discriminates against the other centers.

Scale. Flat k-means costs N_train * K * D multiply-adds per iteration; at K = 10^6 even the
faiss default subsample (K * 256 points) is 2.6e8 points, i.e. ~10^17 flops per iteration in
D = 512. Two ways down, both here:

* `method="two_level"`: coarse k-means into ~sqrt(K) cells, then k-means inside each cell with
  centers allotted by cell size (the scheme of faiss's `faiss.contrib.clustering.
  two_level_clustering`, re-implemented here). Each point meets ~sqrt(K) + K/sqrt(K) centers
  instead of K: ~sqrt(K)/2 times less work. bench_cluster.py, K = 10^4 over 200k x 128 on two CPU
  cores: 14x faster than flat (17.6x in CPU seconds) at 0.9999x its objective (mean cosine).
* `sample_size` / `max_points_per_centroid`: k-means trains on a seeded, stratified sample of
  rows chosen from the parts' row counts alone (`sample_rows`), so a driver reads only those.

Assignment (`center_index` + `search_topk`) is exact (a flat inner-product index) or an
`IndexIVFFlat` over the centers, trained on the centers themselves, which probes `nprobe` of
`nlist` cells: at K = 10^6 (nlist 4000, ~250 centers a cell, nprobe 32) it scores ~12,000
centers per sample instead of 10^6.

GPU and CPU. `gpu="auto"` uses every GPU faiss sees (`faiss.get_num_gpus()`; install
faiss-gpu-cu12 via `pip install 'curaclip[gpu]'`), else the CPU (faiss-cpu, all OpenMP threads).
On GPUs, k-means shards its centroid index over all GPUs (GpuMultipleClonerOptions.shard: each
GPU holds K / ngpu centroids and scores every training row against them); the assignment indices are
replicated (each GPU holds all centers, the queries are split). `fp16=True` stores GPU flat
indices in float16 (GpuClonerOptions.useFloat16) and IVF coarse quantizers in float16
(useFloat16CoarseQuantizer); IVF lists stay float32, as faiss's GpuIndexIVFFlat cloner does not
honour useFloat16 in every release. The CPU paths ignore fp16. Only the CPU paths are tested
everywhere; the GPU tests run where faiss sees a GPU.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

DEFAULT_NPROBE = 32
"""IVF cells probed per query (of nlist = 4 sqrt(K)). Recall@8 vs exact, measured: bench_cluster.py's mixture,
K = 10^4: 1.000 at 8.9x the exact search's speed (5.2x in CPU seconds; nprobe 16: 1.000, 8: 0.9995, 4: 0.976),
K = 10^5: 1.000 at 11.9x; diffuse Gaussian blobs in 32-d, K = 10^4: 0.982 (nprobe 16: 0.933); isotropic random
vectors in 64-d (no structure, IVF's worst case): 0.83 (0.93 needs nprobe 64)."""
COARSE_MAX_POINTS_PER_CENTROID = 2000
"""training points per coarse cell of two_level (faiss.contrib.clustering.two_level_clustering uses 2000)."""


@dataclass(frozen=True)
class ClusterConfig:
    """Configuration of the `cluster` stage (MLCD multi-labels)."""

    num_centers: int = 64
    """k-means centers K (MLCD uses one million at full scale, on GPUs with faiss)."""
    top_k: int = 8
    """nearest centers kept per sample as its multi-labels (MLCD's positive set; the paper uses 8)."""
    method: Literal["auto", "flat", "two_level"] = "auto"
    """k-means: "flat" (faiss.Kmeans over all K), "two_level" (~sqrt(K) coarse cells, then k-means per cell), or
    "auto": two_level from TWO_LEVEL_FROM centers on, flat below."""
    coarse_cells: int | None = None
    """two_level coarse cells; None: int(sqrt(K)), as faiss.contrib.clustering.train_ivf_index_with_2level."""
    niter: int = 20
    """k-means iterations, at each level (faiss default is 25; 20 converges on normalised CLIP embeddings)."""
    nredo: int = 1
    """k-means restarts, the best objective kept (faiss ClusteringParameters.nredo)."""
    seed: int = 0
    """seed of the training sample, the k-means initialisations and the IVF quantizer."""
    gpu: Literal["auto", "never", "always"] = "auto"
    """faiss device: "auto" (GPU when faiss.get_num_gpus() > 0), "never", or "always" (error without one)."""
    fp16: bool = False
    """GPU only: flat indices (k-means, exact assignment) and IVF coarse quantizers stored in float16."""
    max_points_per_centroid: int = 256
    """training sample per center (faiss default): k-means sees at most K * this many rows."""
    sample_size: int | None = None
    """further cap on the training rows (None: only K * max_points_per_centroid); must be >= K."""
    assign: Literal["exact", "ivf"] = "exact"
    """top-k search over the centers: "exact" (flat inner product) or "ivf" (IndexIVFFlat over the centers)."""
    nlist: int | None = None
    """IVF cells over the centers; None: round(4 * sqrt(K)), capped at K (see ivf_nlist)."""
    nprobe: int = DEFAULT_NPROBE
    """IVF cells probed per query (capped at nlist); recall@8 >= 0.95 on clustered data (see DEFAULT_NPROBE)."""
    neighbours: int = 3
    """image nearest neighbours kept per sample (in its top-1 cluster), for NegCLIP's hard-negative images: it
    draws among the 3 nearest, so 3 by default (0: off)."""


ASSIGNERS = ("exact", "ivf")
"""ClusterConfig.assign values."""


def check_config(cfg: ClusterConfig) -> None:
    """Raise ValueError on a config no fit or assignment can run with."""
    if cfg.method not in (*FIT_METHODS, "auto"):
        raise ValueError(f"unknown cluster method {cfg.method!r}; expected one of {['auto', *FIT_METHODS]}")
    if cfg.assign not in ASSIGNERS:
        raise ValueError(f"unknown assign {cfg.assign!r}; expected one of {list(ASSIGNERS)}")
    if cfg.num_centers < 1 or cfg.top_k < 1:  # top_k <= K is checked where labels are searched
        raise ValueError(f"need num_centers >= 1 and top_k >= 1, got {cfg.num_centers} and {cfg.top_k}")
    if cfg.sample_size is not None and cfg.sample_size < cfg.num_centers:
        raise ValueError(f"sample_size={cfg.sample_size} < num_centers={cfg.num_centers}")
    if cfg.nprobe < 1 or (cfg.nlist is not None and cfg.nlist < 1) or cfg.neighbours < 0:
        raise ValueError(f"need nprobe >= 1, nlist >= 1 and neighbours >= 0 (got {cfg.nprobe}, {cfg.nlist}, "
                         f"{cfg.neighbours})")


# --- devices ------------------------------------------------------------------------------------

def _gpu_auto() -> bool:
    return faiss.get_num_gpus() > 0


def _gpu_always() -> bool:
    if faiss.get_num_gpus() == 0:
        raise RuntimeError('ClusterConfig.gpu="always" but faiss sees no GPU (install faiss-gpu-cu12)')
    return True


GPU_MODES = {"auto": _gpu_auto, "never": lambda: False, "always": _gpu_always}
"""How ClusterConfig.gpu decides whether faiss runs on GPUs."""


def use_gpu(mode: str) -> bool:
    """Resolve a ClusterConfig.gpu mode to a yes/no for this machine."""
    if mode not in GPU_MODES:
        raise ValueError(f"unknown gpu mode {mode!r}; expected one of {sorted(GPU_MODES)}")
    return GPU_MODES[mode]()


@functools.lru_cache(maxsize=1)
def _gpu_resources() -> tuple:
    """One StandardGpuResources per visible GPU, made once per process (each reserves scratch memory)."""
    return tuple(faiss.StandardGpuResources() for _ in range(faiss.get_num_gpus()))


def to_gpus(index: faiss.Index, fp16: bool, shard: bool) -> faiss.Index:
    """A CPU index cloned onto every visible GPU: sharded (rows split) or replicated (queries split).

    fp16 sets useFloat16 (flat storage) and useFloat16CoarseQuantizer (IVF quantizer); IVF lists stay
    float32 (faiss's IVFFlat cloner ignores or rejects useFloat16 depending on the release).
    """
    co = faiss.GpuMultipleClonerOptions()
    co.shard = shard
    co.useFloat16 = fp16 and not isinstance(index, faiss.IndexIVF)
    co.useFloat16CoarseQuantizer = fp16
    return faiss.index_cpu_to_gpu_multiple_py(list(_gpu_resources()), index, co)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as contiguous float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


# --- training sample ----------------------------------------------------------------------------

def proportional_split(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split `total` over groups in proportion to `sizes`, summing exactly to `total`.

    The rule of faiss.contrib.clustering.two_level_clustering (rebalance=True): group c gets
    floor(S_c * total / S) - floor(S_{c-1} * total / S), S_c the cumulative size. When total <= S no
    group gets more than its size (the floors of a difference <= size differ by <= size).
    """
    cumulative = np.cumsum(np.asarray(sizes, dtype=np.int64))
    if len(cumulative) == 0 or cumulative[-1] == 0:
        raise ValueError("cannot split over groups that are all empty")
    # Python ints: S_c * total overflows int64 at S ~ 10^9 rows and total ~ 10^10.
    bounds = np.array([int(s) * int(total) // int(cumulative[-1]) for s in cumulative], dtype=np.int64)
    return np.diff(bounds, prepend=0)


def training_sample_size(total_rows: int, cfg: ClusterConfig) -> int:
    """Rows k-means trains on: all, capped at K * max_points_per_centroid and at sample_size."""
    cap = cfg.num_centers * cfg.max_points_per_centroid
    if cfg.sample_size is not None:
        cap = min(cap, cfg.sample_size)
    return min(int(total_rows), cap)


def sample_rows(part_rows: Sequence[int], cfg: ClusterConfig) -> list[np.ndarray]:
    """Training rows per part: sorted local row indices (int64), seeded, from the row counts alone.

    Stratified: part i gives its proportional share (proportional_split) of training_sample_size rows,
    drawn without replacement by a generator seeded with (cfg.seed, i), so any worker can compute one
    part's rows, and reading only those rows reproduces the sample. All rows when under the cap.
    """
    sizes = np.asarray(part_rows, dtype=np.int64)
    want = training_sample_size(int(sizes.sum()), cfg)
    if want == int(sizes.sum()):
        return [np.arange(n, dtype=np.int64) for n in sizes]
    shares = proportional_split(sizes, want)
    return [np.sort(np.random.default_rng([cfg.seed, i]).choice(int(n), size=int(m), replace=False))
            for i, (n, m) in enumerate(zip(sizes, shares))]


# --- k-means ------------------------------------------------------------------------------------

def _kmeans(x: np.ndarray, k: int, cfg: ClusterConfig, seed: int, max_points_per_centroid: int,
            gpu: bool) -> np.ndarray:
    """faiss spherical k-means of unit rows x (n, D) into k centers (k, D), unit rows.

    On GPUs the assignment index is our own (sharded over every GPU, float16 when cfg.fp16), set as
    Kmeans.index before train(), since Kmeans(gpu=True) would clone a float32 replica per GPU.
    """
    kmeans = faiss.Kmeans(
        x.shape[1], k, niter=cfg.niter, nredo=cfg.nredo, seed=seed,
        spherical=True,  # cosine geometry, as MLCD clusters normalised CLIP features
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,  # small cells of two_level are expected: no faiss warning for them
        verbose=False,
    )
    if gpu:
        kmeans.index = to_gpus(faiss.IndexFlatIP(x.shape[1]), cfg.fp16, shard=True)
    kmeans.train(x)
    return l2_normalize(kmeans.centroids)  # (k, D)


def fit_flat(x: np.ndarray, cfg: ClusterConfig) -> np.ndarray:
    """Flat spherical k-means (faiss.Kmeans) of unit rows x (n, D): (K, D) unit centers."""
    return _kmeans(x, cfg.num_centers, cfg, cfg.seed, cfg.max_points_per_centroid, use_gpu(cfg.gpu))


def coarse_cell_count(cfg: ClusterConfig) -> int:
    """two_level's first level: cfg.coarse_cells, else int(sqrt(K)) (faiss's train_ivf_index_with_2level)."""
    cells = cfg.coarse_cells if cfg.coarse_cells is not None else int(math.isqrt(cfg.num_centers))
    return max(1, min(cells, cfg.num_centers))


def _cell_centers(x_cell: np.ndarray, k: int, cfg: ClusterConfig, seed: int, gpu: bool) -> np.ndarray:
    """k centers of one coarse cell's unit rows (n_c, D); the rows themselves when n_c == k."""
    if k == 0:
        return np.zeros((0, x_cell.shape[1]), np.float32)
    if len(x_cell) < k:  # proportional_split allots at most n_c when K <= N, which fit_centers checks
        raise AssertionError(f"a cell of {len(x_cell)} rows was allotted {k} centers")
    if len(x_cell) == k:  # k-means would return the rows themselves
        return l2_normalize(x_cell)
    return _kmeans(x_cell, k, cfg, seed, cfg.max_points_per_centroid, gpu)


def fit_two_level(x: np.ndarray, cfg: ClusterConfig) -> np.ndarray:
    """Two-level spherical k-means of unit rows x (n, D): (K, D) unit centers.

    Follows faiss.contrib.clustering.two_level_clustering (rebalance=True), written anew: k-means into
    C ~ sqrt(K) coarse cells (at most 2000 training rows per cell, faiss's setting), each row assigned
    to its nearest cell, then cell c gets proportional_split(cell sizes, K)[c] centers from k-means
    over its own rows (fine_centers). Cells too small for a share get none; their rows are covered by
    the neighbouring cells' centers.
    """
    gpu = use_gpu(cfg.gpu)
    cells = coarse_cell_count(cfg)
    coarse = _kmeans(x, cells, cfg, cfg.seed, COARSE_MAX_POINTS_PER_CENTROID, gpu)
    cell_of = search_topk(CenterIndex(flat_index(coarse, gpu, cfg.fp16), coarse), x, 1)[0][:, 0]  # (n,)
    return fine_centers(x, cell_of, cells, cfg, gpu)


def fine_centers(x: np.ndarray, cell_of: np.ndarray, cells: int, cfg: ClusterConfig, gpu: bool) -> np.ndarray:
    """two_level's second level: K centers (K, D) from unit rows x (n, D) and each row's cell (n,).

    Cell c gets proportional_split(cell sizes, K)[c] centers: none when it is too small for a share
    (or empty), its own rows when it holds exactly that many, else k-means with seed cfg.seed + 1 + c.
    """
    sizes = np.bincount(cell_of, minlength=cells)
    allotted = proportional_split(sizes, cfg.num_centers)
    order = np.argsort(cell_of, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    centers = [_cell_centers(x[order[starts[c]:starts[c + 1]]], int(allotted[c]), cfg, cfg.seed + 1 + c, gpu)
               for c in range(cells)]
    return np.concatenate(centers)  # (K, D)


FIT_METHODS = {"flat": fit_flat, "two_level": fit_two_level}
"""ClusterConfig.method -> fit function (unit rows (n, D), cfg) -> (K, D) unit centers."""

TWO_LEVEL_FROM = 100_000
"""method="auto" fits two_level from this many centers on: at K = 10k two_level was already 14x faster than flat
at 0.9999 of its objective (benchmarks/bench_cluster.py), and at K = 1M flat costs ~500x more (README)."""


def fit_method(cfg: ClusterConfig) -> str:
    """The k-means cfg.method names ("auto": two_level from TWO_LEVEL_FROM centers on, else flat)."""
    if cfg.method != "auto":
        return cfg.method
    return "two_level" if cfg.num_centers >= TWO_LEVEL_FROM else "flat"


def fit_centers(x: np.ndarray, cfg: ClusterConfig) -> np.ndarray:
    """Spherical k-means on L2-normalised rows of x (N, D): centers (K, D) float32, unit rows, exactly K.

    Rows beyond training_sample_size are dropped first by sample_rows([N], cfg), the same seeded
    draw a driver makes part by part; pass it the sampled rows and nothing more is dropped.
    """
    check_config(cfg)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {x.shape}")
    n, d = x.shape
    if n < cfg.num_centers:
        raise ValueError(f"k-means needs at least num_centers={cfg.num_centers} points, got {n}")
    if training_sample_size(n, cfg) < n:
        x = x[sample_rows([n], cfg)[0]]
    method = fit_method(cfg)
    centers = FIT_METHODS[method](l2_normalize(x), cfg)
    if centers.shape != (cfg.num_centers, d):  # the contract the cluster stage and the MLCD loss rely on
        raise AssertionError(f"{method} k-means returned {centers.shape}, expected {(cfg.num_centers, d)}")
    return centers


# --- assignment ---------------------------------------------------------------------------------

def ivf_nlist(num_centers: int, nlist: int | None = None) -> int:
    """IVF cells over K centers: nlist if given, else round(4 * sqrt(K)), at most K.

    faiss's guideline is 4-16 * sqrt(n) lists for n indexed vectors; here n = K is small (every list
    holds ~sqrt(K)/4 centers), so the low end keeps the coarse scan (nlist) and the list scans
    (nprobe * K / nlist) both cheap: ~12,000 of 10^6 centers scored per query at nprobe 32.
    """
    cells = nlist if nlist is not None else int(round(4 * math.sqrt(num_centers)))
    return max(1, min(cells, num_centers))


@dataclass(frozen=True, eq=False)
class CenterIndex:
    """A faiss index over the centers, built once (per worker) and searched part by part."""

    index: faiss.Index
    """flat inner-product or IVFFlat index over the unit centers, on the CPU or the GPUs."""
    centers: np.ndarray
    """(K, D) unit centers, for the exact search of rows the IVF probes cannot fill with k results."""


def flat_index(vectors: np.ndarray, gpu: bool, fp16: bool = False) -> faiss.Index:
    """Exact inner-product index over unit rows (n, D); on GPUs replicated (queries split), fp16 if asked."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    if gpu:
        index = to_gpus(index, fp16, shard=False)
    index.add(vectors)
    return index


def ivf_index(centers: np.ndarray, nlist: int, nprobe: int, seed: int, gpu: bool, fp16: bool = False
              ) -> faiss.Index:
    """IndexIVFFlat (inner product) over unit centers (K, D), its quantizer trained on the centers."""
    d = centers.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.spherical = True  # unit cell centroids: the quantizer scores cosine, like the lists
    index.cp.min_points_per_centroid = 1  # ~sqrt(K)/4 centers per list is the design, not a warning
    index.train(centers)
    index.add(centers)
    index.nprobe = min(nprobe, nlist)
    return to_gpus(index, fp16, shard=False) if gpu else index


def _center_index(centers: np.ndarray, assign: str, nlist: int | None, nprobe: int, seed: int, gpu: str,
                  fp16: bool) -> CenterIndex:
    if centers.ndim != 2 or len(centers) == 0:
        raise ValueError(f"centers must be a non-empty 2-D array, got shape {centers.shape}")
    if assign not in ASSIGNERS:
        raise ValueError(f"unknown assign {assign!r}; expected one of {list(ASSIGNERS)}")
    centers = l2_normalize(centers)
    on_gpu = use_gpu(gpu)
    if assign == "ivf":
        return CenterIndex(ivf_index(centers, ivf_nlist(len(centers), nlist), nprobe, seed, on_gpu, fp16), centers)
    return CenterIndex(flat_index(centers, on_gpu, fp16), centers)


def center_index(centers: np.ndarray, cfg: ClusterConfig) -> CenterIndex:
    """The assignment index over centers (K, D) that cfg asks for (cfg.assign, nlist, nprobe, gpu, fp16)."""
    check_config(cfg)
    return _center_index(centers, cfg.assign, cfg.nlist, cfg.nprobe, cfg.seed, cfg.gpu, cfg.fp16)


def search_topk(index: CenterIndex, x: np.ndarray, k: int, batch_size: int = 65536
                ) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest centers of each row of x (N, D) by cosine: labels int32 (N, k), scores float32 (N, k).

    Rows are L2-normalised first; each row is sorted by score, best first. A row whose IVF probes hold
    fewer than k centers (faiss returns id -1) is searched exactly instead.
    """
    num_centers, d = index.centers.shape
    if not 1 <= k <= num_centers:
        raise ValueError(f"k must be in [1, {num_centers}] (the number of centers), got {k}")
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"x {x.shape} and centers {index.centers.shape} must be 2-D with the same width")
    labels = np.empty((len(x), k), dtype=np.int32)
    scores = np.empty((len(x), k), dtype=np.float32)
    for start in range(0, len(x), batch_size):
        stop = min(start + batch_size, len(x))
        xb = l2_normalize(x[start:stop])
        sims, ids = index.index.search(xb, k)  # (B, k) each, best first
        short = (ids < 0).any(axis=1)
        if short.any():
            sims[short], ids[short] = faiss.knn(xb[short], index.centers, k, metric=faiss.METRIC_INNER_PRODUCT)
        labels[start:stop] = ids
        scores[start:stop] = sims
    return labels, scores


def assign_topk(
    x: np.ndarray, centers: np.ndarray, k: int, batch_size: int = 65536, gpu: str = "auto",
    assign: str = "exact", nlist: int | None = None, nprobe: int = DEFAULT_NPROBE, fp16: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """MLCD multi-labels: the k nearest centers of each row of x by cosine similarity.

    Returns labels int32 (N, k) and scores float32 (N, k), each row sorted by score descending.
    Rows of x and centers are L2-normalised first, so scores are cosine similarities. Builds the
    index each call; over many parts build it once with center_index and call search_topk.
    """
    if centers.ndim == 2 and not 1 <= k <= len(centers):
        raise ValueError(f"k must be in [1, {len(centers)}] (the number of centers), got {k}")
    if x.ndim != 2 or centers.ndim != 2 or x.shape[1] != centers.shape[1]:
        raise ValueError(f"x {x.shape} and centers {centers.shape} must be 2-D with the same width")
    index = _center_index(centers, assign, nlist, nprobe, seed, gpu, fp16)
    return search_topk(index, x, k, batch_size)


def spherical_objective(x: np.ndarray, centers: np.ndarray, gpu: str = "auto") -> float:
    """k-means objective in cosine: the mean, over rows of x, of the cosine to the nearest center."""
    return float(assign_topk(x, centers, 1, gpu=gpu)[1].mean(dtype=np.float64))


def nearest_neighbours(
    x_query: np.ndarray, x_base: np.ndarray, n: int, exclude_self: bool = True, query_offset: int = 0,
    batch_size: int = 16384, gpu: str = "auto", fp16: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The n nearest rows of x_base to each row of x_query by cosine: ids int64 (Nq, n), scores (Nq, n).

    For NegCLIP-style hard-negative images. With exclude_self, query row i is base row query_offset + i
    (a part searched against the whole set) and is dropped from its own list; when exact duplicates
    push it out of the n + 1 nearest, the (n + 1)-th is dropped instead.
    """
    if x_query.ndim != 2 or x_base.ndim != 2 or x_query.shape[1] != x_base.shape[1]:
        raise ValueError(f"x_query {x_query.shape} and x_base {x_base.shape} must be 2-D with the same width")
    n, extra = operator.index(n), int(exclude_self)  # faiss's search takes a Python int k, not a numpy integer
    if not 1 <= n <= len(x_base) - extra:
        raise ValueError(f"n must be in [1, {len(x_base) - extra}] (base rows{' less self' * extra}), got {n}")
    index = flat_index(l2_normalize(x_base), use_gpu(gpu), fp16)
    ids = np.empty((len(x_query), n), dtype=np.int64)
    scores = np.empty((len(x_query), n), dtype=np.float32)
    for start in range(0, len(x_query), batch_size):
        stop = min(start + batch_size, len(x_query))
        sims, found = index.search(l2_normalize(x_query[start:stop]), n + extra)  # (B, n + extra)
        if exclude_self:
            drop = found == np.arange(query_offset + start, query_offset + stop)[:, None]
            drop[~drop.any(axis=1), -1] = True  # exactly one dropped per row
            sims, found = sims[~drop].reshape(-1, n), found[~drop].reshape(-1, n)
        ids[start:stop] = found
        scores[start:stop] = sims
    return ids, scores


# --- statistics ---------------------------------------------------------------------------------

def cluster_sizes(labels_top1: np.ndarray, num_centers: int) -> np.ndarray:
    """Rows per center (K,) int64 from each row's nearest center (N,)."""
    labels = np.asarray(labels_top1).ravel()
    if len(labels) and (labels.min() < 0 or labels.max() >= num_centers):
        raise ValueError(f"labels must lie in [0, {num_centers}), got [{labels.min()}, {labels.max()}]")
    return np.bincount(labels, minlength=num_centers).astype(np.int64)


def empty_clusters(sizes: np.ndarray) -> int:
    """Centers no row has as its nearest."""
    return int(np.count_nonzero(np.asarray(sizes) == 0))


def size_summary(sizes: np.ndarray) -> dict[str, float]:
    """Cluster-size histogram in a few numbers: min, quantiles, max, mean, empty, faiss's imbalance factor.

    imbalance = K * sum(s^2) / N^2 (faiss.imbalance_factor): 1 when all clusters are equal.
    """
    s = np.asarray(sizes, dtype=np.float64)
    q = [float(v) for v in np.quantile(s, [0.1, 0.25, 0.5, 0.75, 0.9, 0.99])]
    total = s.sum()
    return {"clusters": float(len(s)), "empty": float(empty_clusters(sizes)), "min": float(s.min()),
            "p10": q[0], "p25": q[1], "median": q[2], "p75": q[3], "p90": q[4], "p99": q[5],
            "max": float(s.max()), "mean": float(s.mean()),
            "imbalance": float(len(s) * np.square(s).sum() / total**2) if total else float("nan")}


def _pair_counts(labels_true: np.ndarray, labels_pred: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table: (class, cluster, count) of each non-zero cell, and both marginals."""
    a, b = np.asarray(labels_true).ravel(), np.asarray(labels_pred).ravel()
    if a.shape != b.shape or len(a) == 0:
        raise ValueError(f"labels_true {a.shape} and labels_pred {b.shape} must be equal, non-empty 1-D")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    nb = int(bi.max()) + 1
    cells, counts = np.unique(ai.astype(np.int64) * nb + bi, return_counts=True)
    return cells // nb, cells % nb, counts, np.bincount(ai), np.bincount(bi)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Normalised mutual information, I(T; P) / mean(H(T), H(P)) (sklearn's default, arithmetic mean).

    1 when the two partitions agree up to renaming; 1 also when both are a single group (sklearn's
    convention), 0 when only one of them is.
    """
    rows, cols, counts, true_sizes, pred_sizes = _pair_counts(labels_true, labels_pred)
    n = counts.sum()
    h_true, h_pred = _entropy(true_sizes), _entropy(pred_sizes)
    if h_true == 0.0 and h_pred == 0.0:
        return 1.0
    p = counts / n
    mi = float((p * (np.log(counts * float(n)) - np.log(true_sizes[rows] * pred_sizes[cols].astype(float)))).sum())
    return max(0.0, mi) / ((h_true + h_pred) / 2)


def purity(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Cluster purity: the share of rows whose cluster's most common true class is their own."""
    _, cols, counts, _, pred_sizes = _pair_counts(labels_true, labels_pred)
    best = np.zeros(len(pred_sizes), dtype=np.int64)
    np.maximum.at(best, cols, counts)
    return float(best.sum() / counts.sum())


def cluster_agreement(labels_true: np.ndarray, labels_pred: np.ndarray, seed: int = 0) -> dict[str, float]:
    """NMI and purity of labels_pred against labels_true, and of a random baseline with the same sizes.

    The baseline is a seeded permutation of labels_pred: the same cluster-size distribution, no relation
    to the rows, so nmi_random and purity_random are what the sizes alone give.
    """
    shuffled = np.random.default_rng(seed).permutation(np.asarray(labels_pred).ravel())
    return {"nmi": nmi(labels_true, labels_pred), "purity": purity(labels_true, labels_pred),
            "nmi_random": nmi(labels_true, shuffled), "purity_random": purity(labels_true, shuffled)}
