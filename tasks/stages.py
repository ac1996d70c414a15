"""One Prefect task per pipeline stage, in pipeline order.

Each task is wiring only: compute the artifact key, return at once on a cache hit, otherwise fan the
partitions out on Ray (library functions from ``curation/``, ``training/``, ``eval/``), then record
counts and reasons in the manifest. Algorithms live in the library folders.

Bump a stage's entry in :data:`CODE_VERSIONS` whenever its output changes for the same config: the
version is part of the key, so the stage and everything below it recompute.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from curation import partitions as P
from curation.balancing import CurateConfig, curate_key_config, entry_count_table, entry_probs
from curation.captions import STAGE_SEEDS, LongcapConfig, RewriteConfig, make_backend
from curation.clustering import ClusterConfig
from curation.filters import FilterConfig
from curation.matching import EntryMatcher
from curation.metadata import choose_metadata, save_metadata
from curation.sharding import ShardConfig, write_sizes
from curation.sources import IngestConfig, plan_partitions
from curation.statistics import distribution_stats, top_entries
from eval.jobs import EvalJob
from eval.providers import eval_key_config, resolve_sources
from eval.suite import EvalConfig
from tasks import layout as L
from tasks.artifacts import ArtifactRef
from tasks.common import RunContext, StageRun, run_stage
from training.config import TrainConfig
from training.embedding import EmbedConfig
from training.jobs import BootstrapJob, EmbedPart, PartEmbedder, bootstrap_config

CODE_VERSIONS = {
    "ingest": "2", "filter": "2", "curate": "1", "rewrite": "2", "longcap": "2",
    "embed": "3", "cluster": "1", "shard": "1", "train": "3", "eval": "2",
}


def _parts(ref: ArtifactRef, folder: str = L.PARTS) -> list[str]:
    return P.list_parts(Path(ref.path) / folder)


def _out(tmp: Path, folder: str, index: int, suffix: str = ".parquet") -> str:
    return str((tmp / folder / P.part_name(index)).with_suffix(suffix))


def _passthrough_counts(results: list[dict]) -> dict[str, int]:
    rows_in = sum(r["rows_in"] for r in results)
    rows_out = sum(r["rows_out"] for r in results)
    return {"rows_in": rows_in, "rows_out": rows_out, "filtered": rows_in - rows_out, "quarantined": 0}


def _discard(run: StageRun, step: str, *paths: Path) -> None:
    """Delete a finished step's intermediate files, its markers first: a crash in between redoes the step."""
    run.staging.unmark(step)
    for path in paths:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@task(name="ingest", cache_policy=NO_CACHE)
def ingest(ctx: RunContext, cfg: IngestConfig) -> ArtifactRef:
    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        tmp = run.tmp
        spans = plan_partitions(cfg)
        read = run.map("read", [P.IngestPart(cfg, span, _out(tmp, L.CANDIDATES, i), _out(tmp, L.READ_QUARANTINE, i),
                                             _out(tmp, L.TRUTH, i)) for i, span in enumerate(spans)])
        candidates = [_out(tmp, L.CANDIDATES, i) for i in range(len(spans))]
        P.write_table(P.duplicate_uid_table(candidates), tmp / L.DUPLICATES)
        kept = run.map("dedup", [P.DropDuplicateUids(p, i, str(tmp / L.DUPLICATES), _out(tmp, L.READ_QUARANTINE, i),
                                                     _out(tmp, L.PARTS, i), _out(tmp, L.QUARANTINE, i))
                                 for i, p in enumerate(candidates)])
        manifest["counts"] = {"rows_in": sum(r["rows_in"] for r in read), "rows_out": sum(r["rows_out"] for r in kept),
                              "filtered": 0, "quarantined": sum(r["quarantined"] for r in read + kept)}
        manifest["reasons"] = {"quarantined": P.reason_counts(P.list_parts(tmp / L.QUARANTINE))}
        manifest["source"] = cfg.source
        _discard(run, "dedup")
        _discard(run, "read", tmp / L.CANDIDATES, tmp / L.READ_QUARANTINE)  # the duplicates table stays

    return run_stage(ctx, "ingest", CODE_VERSIONS["ingest"], cfg, [], compute)


@task(name="filter", cache_policy=NO_CACHE)
def filter_(ctx: RunContext, cfg: FilterConfig, upstream: ArtifactRef) -> ArtifactRef:
    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        tmp, parts = run.tmp, _parts(upstream)
        keys = run.map("keys", [P.FilterKeys(p, cfg, _out(tmp, L.FILTER_KEYS, i)) for i, p in enumerate(parts)])
        reasons = P.global_filter_reasons([_out(tmp, L.FILTER_KEYS, i) for i in range(len(parts))], cfg)
        P.write_table(reasons, tmp / L.FILTER_REASONS)
        applied = run.map("apply", [P.ApplyReasons(p, str(tmp / L.FILTER_REASONS), "filter", _out(tmp, L.PARTS, i),
                                                   _out(tmp, L.FILTERED, i)) for i, p in enumerate(parts)])
        manifest["counts"] = _passthrough_counts(applied)
        assert manifest["counts"]["rows_in"] == sum(k["rows_in"] for k in keys)
        manifest["reasons"] = {"filtered": P.reason_counts(P.list_parts(tmp / L.FILTERED))}
        _discard(run, "apply")
        _discard(run, "keys", tmp / L.FILTER_KEYS, tmp / L.FILTER_REASONS)

    return run_stage(ctx, "filter", CODE_VERSIONS["filter"], cfg, [upstream], compute)


def _caption_counts(run: StageRun, parts: list[str]) -> tuple[Counter, Counter]:
    """Word and pair counts of every part's captions, counted in parallel (the metadata builder's input)."""
    outs = [_out(run.tmp, L.CAPTION_COUNTS, i) for i in range(len(parts))]
    run.map("caption_counts", [P.CaptionCounts(p, out) for p, out in zip(parts, outs)])
    counts = P.read_caption_counts(outs)
    _discard(run, "caption_counts", run.tmp / L.CAPTION_COUNTS)
    return counts


@task(name="curate", cache_policy=NO_CACHE)
def curate(ctx: RunContext, cfg: CurateConfig, upstream: ArtifactRef, synthetic_only: bool = True) -> ArtifactRef:
    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        tmp, parts = run.tmp, _parts(upstream)
        entries, manifest["metadata"] = choose_metadata(cfg.metadata, synthetic_only, cfg.builder,
                                                        lambda: _caption_counts(run, parts))
        save_metadata(entries, str(tmp / L.METADATA))
        matcher = EntryMatcher(entries)  # built once, shared by every part's unit
        run.map("match", [P.MatchPart(p, matcher, _out(tmp, L.MATCHED, i), _out(tmp, L.MATCH_COUNTS, i, ".npy"))
                          for i, p in enumerate(parts)])
        before = np.sum([np.load(_out(tmp, L.MATCH_COUNTS, i, ".npy")) for i in range(len(parts))], axis=0)
        probs = entry_probs(before, cfg.t)
        results = run.map("balance", [
            P.BalancePart(p, _out(tmp, L.MATCHED, i), probs, cfg.seed, _out(tmp, L.PARTS, i), _out(tmp, L.FILTERED, i),
                          _out(tmp, L.KEPT_COUNTS, i, ".npy")) for i, p in enumerate(parts)])
        after = np.sum([np.load(_out(tmp, L.KEPT_COUNTS, i, ".npy")) for i in range(len(parts))], axis=0)
        P.write_table(entry_count_table(entries, before, after, probs), tmp / L.ENTRY_COUNTS)
        manifest["counts"] = _passthrough_counts(results)
        manifest["reasons"] = {"filtered": P.reason_counts(P.list_parts(tmp / L.FILTERED))}
        manifest["distribution"] = distribution_stats(before, after, cfg.t)
        manifest["top_entries"] = top_entries(entries, before, after, n=20)
        (tmp / L.CURATE_STATS).write_text(json.dumps(manifest["distribution"]))
        _discard(run, "balance", tmp / L.KEPT_COUNTS)
        _discard(run, "match", tmp / L.MATCH_COUNTS)

    return run_stage(ctx, "curate", CODE_VERSIONS["curate"], curate_key_config(cfg, synthetic_only), [upstream],
                     compute)


def _caption_stage(ctx: RunContext, stage: str, cfg: RewriteConfig | LongcapConfig, upstream: ArtifactRef,
                   truth: ArtifactRef | None, seed: int) -> ArtifactRef:
    """`truth` (the ingest artifact, whose truth table is joined by uid) is given to the captioner (longcap) only;
    the rewriter stands in for a text-only LLM and gets None."""
    truth_parts = tuple(_parts(truth, L.TRUTH)) if truth is not None else ()

    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        units = [P.CaptionPart(p, truth_parts, _out(run.tmp, L.PARTS, i), cfg, seed)
                 for i, p in enumerate(_parts(upstream))]
        manifest["counts"] = _passthrough_counts(run.map("caption", units))
        manifest["backend"] = make_backend(cfg.backend, cfg.error_rate).describe(stage)

    inputs = [upstream] if truth is None else [upstream, truth]
    return run_stage(ctx, stage, CODE_VERSIONS[stage], cfg, inputs, compute)


@task(name="rewrite", cache_policy=NO_CACHE)
def rewrite(ctx: RunContext, cfg: RewriteConfig, upstream: ArtifactRef) -> ArtifactRef:
    return _caption_stage(ctx, "rewrite", cfg, upstream, None, seed=STAGE_SEEDS["rewrite"])


@task(name="longcap", cache_policy=NO_CACHE)
def longcap(ctx: RunContext, cfg: LongcapConfig, upstream: ArtifactRef, truth: ArtifactRef) -> ArtifactRef:
    return _caption_stage(ctx, "longcap", cfg, upstream, truth, seed=STAGE_SEEDS["longcap"])


@task(name="embed", cache_policy=NO_CACHE)
def embed(ctx: RunContext, cfg: EmbedConfig, train_cfg: TrainConfig, upstream: ArtifactRef) -> ArtifactRef:
    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        tmp, parts = run.tmp, _parts(upstream)
        checkpoint = cfg.checkpoint
        if checkpoint is None:
            job = BootstrapJob(tuple(parts), cfg, train_cfg, str(tmp / L.BOOTSTRAP))
            checkpoint = run.job("bootstrap", job)["checkpoint"]
        stored = str(Path(checkpoint).relative_to(tmp)) if checkpoint.startswith(str(tmp)) else checkpoint
        manifest["model"] = {"name": cfg.model, "checkpoint": stored,
                             "source": "config" if cfg.checkpoint else "bootstrap training on the curated data"}
        worker = partial(PartEmbedder, cfg.model, checkpoint, cfg.batch_size)
        results = run.map_stateful("embed", worker, [EmbedPart(p, _out(tmp, L.PARTS, i)) for i, p in enumerate(parts)])
        manifest["counts"] = _passthrough_counts(results)
        manifest["dim"] = results[0]["dim"] if results else 0

    key_config = (cfg, bootstrap_config(cfg, train_cfg)) if cfg.checkpoint is None else cfg
    return run_stage(ctx, "embed", CODE_VERSIONS["embed"], key_config, [upstream], compute)


@task(name="cluster", cache_policy=NO_CACHE)
def cluster(ctx: RunContext, cfg: ClusterConfig, upstream: ArtifactRef) -> ArtifactRef:
    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        parts = _parts(upstream)
        centers = str(run.tmp / L.CENTERS)
        manifest["points"] = run.job("fit", P.FitCenters(tuple(parts), cfg, centers))["points"]
        results = run.map("assign", [P.AssignPart(p, centers, cfg.top_k, _out(run.tmp, L.PARTS, i))
                                     for i, p in enumerate(parts)])
        manifest["counts"] = _passthrough_counts(results)

    return run_stage(ctx, "cluster", CODE_VERSIONS["cluster"], cfg, [upstream], compute)


@task(name="shard", cache_policy=NO_CACHE)
def shard(ctx: RunContext, cfg: ShardConfig, upstream: ArtifactRef) -> ArtifactRef:
    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        parts = tuple(_parts(upstream))
        rows = [pq.ParquetFile(p).metadata.num_rows for p in parts]  # counts from metadata, no data read
        plan = P.plan_shards(rows, cfg.samples_per_shard)
        out = str(run.tmp / L.SHARDS)
        Path(out).mkdir(exist_ok=True)
        results = run.map("write", [P.ShardJob(parts, tuple(slices), out, i) for i, slices in enumerate(plan)])
        write_sizes(out, {r["shard"]: r["count"] for r in results})
        written = sum(r["count"] for r in results)
        manifest["counts"] = {"rows_in": sum(rows), "rows_out": written, "filtered": 0, "quarantined": 0}
        manifest["shards"] = len(results)
        manifest["bytes"] = sum(r["bytes"] for r in results)

    return run_stage(ctx, "shard", CODE_VERSIONS["shard"], cfg, [upstream], compute)


@task(name="train", cache_policy=NO_CACHE)
def train(ctx: RunContext, cfg: TrainConfig, upstream: ArtifactRef, curate_ref: ArtifactRef | None = None
          ) -> ArtifactRef:
    """`curate_ref` gives NegCLIP the pool's metadata entries (its vocabulary), when negclip asks for them."""
    metadata = Path(curate_ref.path) / L.METADATA if curate_ref is not None else None
    uses_metadata = "negclip" in cfg.objectives and cfg.negclip.use_metadata and metadata is not None
    run_cfg = replace(cfg, negclip=replace(cfg.negclip, metadata_file=str(metadata))) if uses_metadata else cfg

    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        tmp = run.tmp
        summary = run.executor.train(run_cfg, str(Path(upstream.path) / L.SHARDS), str(tmp))
        shutil.rmtree(tmp / L.RAY_TRAIN, ignore_errors=True)  # Ray Train's duplicate of the last checkpoint
        summary["checkpoint"] = str(Path(summary["checkpoint"]).relative_to(tmp.resolve()))
        manifest["train"] = summary
        rows = upstream.counts.get("rows_out", 0)
        manifest["counts"] = {"rows_in": rows, "rows_out": rows, "filtered": 0, "quarantined": 0}

    inputs = [upstream, curate_ref] if uses_metadata else [upstream]
    return run_stage(ctx, "train", CODE_VERSIONS["train"], cfg, inputs, compute)


@task(name="eval", cache_policy=NO_CACHE)
def evaluate(ctx: RunContext, cfg: EvalConfig, ingest_cfg: IngestConfig, train_cfg: TrainConfig,
             upstream: ArtifactRef) -> ArtifactRef:
    """Scores the checkpoint on the datasets `eval.datasets` resolves to; with none (a real-data pool under
    `auto`) the stage records why it was skipped and scores nothing."""
    sources, skipped = resolve_sources(cfg.datasets, [s.format for s in ingest_cfg.sources], ingest_cfg.world)

    def compute(run: StageRun, manifest: dict[str, Any]) -> None:
        manifest["counts"] = {"rows_in": 0, "rows_out": 0, "filtered": 0, "quarantined": 0}
        manifest["datasets"] = [source.provider for source in sources]
        if skipped:
            manifest["skipped"] = skipped
            return
        checkpoint = str(Path(upstream.path) / ctx.store.manifest("train", upstream.key)["train"]["checkpoint"])
        job = EvalJob(tuple(sources), cfg, train_cfg.model, checkpoint, str(run.tmp / L.EVAL_RESULTS))
        manifest["eval"] = run.job("suite", job)

    return run_stage(ctx, "eval", CODE_VERSIONS["eval"], eval_key_config(cfg, sources), [upstream], compute)
