"""The curation stages' units of work: what one task does to one Parquet part (or, for a job, to all).

A unit is a frozen dataclass whose fields are its inputs and outputs (paths) and its settings; ``run()``
reads the inputs, calls the stage's pure functions, writes the outputs and returns small JSON-able counts.
An executor runs them (tasks.executors: Ray tasks, or in-process), and the stage marks each finished part
done, so a crash loses only the parts in flight (docs/architecture.md, "The executor seam"). Data never
travels through the executor, and this module (like all of ``curation/``) imports neither Prefect nor Ray.

Dropped rows (filtered or quarantined) are written as ``uid, stage, reason, detail`` tables beside
the kept rows, so every stage can reconcile rows in = rows out + filtered + quarantined.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from curation import balancing, captions, filters, sharding
from curation.matching import EntryMatcher
from curation.metadata import count_words_and_pairs
from curation.schema import DROPPED_SCHEMA
from curation.sources import IngestConfig, read_partition

Counts = dict[str, int]


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

@dataclass(frozen=True)
class IngestPart:
    """Pass 1: read and validate one partition; rows that cannot be used go to quarantine. The synthetic
    world's scene truth, when the source has one, goes to ``truth``."""

    cfg: IngestConfig
    span: tuple
    candidates: str
    quarantine: str
    truth: str

    def run(self) -> Counts:
        samples, truth, quarantine = read_partition(self.cfg, self.span)
        write_table(samples, self.candidates)
        write_table(quarantine, self.quarantine)
        if truth is not None:
            write_table(truth, self.truth)
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


@dataclass(frozen=True)
class DropDuplicateUids:
    """Pass 2: quarantine the rows of part ``part`` that repeat an earlier uid (``duplicates``: the
    ``duplicate_uid_table``); write the rest to ``out``, and pass 1's quarantine plus these to ``quarantine``."""

    source: str
    part: int
    duplicates: str
    pass1_quarantine: str
    out: str
    quarantine: str

    def run(self) -> Counts:
        table = read_table(self.source)
        dups = read_table(self.duplicates)
        repeat_rows = np.asarray(dups.column("row"))[np.asarray(dups.column("part")) == self.part]
        dropped = read_table(self.pass1_quarantine)
        if len(repeat_rows):
            keep = np.ones(table.num_rows, dtype=bool)
            keep[repeat_rows] = False
            uids = table.column("uid").to_pylist()
            extra = dropped_table([uids[i] for i in repeat_rows], "ingest", ["duplicate_uid"] * len(repeat_rows),
                                  ["uid seen earlier in the pool"] * len(repeat_rows))
            dropped = pa.concat_tables([dropped, extra])
            table = table.filter(pa.array(keep))
        write_table(dropped, self.quarantine)
        write_table(table, self.out)
        return {"rows_out": table.num_rows, "quarantined": int(len(repeat_rows))}


# --- filter -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FilterKeys:
    """Pass 1: per-row filter reasons plus the keys global deduplication needs, written to ``out``."""

    source: str
    cfg: filters.FilterConfig
    out: str

    def run(self) -> Counts:
        table = read_table(self.source)
        _keep, reasons = filters.row_filters(table, self.cfg)
        keys = table.select([c for c in ("uid", "image_sha256", "text") if c in table.column_names])
        if self.cfg.phash_hamming >= 0:
            keys = keys.append_column("image", table.column("image"))
        keys = keys.append_column("reason", pa.array(reasons, pa.string()))
        write_table(keys.append_column("detail", pa.array(filters.row_details(table, reasons), pa.string())),
                    self.out)
        return {"rows_in": table.num_rows}


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


@dataclass(frozen=True)
class ApplyReasons:
    """Pass 2: split one part by the global ``reasons`` table (uid, reason, detail) into kept and dropped rows."""

    source: str
    reasons: str
    stage: str
    out: str
    dropped: str

    def run(self) -> Counts:
        table = read_table(self.source)
        found = read_table(self.reasons)
        lookup = dict(zip(found.column("uid").to_pylist(),
                          zip(found.column("reason").to_pylist(), found.column("detail").to_pylist())))
        pairs = [lookup.get(uid, (None, "")) for uid in table.column("uid").to_pylist()]
        kept, dropped = split_by_reason(table, [r for r, _ in pairs], self.stage, [d for _, d in pairs])
        write_table(kept, self.out)
        write_table(dropped, self.dropped)
        return {"rows_in": table.num_rows, "rows_out": kept.num_rows, "filtered": dropped.num_rows}


# --- curate (MetaCLIP) ------------------------------------------------------------------------

@dataclass(frozen=True)
class CaptionCounts:
    """Word and adjacent-pair counts of one part's captions, for the metadata builder's PMI bigrams, written
    to ``out`` as ``first, second, count`` (``second`` null for a word); parts' counts add up to the pool's."""

    source: str
    out: str

    def run(self) -> Counts:
        words, pairs = count_words_and_pairs(read_table(self.source, ["text"]).column("text").to_pylist())
        firsts = list(words) + [a for a, _ in pairs]
        seconds = [None] * len(words) + [b for _, b in pairs]
        write_table(pa.table({"first": pa.array(firsts, pa.string()), "second": pa.array(seconds, pa.string()),
                              "count": pa.array(list(words.values()) + list(pairs.values()), pa.int64())}),
                    self.out)
        return {"words": len(words), "pairs": len(pairs)}


def read_caption_counts(paths: Sequence[str]) -> tuple[Counter, Counter]:
    """The summed ``CaptionCounts`` of several parts: (word counts, pair counts)."""
    words: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    for path in paths:
        table = read_table(path).to_pydict()
        for first, second, n in zip(table["first"], table["second"], table["count"]):
            if second is None:
                words[first] += n
            else:
                pairs[(first, second)] += n
    return words, pairs


@dataclass(frozen=True)
class MatchPart:
    """Pass 1: matched entry ids per text (``matched``) and this part's entry counts (``counts``, .npy).

    Give every part the same built EntryMatcher: building one over 300k entries costs more CPU than matching
    100k texts with it (measured by benchmarks/bench_curate.py); the Ray executor ships it once."""

    source: str
    matcher: EntryMatcher
    matched: str
    counts: str

    def run(self) -> Counts:
        table = read_table(self.source, ["uid", "text"])
        offsets, ids = self.matcher.match_arrays(table.column("text"))
        column = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(ids, pa.int32()))
        write_table(pa.table({"uid": table.column("uid"), "matched_entries": column}), self.matched)
        save_array(balancing.count_entries(column, self.matcher.num_entries), self.counts)
        return {"rows_in": table.num_rows}


def sum_arrays(paths: Sequence[str]) -> np.ndarray:
    """The element-wise sum of the .npy arrays at ``paths`` (per-part entry counts -> the pool's)."""
    return np.sum([np.load(p) for p in paths], axis=0)


def save_array(array: np.ndarray, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.save would append .npy to a name without it
        np.save(f, array)


@dataclass(frozen=True)
class BalancePart:
    """Pass 2: keep probability and seeded keep decision per sample (MetaCLIP balancing); the entry counts of
    the kept rows go to ``counts_after`` (.npy)."""

    source: str
    matched: str
    probs: np.ndarray
    seed: int
    out: str
    dropped: str
    counts_after: str

    def run(self) -> Counts:
        table = read_table(self.source)
        matched_col = read_table(self.matched).column("matched_entries").combine_chunks()
        keep_prob = balancing.keep_probs(matched_col, self.probs)
        keep = balancing.keep_mask(table.column("uid"), keep_prob, self.seed)
        has_match = np.asarray(pa.compute.list_value_length(matched_col).fill_null(0)) > 0
        reasons = [None if k else ("not_sampled" if m else "no_entry") for k, m in zip(keep, has_match)]
        details = [f"keep_prob={p:.4f}" if m else "" for m, p in zip(has_match, keep_prob)]
        table = table.append_column("matched_entries", matched_col)
        table = table.append_column("keep_prob", pa.array(keep_prob, pa.float32()))
        kept, dropped = split_by_reason(table, reasons, "curate", details)
        write_table(kept, self.out)
        write_table(dropped, self.dropped)
        save_array(balancing.count_entries(matched_col.filter(pa.array(keep)), len(self.probs)), self.counts_after)
        return {"rows_in": table.num_rows, "rows_out": kept.num_rows, "filtered": dropped.num_rows}


# --- rewrite / longcap ------------------------------------------------------------------------

def truth_rows(truth_paths: Sequence[str], uids: Sequence[str]) -> list[dict | None]:
    """The scene-truth row of each uid (None where the truth table has none), joined by uid over every
    truth part: a part's rows need not sit in the truth part of the same name. A uid repeated in the pool takes
    its first row, in part order, as ingest's deduplication keeps the first occurrence. Each call reads the uid
    and the matching rows of every truth part (the truth table is small: a scene graph per image)."""
    wanted = set(uids)
    by_uid: dict[str, dict] = {}
    for path in truth_paths:
        truth = read_table(path)
        mask = pa.compute.is_in(truth.column("uid"), value_set=pa.array(sorted(wanted), pa.string()))
        for row in truth.filter(mask).to_pylist():
            by_uid.setdefault(row["uid"], row)
    return [by_uid.get(uid) for uid in uids]


@dataclass(frozen=True)
class CaptionPart:
    """One part for a caption stage's worker (:class:`CaptionWorker`): the sample table to caption, the ingest
    artifact's truth parts (longcap only; the rewriter is text-only and gets none), and the output part."""

    source: str
    truth: tuple[str, ...]
    out: str
    seed: int


class CaptionWorker:
    """A caption stage's stateful worker: builds the backend once (a local model loads here, an HTTP client
    opens here), then adds LaCLIP ``rewrites`` (a RewriteConfig) or DreamLIP/ALIP captions (a LongcapConfig) to
    each part it is given. The answer cache lives under ``cache_root`` (None: no cache)."""

    def __init__(self, cfg: captions.RewriteConfig | captions.LongcapConfig, cache_root: str | None):
        self.cfg = cfg
        self.impl = captions.Rewriter(cfg, cache_root) if isinstance(cfg, captions.RewriteConfig) \
            else captions.Captioner(cfg, cache_root)

    def __call__(self, unit: CaptionPart) -> dict:
        table = read_table(unit.source)
        if isinstance(self.impl, captions.Rewriter):
            if unit.truth:
                raise ValueError("the rewrite stage stands in for a text-only LLM: it is given no scene truth")
            table, tally = self.impl.rewrite_table(table, unit.seed)
        else:
            rows = truth_rows(unit.truth, table.column("uid").to_pylist())
            table, tally = self.impl.longcap_table(table, rows, unit.seed)
        write_table(table, unit.out)
        return {"rows_in": table.num_rows, "rows_out": table.num_rows, "captions": tally.as_dict(),
                "backend": self.impl.describe()}


# --- cluster (MLCD): the stage's units are in curation.cluster_units ------------------------------

def embedding_matrix(table: pa.Table, column: str = "image_emb") -> np.ndarray:
    """(N, D) float32 from a list<float32> column."""
    col = table.column(column).combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(col), -1)



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


@dataclass(frozen=True)
class ShardJob:
    """Write shard number ``shard`` into ``out_dir`` from its slices ``(part index, offset, length)`` of the parts.

    Each part is memory-mapped and decoded batch by batch from the row group holding the slice's
    first row, stopping at the slice's end: the shards that share a part do not each decode all of it.
    """

    OUTPUTS: ClassVar[tuple[str, ...]] = ("out_dir",)
    """Written only: the shard folder every shard's unit writes into."""

    sources: tuple[str, ...]
    slices: tuple[tuple[int, int, int], ...]
    out_dir: str
    shard: int

    def run(self) -> dict:
        pieces = [self._slice(self.sources[part], offset, length) for part, offset, length in self.slices]
        return sharding.write_shard(pa.concat_tables(pieces), self.out_dir, self.shard)

    @staticmethod
    def _slice(path: str, offset: int, length: int) -> pa.Table:
        with pq.ParquetFile(path, memory_map=True) as pf:
            starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
            first = int(np.searchsorted(starts, offset, side="right")) - 1
            batches, row = [], int(starts[first])
            for batch in pf.iter_batches(batch_size=256, row_groups=range(first, pf.num_row_groups),
                                         use_threads=False):
                batches.append(batch)
                row += batch.num_rows
                if row >= offset + length:
                    break
            return pa.Table.from_batches(batches, pf.schema_arrow).slice(offset - int(starts[first]), length)
