"""The cluster stage's units of work (MLCD multi-labels, SemDeDup, DataComp's embedding filters, neighbours).

The stage runs these steps, none holding every embedding in one process:

1. ``FitCenters`` (a job): k-means on a reproducible sample of rows, read part by part; ``centers.npy``.
2. ``CenterAssigner`` (a stateful worker: the center index is built once per actor) on each part: the top-k
   nearest centers (``cluster_labels``, ``cluster_scores``), the row-wise filters (CLIP score, image-based),
   and the kept rows split into buckets by their top-1 center, so that every cluster lands in one bucket.
3. ``GroupClusters`` on each bucket: its rows sorted by top-1 center, SemDeDup inside each cluster, and each kept
   sample's nearest neighbours by image embedding inside its cluster (``neighbours``: uids, nearest first).
   With ``order="cluster"`` output part j is bucket j, so a cluster's samples are contiguous in the parts, and so
   in the shards: the training loader finds a sample's neighbours close to it in the stream (NegCLIP's
   hard-negative images).
4. ``RestoreOrder`` (``order="input"``): output part i holds embed part i's surviving rows in their order, so a
   training shuffle buffer mixes every cluster (clustered shards gave batches of few clusters and cost the default
   run accuracy).
5. ``ClusterAgreement`` (synthetic world only): NMI and purity of the top-1 clusters against the true attributes.

Neighbours are searched within the sample's top-1 cluster: an inverted-file search over the k-means cells
with one probe. At MLCD's scale (1M centers, ~400 samples a cluster) that is where its nearest images are; a
neighbour across a cell boundary is missed. SemDeDup runs on the same clusters (its authors cluster with a
k-means of their own, 50k centers for LAION-440M; finer clusters find a little fewer duplicates).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import clustering, embedding_filters, semdedup
from curation.partitions import Counts, dropped_table, embedding_matrix, list_parts, read_table, save_array, write_table


@dataclass(frozen=True)
class ClusterStageConfig(clustering.ClusterConfig):
    """The `cluster` stage: k-means and assignment (clustering.ClusterConfig's fields), then the embedding-based
    filters, each off by default. Where they sit: after the k-means fit and before any caption stage, so a row
    they drop never reaches an LLM; CLIP score and image-based per row at assignment, SemDeDup per cluster."""

    semdedup: semdedup.SemDedupConfig = field(default_factory=semdedup.SemDedupConfig)
    """SemDeDup inside each top-1 cluster (Abbas et al. 2023)."""
    clip_score: embedding_filters.ClipScoreConfig = field(default_factory=embedding_filters.ClipScoreConfig)
    """DataComp's CLIP-score filter; needs a pretrained embed.checkpoint."""
    image_filter: embedding_filters.ImageFilterConfig = field(default_factory=embedding_filters.ImageFilterConfig)
    """DataComp's image-based filter: keep the clusters nearest a target folder's images."""
    order: Literal["auto", "cluster", "input"] = "auto"
    """row order of the output parts: "cluster" (whole clusters per part, in center order, so a sample's neighbours
    are near it in the shards: NegCLIP's hard-negative images need it), "input" (the embed parts' order, so
    a shuffle buffer mixes all clusters), or "auto": cluster when the run trains negclip with hard-negative
    images, else input (flows.config.resolve decides; a stage given "auto" keeps the input order)."""


CLIP_SCORE_REASON = "clip_score_below_threshold"
IMAGE_FILTER_REASON = "cluster_far_from_target"
SEMDEDUP_REASON = "semantic_duplicate"
ORIGIN = ("_part", "_row")
"""helper columns: each row's embed part and row, to restore the input order after grouping (never published)."""


def bucket_of(labels_top1: np.ndarray, num_centers: int, buckets: int) -> np.ndarray:
    """The bucket of each top-1 center: contiguous ranges of centers, so a cluster is in exactly one bucket."""
    return (labels_top1.astype(np.int64) * buckets) // num_centers


def part_rows_at(path: str, rows: np.ndarray, column: str = "image_emb") -> np.ndarray | None:
    """(len(rows), D) float32 embeddings of the given rows of one part (only that column is read); None when no
    row is asked for (an empty part has no width to give)."""
    if len(rows) == 0:
        return None
    return embedding_matrix(read_table(path, [column]), column)[rows]


@dataclass(frozen=True)
class FitCenters:
    """k-means centers from a reproducible sample of every part's rows (clustering.sample_rows), read part by
    part; ``centers.npy`` is float32, one unit row per center."""

    sources: tuple[str, ...]
    """the embed artifact's parts"""
    part_rows: tuple[int, ...]
    """their row counts (from the Parquet footers), which alone decide the sample"""
    cfg: ClusterStageConfig
    out: str
    """centers.npy"""

    def run(self) -> Counts:
        picks = clustering.sample_rows(self.part_rows, self.cfg)
        chunks = [part_rows_at(p, rows) for p, rows in zip(self.sources, picks, strict=True)]
        x = np.concatenate([c for c in chunks if c is not None])
        save_array(clustering.fit_centers(x, self.cfg).astype(np.float32), self.out)
        return {"points": int(x.shape[0])}


@dataclass(frozen=True)
class ClipThreshold:
    """DataComp's top-fraction threshold of the CLIP score over the whole pool, from every part's embeddings."""

    sources: tuple[str, ...]
    """the embed artifact's parts"""
    cfg: embedding_filters.ClipScoreConfig
    out: str
    """a text file holding the threshold"""

    def run(self) -> Counts:
        columns = [self.cfg.image_column, self.cfg.text_column]
        scores = np.concatenate([np.zeros(0, np.float32)]
                                + [part_clip_scores(read_table(p, columns), self.cfg) for p in self.sources])
        threshold = embedding_filters.clip_score_threshold(scores, self.cfg.fraction)
        Path(self.out).write_text(repr(float(threshold)))
        return {"scored": int(scores.size)}


def part_clip_scores(table: pa.Table, cfg: embedding_filters.ClipScoreConfig) -> np.ndarray:
    """(N,) cosine of each row's image and text embeddings (0 rows: empty)."""
    if table.num_rows == 0:
        return np.zeros(0, np.float32)
    return embedding_filters.clip_scores(embedding_matrix(table, cfg.image_column),
                                         embedding_matrix(table, cfg.text_column))


@dataclass(frozen=True)
class AssignPart:
    """One part through the assigner: kept rows into ``buckets/<j>/<name>``, dropped rows into ``filtered``."""

    OUTPUTS: ClassVar[tuple[str, ...]] = ("buckets", "filtered", "sizes")
    """Written only: ``buckets`` is the folder every part's unit writes its pieces into."""

    source: str
    """an embed part"""
    index: int
    """its part number (the _part column)"""
    buckets: str
    """folder of buckets: the part's rows whose top-1 center falls in bucket j go to ``<buckets>/<j>/<name>``"""
    name: str
    """the part's file name inside each bucket folder"""
    filtered: str
    """the dropped-row table of the row filters"""
    sizes: str
    """.npy of the part's rows per center (top-1, before the filters)"""


@dataclass(frozen=True)
class RowFilters:
    """What the row-wise filters need, decided once for the whole pool."""

    clip: embedding_filters.ClipScoreConfig
    """the CLIP-score filter's config (which embedding columns it compares)"""
    clip_threshold: float | None
    """the score a sample must reach (the config's threshold, or the pool's top-fraction threshold)."""
    target_clusters: tuple[int, ...] | None
    """clusters the image-based filter keeps (None: that filter is off)."""


def filter_reasons(table: pa.Table, labels_top1: np.ndarray, filters: RowFilters) -> tuple[list, list]:
    """(reason or None, detail) per row: CLIP score first, then the image-based filter."""
    n = table.num_rows
    reasons: list[str | None] = [None] * n
    details = [""] * n
    if filters.clip_threshold is not None:
        scores = part_clip_scores(table, filters.clip)
        for i in np.flatnonzero(scores < filters.clip_threshold):
            reasons[i], details[i] = CLIP_SCORE_REASON, f"clip score {scores[i]:.4f} < {filters.clip_threshold:.4f}"
    if filters.target_clusters is not None:
        far = ~np.isin(labels_top1, np.asarray(filters.target_clusters, np.int64))
        for i in np.flatnonzero(far):
            if reasons[i] is None:
                reasons[i], details[i] = IMAGE_FILTER_REASON, f"cluster {labels_top1[i]} is no target's nearest"
    return reasons, details


class CenterAssigner:
    """The cluster stage's stateful worker: loads the centers and builds their index once (on its GPU when it
    has one), then assigns, filters and buckets each part it is given."""

    def __init__(self, centers: str, cfg: ClusterStageConfig, filters: RowFilters, buckets: int):
        self.centers = np.load(centers)
        self.index = clustering.center_index(self.centers, cfg)
        self.cfg, self.filters, self.buckets = cfg, filters, buckets

    def __call__(self, unit: AssignPart) -> dict:
        table = read_table(unit.source)
        if table.num_rows == 0:  # an empty part: nothing to bucket, zero sizes, an empty dropped-row table
            np.save(unit.sizes, np.zeros(len(self.centers), np.int64))
            write_table(dropped_table([], "cluster", [], []), unit.filtered)
            return {"rows_in": 0, "rows_out": 0, "reasons": {}}
        labels, scores = clustering.search_topk(self.index, embedding_matrix(table), self.cfg.top_k)  # (N, k)
        top1 = labels[:, 0].astype(np.int64)
        np.save(unit.sizes, clustering.cluster_sizes(top1, len(self.centers)))
        table = table.append_column("cluster_labels", pa.array(list(labels), pa.list_(pa.int32())))
        table = table.append_column("cluster_scores", pa.array(list(scores), pa.list_(pa.float32())))
        table = table.append_column(ORIGIN[0], pa.array(np.full(table.num_rows, unit.index, np.int32)))
        table = table.append_column(ORIGIN[1], pa.array(np.arange(table.num_rows, dtype=np.int64)))
        reasons, details = filter_reasons(table, top1, self.filters)
        keep = np.array([r is None for r in reasons])
        drop = np.flatnonzero(~keep)
        uids = table.column("uid").to_pylist()
        write_table(dropped_table([uids[i] for i in drop], "cluster", [reasons[i] for i in drop],
                                  [details[i] for i in drop]), unit.filtered)
        kept, kept_top1 = table.filter(pa.array(keep)), top1[keep]
        bucket = bucket_of(kept_top1, len(self.centers), self.buckets)
        for j in np.unique(bucket):
            write_table(kept.filter(pa.array(bucket == j)), Path(unit.buckets) / f"{j:05d}" / unit.name)
        return {"rows_in": table.num_rows, "rows_out": kept.num_rows,
                "reasons": dict(Counter(r for r in reasons if r is not None))}


@dataclass(frozen=True)
class GroupClusters:
    """One bucket's rows in top-1 center order; SemDeDup and the neighbours inside each cluster."""

    bucket: str
    """the bucket's folder (one file per embed part that had rows in it)"""
    centers: str
    """centers.npy, for SemDeDup's distance to the center"""
    cfg: ClusterStageConfig
    out: str
    """the output part (whole clusters, rows in center order)"""
    filtered: str
    """SemDeDup's dropped rows"""
    pairs: str
    """SemDeDup's dropped pairs (uid, duplicate_of, similarity)"""

    def run(self) -> dict:
        paths = list_parts(self.bucket) if Path(self.bucket).exists() else []
        table = pa.concat_tables([read_table(p) for p in paths]) if paths else None
        if table is None or table.num_rows == 0:
            return {"rows_in": 0, "rows_out": 0, "reasons": {}, "drop_counts": {}, "written": False}
        top1 = np.array([row[0] for row in table.column("cluster_labels").to_pylist()], np.int64)
        order = np.argsort(top1, kind="stable")
        table, top1 = table.take(pa.array(order)), top1[order]
        emb = embedding_matrix(table)  # (N, D)
        keep, drop_counts = self._semdedup(table, emb, top1)
        table, emb, top1 = table.filter(pa.array(keep)), emb[keep], top1[keep]
        table = table.append_column("neighbours", neighbour_column(table.column("uid").to_pylist(), emb, top1,
                                                                    self.cfg.neighbours))
        if self.cfg.order != "cluster":  # the origin columns go along, for RestoreOrder
            names = [n for n in table.column_names if n not in ORIGIN]
            table = table.select([*names, *ORIGIN])
        else:
            table = table.drop_columns(list(ORIGIN))
        write_table(table, self.out)
        return {"rows_in": int(keep.size), "rows_out": table.num_rows,
                "reasons": {SEMDEDUP_REASON: int((~keep).sum())} if (~keep).any() else {},
                "drop_counts": drop_counts, "written": True}

    def _semdedup(self, table: pa.Table, emb: np.ndarray, top1: np.ndarray) -> tuple[np.ndarray, dict]:
        """Keep mask and drop counts per eps; the dropped rows and their pairs are written."""
        cfg = self.cfg.semdedup
        uids = table.column("uid").to_pylist()
        if not cfg.enabled:
            write_table(dropped_table([], "cluster", [], []), self.filtered)
            write_table(pair_table([], [], []), self.pairs)
            return np.ones(len(uids), bool), {}
        result = semdedup.semdedup(emb, top1, np.load(self.centers), cfg)
        dropped = [uids[i] for i in result.dropped]
        originals = [uids[i] for i in result.duplicate_of]
        details = [f"cosine {s:.4f} to {o}" for s, o in zip(result.similarity, originals, strict=True)]
        write_table(dropped_table(dropped, "cluster", [SEMDEDUP_REASON] * len(dropped), details), self.filtered)
        write_table(pair_table(dropped, originals, result.similarity), self.pairs)
        return result.keep, {repr(float(e)): int(n) for e, n in result.drop_counts.items()}


@dataclass(frozen=True)
class RestoreOrder:
    """Output part ``index`` in the input order: the grouped rows that came from embed part ``index``, sorted by
    their row there, without the origin columns."""

    grouped: tuple[str, ...]
    """the GroupClusters outputs"""
    index: int
    """the embed part whose rows this part holds"""
    out: str

    def run(self) -> Counts:
        pieces = [pq.read_table(p, filters=[(ORIGIN[0], "=", self.index)]) for p in self.grouped]  # this part's rows
        table = pa.concat_tables(pieces)
        table = table.take(pc.sort_indices(table, [(ORIGIN[1], "ascending")])).drop_columns(list(ORIGIN))
        write_table(table, self.out)
        return {"rows": table.num_rows}


def pair_table(dropped: Sequence[str], originals: Sequence[str], similarity: Sequence[float]) -> pa.Table:
    """SemDeDup's dropped pairs: the dropped sample, the earlier sample it duplicates, their cosine."""
    return pa.table({"uid": pa.array(list(dropped), pa.string()),
                     "duplicate_of": pa.array(list(originals), pa.string()),
                     "similarity": pa.array(np.asarray(similarity, np.float32), pa.float32())})


def neighbour_column(uids: Sequence[str], emb: np.ndarray, top1: np.ndarray, n: int) -> pa.Array:
    """Per row, the uids of its n nearest images (cosine) in its own top-1 cluster, nearest first; rows are sorted
    by top1. Empty lists when n is 0."""
    out: list[list[str]] = [[] for _ in uids]
    if n > 0:
        starts = np.flatnonzero(np.r_[True, top1[1:] != top1[:-1]])
        for start, stop in zip(starts, np.r_[starts[1:], len(top1)], strict=True):
            if stop - start < 2:
                continue
            ids, _ = clustering.nearest_neighbours(emb[start:stop], emb[start:stop], min(n, stop - start - 1),
                                                   exclude_self=True, gpu="never")
            for row, found in enumerate(ids):
                out[start + row] = [uids[start + j] for j in found if j >= 0]
    return pa.array(out, pa.list_(pa.string()))


@dataclass(frozen=True)
class ClusterAgreement:
    """NMI and purity of the top-1 clusters against each of the synthetic world's true attributes of a scene (its
    first object's shape, the zero-shot eval's classes; that object's colour; the background), beside a random
    assignment with the same cluster sizes (clustering.cluster_agreement). ``truth``: ingest's truth parts."""

    sources: tuple[str, ...]
    """the cluster stage's output parts"""
    truth: tuple[str, ...]
    """the ingest artifact's truth parts"""

    def run(self) -> dict:
        truth = pa.concat_tables([read_table(p, ["uid", "objects", "background"]) for p in self.truth])
        first = pc.list_element(truth.column("objects"), 0)
        attributes = {"shape": pc.struct_field(first, "shape"), "colour": pc.struct_field(first, "colour"),
                      "background": truth.column("background")}
        index = {u: i for i, u in enumerate(truth.column("uid").to_pylist())}
        uids, top1 = [], []
        for path in self.sources:
            table = read_table(path, ["uid", "cluster_labels"])
            uids += table.column("uid").to_pylist()
            top1.append(pc.list_element(table.column("cluster_labels"), 0).to_numpy(zero_copy_only=False))
        rows = np.array([index[u] for u in uids], np.int64)
        pred = np.concatenate(top1).astype(np.int64)
        out = {}
        for name, values in attributes.items():
            _, true = np.unique(np.asarray(values.to_pylist(), dtype=object)[rows].astype(str), return_inverse=True)
            out[name] = {**clustering.cluster_agreement(true, pred), "classes": int(true.max()) + 1}
        return out


def total_sizes(paths: Sequence[str]) -> np.ndarray:
    """Sum of the assign step's per-part cluster sizes (.npy, one count per center), one file at a time."""
    total = np.load(paths[0]).astype(np.int64)
    for path in paths[1:]:
        total += np.load(path)
    return total


def cluster_size_table(sizes: np.ndarray) -> pa.Table:
    """``cluster, size``: samples per center (top-1 assignment, before the embedding filters)."""
    return pa.table({"cluster": pa.array(np.arange(len(sizes), dtype=np.int32)),
                     "size": pa.array(sizes.astype(np.int64))})
