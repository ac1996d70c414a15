"""Partition-level units of work of the curation stages: what one Ray task does to one Parquet part.

Each function reads its input part(s) from disk, calls the stage's pure functions and writes its
output part(s), returning only small counts. Data never travels through Ray's object store, and
this module (like all of ``curation/``) imports neither Prefect nor Ray, so workers stay light.

Dropped rows (filtered or quarantined) are written as ``uid, stage, reason, detail`` tables beside
the kept rows, so every stage can reconcile rows in = rows out + filtered + quarantined.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from curation import balancing, captions, clustering, filters, sharding
from curation.matching import EntryMatcher
from curation.metadata import count_words_and_pairs
from curation.schema import DROPPED_SCHEMA
from curation.sources import IngestConfig, read_partition


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def list_parts(folder: str | Path) -> list[str]:
    """Parquet parts of a folder, in part order."""
    return sorted(str(p) for p in Path(folder).glob("part-*.parquet"))


def write_table(table: pa.Table, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    return pq.read_table(str(path), columns=list(columns) if columns is not None else None)


def dropped_table(uids: Sequence[str], stage: str, reasons: Sequence[str], details: Sequence[str]) -> pa.Table:
    n = len(uids)
    return pa.table(
        [pa.array(list(uids), pa.string()), pa.array([stage] * n, pa.string()),
         pa.array(list(reasons), pa.string()), pa.array(list(details), pa.string())],
        schema=DROPPED_SCHEMA,
    )


def reason_counts(paths: Sequence[str]) -> dict[str, int]:
    """Rows per reason over dropped-row tables."""
    total: Counter[str] = Counter()
    for path in paths:
        total.update(read_table(path, ["reason"]).column("reason").to_pylist())
    return dict(sorted(total.items()))


def split_by_reason(table: pa.Table, reasons: Sequence[str | None], stage: str, details: Sequence[str] | None = None
                    ) -> tuple[pa.Table, pa.Table]:
    """(rows whose reason is None, dropped-row table of the others)."""
    keep = np.array([r is None for r in reasons], dtype=bool)
    drop_idx = np.flatnonzero(~keep)
    uids = table.column("uid").to_pylist()
    dropped = dropped_table(
        [uids[i] for i in drop_idx], stage, [reasons[i] for i in drop_idx],
        [details[i] if details is not None else "" for i in drop_idx],
    )
    return table.filter(pa.array(keep)), dropped


# --- ingest -----------------------------------------------------------------------------------

def ingest_part(cfg: IngestConfig, span: tuple, index: int, out_dir: str) -> dict[str, int]:
    """Pass 1: read and validate one partition; rows that cannot be used go to quarantine."""
    samples, truth, quarantine = read_partition(cfg, span)
    write_table(samples, Path(out_dir) / "candidates" / part_name(index))
    write_table(quarantine, Path(out_dir) / "quarantine" / part_name(index))
    if truth is not None:
        write_table(truth, Path(out_dir) / "truth" / part_name(index))
    return {"rows_in": samples.num_rows + quarantine.num_rows, "quarantined": quarantine.num_rows}


def duplicate_uid_table(candidate_paths: Sequence[str]) -> pa.Table:
    """``part, row, uid`` of every repeat of a uid after its first occurrence (in part, then row order)."""
    seen: set[str] = set()
    parts, rows, uids = [], [], []
    for part, path in enumerate(candidate_paths):
        for row, uid in enumerate(read_table(path, ["uid"]).column("uid").to_pylist()):
            if uid in seen:
                parts.append(part), rows.append(row), uids.append(uid)
            seen.add(uid)
    return pa.table({"part": pa.array(parts, pa.int32()), "row": pa.array(rows, pa.int64()),
                     "uid": pa.array(uids, pa.string())})


def drop_duplicate_uids_part(in_path: str, part: int, dup_path: str, out_part: str, quarantine_path: str
                             ) -> dict[str, int]:
    """Pass 2: quarantine the rows of this part that repeat an earlier uid; write the rest."""
    table = read_table(in_path)
    dups = read_table(dup_path)
    repeat_rows = np.asarray(dups.column("row"))[np.asarray(dups.column("part")) == part]
    if len(repeat_rows):
        keep = np.ones(table.num_rows, dtype=bool)
        keep[repeat_rows] = False
        uids = table.column("uid").to_pylist()
        extra = dropped_table([uids[i] for i in repeat_rows], "ingest", ["duplicate_uid"] * len(repeat_rows),
                              ["uid seen earlier in the pool"] * len(repeat_rows))
        write_table(pa.concat_tables([read_table(quarantine_path), extra]), quarantine_path)
        table = table.filter(pa.array(keep))
    write_table(table, out_part)
    return {"rows_out": table.num_rows, "quarantined": int(len(repeat_rows))}


# --- filter -----------------------------------------------------------------------------------

def filter_keys_part(in_path: str, cfg: filters.FilterConfig, out_path: str) -> int:
    """Pass 1: per-row filter reasons plus the keys global deduplication needs."""
    table = read_table(in_path)
    _keep, reasons = filters.row_filters(table, cfg)
    keys = table.select([c for c in ("uid", "image_sha256", "text") if c in table.column_names])
    if cfg.phash_hamming >= 0:
        keys = keys.append_column("image", table.column("image"))
    keys = keys.append_column("reason", pa.array(reasons, pa.string()))
    write_table(keys.append_column("detail", pa.array(filters.row_details(table, reasons), pa.string())), out_path)
    return table.num_rows


def global_filter_reasons(key_paths: Sequence[str], cfg: filters.FilterConfig) -> pa.Table:
    """Row reasons of every part plus duplicate reasons among the rows that passed them (a row too short to keep
    never makes a later copy of its image a duplicate): ``uid, reason, detail``."""
    keys = pa.concat_tables([read_table(p) for p in key_paths])
    reasons, details = keys.column("reason").to_pylist(), keys.column("detail").to_pylist()
    passed = np.flatnonzero([r is None for r in reasons])
    dup, dup_details = filters.duplicate_reasons(keys.take(pa.array(passed, pa.int64())), cfg)
    for i, reason, detail in zip(passed, dup, dup_details, strict=True):
        reasons[i], details[i] = reason, detail
    return pa.table({"uid": keys.column("uid"), "reason": pa.array(reasons, pa.string()),
                     "detail": pa.array(details, pa.string())})


def apply_reasons_part(in_path: str, reasons_path: str, stage: str, out_part: str, out_dropped: str
                       ) -> dict[str, int]:
    """Pass 2: split one part by the global reasons table into kept rows and dropped rows."""
    table = read_table(in_path)
    found = read_table(reasons_path)
    lookup = dict(zip(found.column("uid").to_pylist(),
                      zip(found.column("reason").to_pylist(), found.column("detail").to_pylist())))
    pairs = [lookup.get(uid, (None, "")) for uid in table.column("uid").to_pylist()]
    kept, dropped = split_by_reason(table, [r for r, _ in pairs], stage, [d for _, d in pairs])
    write_table(kept, out_part)
    write_table(dropped, out_dropped)
    return {"rows_in": table.num_rows, "rows_out": kept.num_rows, "filtered": dropped.num_rows}


# --- curate (MetaCLIP) ------------------------------------------------------------------------

def caption_counts_part(in_path: str) -> tuple[Counter, Counter]:
    """Word and adjacent-pair counts of one part's captions, for the metadata builder's PMI bigrams
    (counters of all parts add up to the pool's)."""
    return count_words_and_pairs(read_table(in_path, ["text"]).column("text").to_pylist())


def match_part(in_path: str, entries: Sequence[str] | EntryMatcher, out_path: str) -> np.ndarray:
    """Pass 1: matched entry ids per text, written beside; returns this part's entry counts.

    Pass a built EntryMatcher to share it across parts: building one over 300k entries costs more CPU
    than matching 100k texts with it (measured by benchmarks/bench_curate.py)."""
    table = read_table(in_path, ["uid", "text"])
    matcher = entries if isinstance(entries, EntryMatcher) else EntryMatcher(entries)
    offsets, ids = matcher.match_arrays(table.column("text"))
    column = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(ids, pa.int32()))
    write_table(pa.table({"uid": table.column("uid"), "matched_entries": column}), out_path)
    return balancing.count_entries(column, matcher.num_entries)


def balance_part(in_path: str, matched_path: str, probs: np.ndarray, seed: int, out_part: str,
                 out_dropped: str) -> dict:
    """Pass 2: keep probability and seeded keep decision per sample (MetaCLIP balancing)."""
    table = read_table(in_path)
    matched_col = read_table(matched_path).column("matched_entries").combine_chunks()
    keep_prob = balancing.keep_probs(matched_col, probs)
    keep = balancing.keep_mask(table.column("uid"), keep_prob, seed)
    has_match = np.asarray(pa.compute.list_value_length(matched_col).fill_null(0)) > 0
    reasons = [None if k else ("not_sampled" if m else "no_entry") for k, m in zip(keep, has_match)]
    details = [f"keep_prob={p:.4f}" if m else "" for m, p in zip(has_match, keep_prob)]
    table = table.append_column("matched_entries", matched_col)
    table = table.append_column("keep_prob", pa.array(keep_prob, pa.float32()))
    kept, dropped = split_by_reason(table, reasons, "curate", details)
    write_table(kept, out_part)
    write_table(dropped, out_dropped)
    counts_after = balancing.count_entries(matched_col.filter(pa.array(keep)), len(probs))
    return {"rows_in": table.num_rows, "rows_out": kept.num_rows, "filtered": dropped.num_rows,
            "counts_after": counts_after}


# --- rewrite / longcap ------------------------------------------------------------------------

def _truth_rows(truth_path: str | None, uids: Sequence[str]) -> list[dict | None]:
    if truth_path is None or not Path(truth_path).exists():
        return [None] * len(uids)
    truth = read_table(truth_path)
    by_uid = dict(zip(truth.column("uid").to_pylist(), truth.to_pylist()))
    return [by_uid.get(uid) for uid in uids]


def caption_part(in_path: str, truth_path: str | None, out_path: str,
                 cfg: captions.RewriteConfig | captions.LongcapConfig, seed: int) -> dict[str, int]:
    """Add LaCLIP ``rewrites`` (a RewriteConfig; text only, so `truth_path` must be None) or DreamLIP/ALIP
    ``long_caption`` + ``synthetic_caption`` (a LongcapConfig; the captioner may read the scene truth)."""
    table = read_table(in_path)
    if isinstance(cfg, captions.RewriteConfig):
        if truth_path is not None:
            raise ValueError("the rewrite stage stands in for a text-only LLM: it is given no scene truth")
        table = captions.rewrite_table(table, cfg, seed)
    else:
        table = captions.longcap_table(table, _truth_rows(truth_path, table.column("uid").to_pylist()), cfg, seed)
    write_table(table, out_path)
    return {"rows_in": table.num_rows, "rows_out": table.num_rows}


# --- cluster (MLCD) ---------------------------------------------------------------------------

def fit_centers_job(part_paths: Sequence[str], cfg: clustering.ClusterConfig, out_path: str) -> int:
    """Spherical k-means over every part's image embeddings; centers saved as .npy."""
    x = np.concatenate([embedding_matrix(read_table(p, ["image_emb"])) for p in part_paths])
    centers = clustering.fit_centers(x, cfg)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    np.save(out_path, centers)
    return int(x.shape[0])


def embedding_matrix(table: pa.Table, column: str = "image_emb") -> np.ndarray:
    """(N, D) float32 from a list<float32> column."""
    col = table.column(column).combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(col), -1)


def assign_part(in_path: str, centers_path: str, top_k: int, out_path: str) -> dict[str, int]:
    table = read_table(in_path)
    labels, scores = clustering.assign_topk(embedding_matrix(table), np.load(centers_path), top_k)
    table = table.append_column("cluster_labels", pa.array(list(labels), pa.list_(pa.int32())))
    table = table.append_column("cluster_scores", pa.array(list(scores), pa.list_(pa.float32())))
    write_table(table, out_path)
    return {"rows_in": table.num_rows, "rows_out": table.num_rows}


# --- shard ------------------------------------------------------------------------------------

def plan_shards(part_rows: Sequence[int], samples_per_shard: int) -> list[list[tuple[int, int, int]]]:
    """Slices ``(part index, offset, length)`` of each shard, filling shards in global row order."""
    shards: list[list[tuple[int, int, int]]] = [[]]
    room = samples_per_shard
    for part, rows in enumerate(part_rows):
        offset = 0
        while offset < rows:
            if room == 0:
                shards.append([])
                room = samples_per_shard
            take = min(room, rows - offset)
            shards[-1].append((part, offset, take))
            offset += take
            room -= take
    return [s for s in shards if s]


def shard_job(part_paths: Sequence[str], slices: Sequence[tuple[int, int, int]], out_dir: str, shard: int) -> dict:
    """Write one shard from its slices ``(part index, offset, length)`` of the parts.

    Each part is memory-mapped and decoded batch by batch from the row group holding the slice's
    first row, stopping at the slice's end: the shards that share a part do not each decode all of it.
    """
    pieces = []
    for part, offset, length in slices:
        with pq.ParquetFile(part_paths[part], memory_map=True) as pf:
            starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
            first = int(np.searchsorted(starts, offset, side="right")) - 1
            batches, row = [], int(starts[first])
            for batch in pf.iter_batches(batch_size=256, row_groups=range(first, pf.num_row_groups),
                                         use_threads=False):
                batches.append(batch)
                row += batch.num_rows
                if row >= offset + length:
                    break
            pieces.append(pa.Table.from_batches(batches, pf.schema_arrow).slice(offset - int(starts[first]), length))
    return sharding.write_shard(pa.concat_tables(pieces), out_dir, shard)
