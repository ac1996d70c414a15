"""The cluster stage: k-means centers over the image embeddings, top-k labels per sample (MLCD), the
embedding-based filters (DataComp's CLIP score and image-based filters, SemDeDup), each sample's neighbours, and
cluster statistics. The steps and why rows move between parts: curation.cluster_units."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from curation import cluster_units as C
from curation import clustering
from curation import partitions as P
from curation.embedding_filters import require_pretrained, target_clusters
from tasks.stages.common import (
    CODE_VERSIONS,
    ReconciliationError,
    RunContext,
    StageRun,
    discard,
    fetched,
    list_parts,
    part_path,
    part_rows,
    parts_of,
    run_stage,
    stored,
)
from tasks.store import layout as L
from tasks.store import workdir as W
from tasks.store.artifacts import ArtifactRef
from training.embedding import EmbedConfig
from training.jobs import EmbedImageFolder, folder_fingerprint


def embed_checkpoint(embed_ref: ArtifactRef) -> str:
    """The embed stage's checkpoint, an absolute path (a bootstrap checkpoint lives in the embed artifact)."""
    model = json.loads(W.read_text(Path(embed_ref.path) / L.MANIFEST))["model"]
    return model["checkpoint"] if model["source"] == "config" else str(Path(embed_ref.path) / model["checkpoint"])


def row_filters(run: StageRun, cfg: C.ClusterStageConfig, embed_cfg: EmbedConfig, embed_ref: ArtifactRef,
                parts: list[str], centers: str) -> C.RowFilters:
    """The CLIP-score threshold and the image-based filter's kept clusters, decided once for the pool."""
    threshold, targets = None, None
    clip = cfg.clip_score
    if clip.enabled:
        require_pretrained(embed_cfg.checkpoint, "cluster.clip_score")
        if clip.threshold is None:
            out = run.tmp / L.CLIP_THRESHOLD
            run.job("clip_threshold", C.ClipThreshold(tuple(parts), clip, str(out)), cpu_only=True)
            threshold = float(Path(fetched(out)[0]).read_text())
        else:
            threshold = clip.threshold
    if cfg.image_filter.enabled:
        targets = image_filter_clusters(run, cfg, embed_cfg, embed_checkpoint(embed_ref), centers)
    return C.RowFilters(clip, threshold, targets)


def image_filter_clusters(run: StageRun, cfg: C.ClusterStageConfig, embed_cfg: EmbedConfig, checkpoint: str,
                          centers: str) -> tuple[int, ...]:
    """Embed the target folder with the embed stage's model, and keep the clusters nearest its images."""
    out = run.tmp / L.TARGET_EMBEDDINGS
    unit = EmbedImageFolder(cfg.image_filter.target, embed_cfg, checkpoint, str(out))
    images = run.job("targets", unit)["images"]
    fetched(centers, out)
    kept = target_clusters(np.load(centers), np.load(out), cfg.image_filter.nearest, gpu="never")  # the driver
    run.manifest["image_filter"] = {"target_images": images, "kept_clusters": len(kept)}
    return tuple(int(c) for c in kept)


def summed_reasons(results: list[dict]) -> dict[str, int]:
    """Dropped rows per reason over the units' results."""
    total: dict[str, int] = {}
    for result in results:
        for reason, n in result["reasons"].items():
            total[reason] = total.get(reason, 0) + n
    return dict(sorted(total.items()))


@task(name="cluster", cache_policy=NO_CACHE, persist_result=False)
def cluster(ctx: RunContext, cfg: C.ClusterStageConfig, upstream: ArtifactRef, embed_cfg: EmbedConfig,
            truth: ArtifactRef | None = None) -> ArtifactRef:
    """`upstream` is the embed artifact, made with `embed_cfg` (its key covers it); `truth` (the ingest artifact
    of a synthetic pool) adds the clusters' agreement with the true classes."""
    truth_parts = tuple(parts_of(truth, L.TRUTH)) if truth is not None else ()

    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        tmp, parts = run.tmp, parts_of(upstream)
        rows = part_rows(parts)
        centers = str(tmp / L.CENTERS)
        manifest["points"] = run.job("fit", C.FitCenters(tuple(parts), rows, cfg, centers))["points"]
        filters = row_filters(run, cfg, embed_cfg, upstream, parts, centers)
        assigned = assign(run, cfg, parts, centers, filters)
        by_cluster = cfg.order == "cluster"
        grouped_dir = L.PARTS if by_cluster else L.GROUPED
        grouped = run.map("group", [
            C.GroupClusters(str(tmp / L.BUCKETS / f"{j:05d}"), centers, cfg, part_path(tmp, grouped_dir, j),
                            part_path(tmp, L.FILTERED, len(parts) + j), part_path(tmp, L.SEMDEDUP_PAIRS, j))
            for j in range(len(parts))], cpu_only=True)
        if sum(r["rows_out"] for r in assigned) != sum(g["rows_in"] for g in grouped):
            raise ReconciliationError("cluster: the buckets do not hold the rows the assign step kept")
        discard(run, "assign", tmp / L.BUCKETS, tmp / L.SIZE_PARTS)
        if not by_cluster:
            pieces = tuple(list_parts(tmp / L.GROUPED))
            restored = run.map("order", [C.RestoreOrder(pieces, i, part_path(tmp, L.PARTS, i))
                                         for i in range(len(parts))], cpu_only=True) if pieces else []
            if sum(r["rows"] for r in restored) != sum(g["rows_out"] for g in grouped):
                raise ReconciliationError("cluster: restoring the input order lost or repeated rows")
            discard(run, "group", tmp / L.GROUPED)
        manifest["order"] = "cluster" if by_cluster else "input"
        record(run, manifest, cfg, assigned, grouped, truth_parts)

    inputs = [upstream] if truth is None else [upstream, truth]
    key_config = (cfg, folder_fingerprint(cfg.image_filter.target)) if cfg.image_filter.enabled else cfg
    return run_stage(ctx, "cluster", CODE_VERSIONS["cluster"], key_config, inputs, compute)


def assign(run: StageRun, cfg: C.ClusterStageConfig, parts: list[str], centers: str, filters: C.RowFilters
           ) -> list[dict]:
    """Top-k labels, row filters and bucketing of every part on a pool of assigners; cluster_sizes.parquet."""
    tmp = run.tmp
    units = [C.AssignPart(p, i, str(tmp / L.BUCKETS), P.part_name(i), part_path(tmp, L.FILTERED, i),
                          str(tmp / L.SIZE_PARTS / f"{i:05d}.npy")) for i, p in enumerate(parts)]
    (tmp / L.SIZE_PARTS).mkdir(exist_ok=True)
    results = run.map_stateful("assign", partial(C.CenterAssigner, centers, cfg, filters, max(1, len(parts))), units)
    sizes = C.total_sizes(fetched(*[u.sizes for u in units]))
    P.write_table(C.cluster_size_table(sizes), tmp / L.CLUSTER_SIZES)
    stored(tmp / L.CLUSTER_SIZES)
    run.manifest["sizes"] = clustering.size_summary(sizes)
    return results


def record(run: StageRun, manifest: dict[str, Any], cfg: C.ClusterStageConfig, assigned: list[dict],
           grouped: list[dict], truth_parts: tuple[str, ...]) -> None:
    """Counts, reasons, SemDeDup's drop counts per eps, and (synthetic world) the clusters' agreement."""
    rows_in, rows_out = sum(r["rows_in"] for r in assigned), sum(g["rows_out"] for g in grouped)
    manifest["counts"] = {"rows_in": rows_in, "rows_out": rows_out, "filtered": rows_in - rows_out, "quarantined": 0}
    manifest["reasons"] = {"filtered": summed_reasons(assigned + grouped)}
    manifest["centers"] = {"num_centers": cfg.num_centers, "method": clustering.fit_method(cfg), "assign": cfg.assign}
    if cfg.semdedup.enabled:
        counts: dict[str, int] = {}
        for g in grouped:
            for eps, n in g["drop_counts"].items():
                counts[eps] = counts.get(eps, 0) + n
        manifest["semdedup"] = {"eps": cfg.semdedup.eps, "dropped_by_eps": counts, "keep": cfg.semdedup.keep}
    outputs = list_parts(run.tmp / L.PARTS)
    if truth_parts and outputs:
        manifest["agreement"] = run.job("agreement", C.ClusterAgreement(tuple(outputs), truth_parts), cpu_only=True)
