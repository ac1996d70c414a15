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
from eval.jobs import eval_job
from eval.providers import eval_key_config, resolve_sources
from eval.suite import EvalConfig
from tasks.artifacts import ArtifactRef
from tasks.common import RunContext, run_stage
from tasks.parallel import ray_call, ray_map
from tasks.train_ray import train_distributed
from training.config import TrainConfig
from training.embedding import EmbedConfig
from training.jobs import bootstrap_config, bootstrap_job, embed_part

CODE_VERSIONS = {
    "ingest": "2", "filter": "2", "curate": "1", "rewrite": "2", "longcap": "2",
    "embed": "3", "cluster": "1", "shard": "1", "train": "3", "eval": "2",
}


def _parts(ref: ArtifactRef) -> list[str]:
    return P.list_parts(Path(ref.path) / "parts")


def _out(tmp: Path, folder: str, index: int) -> str:
    return str(tmp / folder / P.part_name(index))


def _passthrough_counts(results: list[dict]) -> dict[str, int]:
    rows_in = sum(r["rows_in"] for r in results)
    rows_out = sum(r["rows_out"] for r in results)
    return {"rows_in": rows_in, "rows_out": rows_out, "filtered": rows_in - rows_out, "quarantined": 0}


@task(name="ingest", cache_policy=NO_CACHE)
def ingest(ctx: RunContext, cfg: IngestConfig) -> ArtifactRef:
    def compute(tmp: Path, manifest: dict[str, Any]) -> None:
        spans = plan_partitions(cfg)
        read = ray_map(P.ingest_part, [(cfg, span, i, str(tmp)) for i, span in enumerate(spans)])
        candidates = P.list_parts(tmp / "candidates")
        P.write_table(P.duplicate_uid_table(candidates), tmp / "duplicates.parquet")
        calls = [(p, i, str(tmp / "duplicates.parquet"), _out(tmp, "parts", i), _out(tmp, "quarantine", i))
                 for i, p in enumerate(candidates)]
        kept = ray_map(P.drop_duplicate_uids_part, calls)
        manifest["counts"] = {"rows_in": sum(r["rows_in"] for r in read), "rows_out": sum(r["rows_out"] for r in kept),
                              "filtered": 0, "quarantined": sum(r["quarantined"] for r in read + kept)}
        manifest["reasons"] = {"quarantined": P.reason_counts(P.list_parts(tmp / "quarantine"))}
        manifest["source"] = cfg.source
        shutil.rmtree(tmp / "candidates")

    return run_stage(ctx, "ingest", CODE_VERSIONS["ingest"], cfg, [], compute)


@task(name="filter", cache_policy=NO_CACHE)
def filter_(ctx: RunContext, cfg: FilterConfig, upstream: ArtifactRef) -> ArtifactRef:
    def compute(tmp: Path, manifest: dict[str, Any]) -> None:
        parts = _parts(upstream)
        keys = ray_map(P.filter_keys_part, [(p, cfg, _out(tmp, "keys", i)) for i, p in enumerate(parts)])
        reasons = P.global_filter_reasons(P.list_parts(tmp / "keys"), cfg)
        P.write_table(reasons, tmp / "reasons.parquet")
        calls = [(p, str(tmp / "reasons.parquet"), "filter", _out(tmp, "parts", i), _out(tmp, "filtered", i))
                 for i, p in enumerate(parts)]
        manifest["counts"] = _passthrough_counts(ray_map(P.apply_reasons_part, calls))
        assert manifest["counts"]["rows_in"] == sum(keys)
        manifest["reasons"] = {"filtered": P.reason_counts(P.list_parts(tmp / "filtered"))}
        for path in P.list_parts(tmp / "keys") + [str(tmp / "reasons.parquet")]:
            Path(path).unlink()

    return run_stage(ctx, "filter", CODE_VERSIONS["filter"], cfg, [upstream], compute)


def _caption_counts(parts: list[str]) -> tuple[Counter, Counter]:
    """Word and pair counts of every part's captions, counted in parallel (the metadata builder's input)."""
    counts = ray_map(P.caption_counts_part, [(p,) for p in parts])
    return sum((c[0] for c in counts), Counter()), sum((c[1] for c in counts), Counter())


@task(name="curate", cache_policy=NO_CACHE)
def curate(ctx: RunContext, cfg: CurateConfig, upstream: ArtifactRef, synthetic_only: bool = True) -> ArtifactRef:
    def compute(tmp: Path, manifest: dict[str, Any]) -> None:
        parts = _parts(upstream)
        entries, manifest["metadata"] = choose_metadata(cfg.metadata, synthetic_only, cfg.builder,
                                                        lambda: _caption_counts(parts))
        save_metadata(entries, str(tmp / "metadata.json"))
        matcher = EntryMatcher(entries)  # built once, shared by every part's task
        counts = ray_map(P.match_part, [(p, matcher, _out(tmp, "matched", i)) for i, p in enumerate(parts)])
        before = np.sum(counts, axis=0)
        probs = entry_probs(before, cfg.t)
        calls = [(p, _out(tmp, "matched", i), probs, cfg.seed, _out(tmp, "parts", i), _out(tmp, "filtered", i))
                 for i, p in enumerate(parts)]
        results = ray_map(P.balance_part, calls)
        after = np.sum([r.pop("counts_after") for r in results], axis=0)
        P.write_table(entry_count_table(entries, before, after, probs), tmp / "entry_counts.parquet")
        manifest["counts"] = _passthrough_counts(results)
        manifest["reasons"] = {"filtered": P.reason_counts(P.list_parts(tmp / "filtered"))}
        manifest["distribution"] = distribution_stats(before, after, cfg.t)
        manifest["top_entries"] = top_entries(entries, before, after, n=20)
        (tmp / "curate_stats.json").write_text(json.dumps(manifest["distribution"]))

    return run_stage(ctx, "curate", CODE_VERSIONS["curate"], curate_key_config(cfg, synthetic_only), [upstream],
                     compute)


def _caption_stage(ctx: RunContext, stage: str, cfg: RewriteConfig | LongcapConfig, upstream: ArtifactRef,
                   ingest_ref: ArtifactRef | None, seed: int) -> ArtifactRef:
    """`ingest_ref` gives the scene truth to the captioner (longcap); the rewriter (a text-only LLM) gets None."""
    truth_dir = Path(ingest_ref.path) / "truth" if ingest_ref is not None else None
    truth_parts = {Path(p).name for p in P.list_parts(truth_dir)} if truth_dir is not None else set()

    def compute(tmp: Path, manifest: dict[str, Any]) -> None:
        calls = [(p, str(truth_dir / Path(p).name) if Path(p).name in truth_parts else None,
                  _out(tmp, "parts", i), cfg, seed)
                 for i, p in enumerate(_parts(upstream))]
        manifest["counts"] = _passthrough_counts(ray_map(P.caption_part, calls))
        manifest["backend"] = make_backend(cfg.backend, cfg.error_rate).describe(stage)

    inputs = [upstream] if ingest_ref is None else [upstream, ingest_ref]
    return run_stage(ctx, stage, CODE_VERSIONS[stage], cfg, inputs, compute)


@task(name="rewrite", cache_policy=NO_CACHE)
def rewrite(ctx: RunContext, cfg: RewriteConfig, upstream: ArtifactRef) -> ArtifactRef:
    return _caption_stage(ctx, "rewrite", cfg, upstream, None, seed=STAGE_SEEDS["rewrite"])


@task(name="longcap", cache_policy=NO_CACHE)
def longcap(ctx: RunContext, cfg: LongcapConfig, upstream: ArtifactRef, ingest_ref: ArtifactRef) -> ArtifactRef:
    return _caption_stage(ctx, "longcap", cfg, upstream, ingest_ref, seed=STAGE_SEEDS["longcap"])


@task(name="embed", cache_policy=NO_CACHE)
def embed(ctx: RunContext, cfg: EmbedConfig, train_cfg: TrainConfig, upstream: ArtifactRef) -> ArtifactRef:
    def compute(tmp: Path, manifest: dict[str, Any]) -> None:
        parts = _parts(upstream)
        checkpoint = cfg.checkpoint
        if checkpoint is None:
            checkpoint = ray_call(bootstrap_job, parts, cfg, train_cfg, str(tmp / "bootstrap"))
        stored = str(Path(checkpoint).relative_to(tmp)) if checkpoint.startswith(str(tmp)) else checkpoint
        manifest["model"] = {"name": cfg.model, "checkpoint": stored,
                             "source": "config" if cfg.checkpoint else "bootstrap training on the curated data"}
        calls = [(p, cfg.model, checkpoint, cfg.batch_size, _out(tmp, "parts", i)) for i, p in enumerate(parts)]
        results = ray_map(embed_part, calls)
        manifest["counts"] = _passthrough_counts(results)
        manifest["dim"] = results[0]["dim"] if results else 0

    key_config = (cfg, bootstrap_config(cfg, train_cfg)) if cfg.checkpoint is None else cfg
    return run_stage(ctx, "embed", CODE_VERSIONS["embed"], key_config, [upstream], compute)


@task(name="cluster", cache_policy=NO_CACHE)
def cluster(ctx: RunContext, cfg: ClusterConfig, upstream: ArtifactRef) -> ArtifactRef:
    def compute(tmp: Path, manifest: dict[str, Any]) -> None:
        parts = _parts(upstream)
        centers = str(tmp / "centers.npy")
        manifest["points"] = ray_call(P.fit_centers_job, parts, cfg, centers)
        calls = [(p, centers, cfg.top_k, _out(tmp, "parts", i)) for i, p in enumerate(parts)]
        manifest["counts"] = _passthrough_counts(ray_map(P.assign_part, calls))

    return run_stage(ctx, "cluster", CODE_VERSIONS["cluster"], cfg, [upstream], compute)


@task(name="shard", cache_policy=NO_CACHE)
def shard(ctx: RunContext, cfg: ShardConfig, upstream: ArtifactRef) -> ArtifactRef:
    def compute(tmp: Path, manifest: dict[str, Any]) -> None:
        parts = _parts(upstream)
        rows = [pq.ParquetFile(p).metadata.num_rows for p in parts]  # counts from metadata, no data read
        plan = P.plan_shards(rows, cfg.samples_per_shard)
        out = str(tmp / "shards")
        Path(out).mkdir()
        results = ray_map(P.shard_job, [(parts, slices, out, i) for i, slices in enumerate(plan)])
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
    metadata = Path(curate_ref.path) / "metadata.json" if curate_ref is not None else None
    uses_metadata = "negclip" in cfg.objectives and cfg.negclip.use_metadata and metadata is not None
    run_cfg = replace(cfg, negclip=replace(cfg.negclip, metadata_file=str(metadata))) if uses_metadata else cfg

    def compute(tmp: Path, manifest: dict[str, Any]) -> None:
        summary = train_distributed(run_cfg, str(Path(upstream.path) / "shards"), str(tmp))
        shutil.rmtree(tmp / "ray_train", ignore_errors=True)  # Ray Train's duplicate of the last checkpoint
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

    def compute(tmp: Path, manifest: dict[str, Any]) -> None:
        manifest["counts"] = {"rows_in": 0, "rows_out": 0, "filtered": 0, "quarantined": 0}
        manifest["datasets"] = [source.provider for source in sources]
        if skipped:
            manifest["skipped"] = skipped
            return
        checkpoint = str(Path(upstream.path) / ctx.store.manifest("train", upstream.key)["train"]["checkpoint"])
        manifest["eval"] = ray_call(eval_job, sources, cfg, train_cfg.model, checkpoint, str(tmp))

    return run_stage(ctx, "eval", CODE_VERSIONS["eval"], eval_key_config(cfg, sources), [upstream], compute)
