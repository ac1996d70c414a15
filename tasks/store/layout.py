"""Artifact file and folder names, in one place: the stage tasks write them, the catalog and the report
read them (docs/architecture.md, "Artifacts and caching"). Library code is handed full paths and spells none
of these; its own formats keep their names where they are defined (a shard folder's ``sizes.json``,
``curation.sharding``; a training run's ``checkpoints/``, ``training.checkpoints``)."""

from __future__ import annotations

from training import METRICS_FILE as _METRICS_FILE

MANIFEST = "manifest.json"
"""Every artifact's record; an artifact is complete if and only if it has one."""

# Sample tables, one Parquet part per partition (curation.partitions.part_name).
PARTS = "parts"
"""the stage's kept rows"""
FILTERED = "filtered"
"""dropped rows a filter decided on: uid, stage, reason, detail"""
QUARANTINE = "quarantine"
"""dropped rows of bad input, same schema"""
TRUTH = "truth"
"""ingest, synthetic world only: the scene truth per uid, read by the simulated captioner (longcap)"""

DUPLICATES = "duplicates.parquet"
"""ingest: part, row and uid of every repeated uid after its first occurrence"""

# ingest and filter intermediates (removed before the artifact is published)
CANDIDATES = "candidates"
READ_QUARANTINE = "quarantine_read"
FILTER_KEYS = "keys"
FILTER_REASONS = "reasons.parquet"

# curate
METADATA = "metadata.json"
"""the MetaCLIP entries the pool was matched against"""
MATCHED = "matched"
"""matched entry ids per uid"""
ENTRY_COUNTS = "entry_counts.parquet"
"""per entry: count before and after balancing, and its keep probability"""
CURATE_STATS = "curate_stats.json"
CAPTION_COUNTS = "caption_counts"
MATCH_COUNTS = "match_counts"
KEPT_COUNTS = "kept_counts"

# embed, cluster, shard, train, eval
BOOTSTRAP = "bootstrap"
"""embed: the bootstrap training run when no checkpoint was given"""
CENTERS = "centers.npy"
"""cluster: the k-means centers, float32, one unit row per center (the MLCD loss's class count is its rows)"""
CLUSTER_SIZES = "cluster_sizes.parquet"
"""cluster: samples per center (top-1 assignment, before the embedding filters): cluster, size"""
SEMDEDUP_PAIRS = "semdedup_pairs"
"""cluster: SemDeDup's dropped samples, the earlier sample each duplicates, and their cosine"""
BUCKETS = "buckets"
GROUPED = "grouped"
SIZE_PARTS = "sizes"
CLIP_THRESHOLD = "clip_threshold.txt"
TARGET_EMBEDDINGS = "target_embeddings.npy"
"""cluster intermediates: rows bucketed by top-1 center, per-part sizes, the CLIP-score threshold, the
image-based filter's target embeddings (the last two stay in the artifact)"""
SHARDS = "shards"
"""WebDataset tars, Parquet sidecars and sizes.json"""
RAY_TRAIN = "ray_train"
"""train: Ray Train's storage (its run state and copy of the newest checkpoint), removed when training ends"""
TRAIN_METRICS = _METRICS_FILE
"""train: one JSON line per logged step (training.progress writes it; the name is training.METRICS_FILE)"""
EVAL_RESULTS = "results.json"
"""eval: every (dataset, task) result in CLIP_benchmark's shape, in a list; results/ holds one file each"""

# --- beside the artifacts (workdir level) ---
CAPTION_CACHE = "cache/captions"
"""the caption stages' per-sample answer cache (curation.captions.cache), one folder per (stage, backend, model);
it outlives artifacts, so a forced or changed rerun asks a model only for what it has not answered"""
FEATURE_CACHE = "cache/features"
"""eval image features per (checkpoint, preprocessing, dataset) (eval/features.py): a rerun encodes nothing."""
