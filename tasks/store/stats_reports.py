"""The named reports of ``curaclip stats --report NAME``: a few SQL queries over the catalog's views (through the
read-only connection of :func:`tasks.store.catalog.reading`, so a report reads what any query may, no more) and
their PNG plots, written where the caller says (never into the workdir).

``curation``: MetaCLIP's entry counts (head and tail before and after balancing) and the filters' reasons;
``clusters``: samples per k-means center and the multi-label assignment; ``captions``: the caption stages'
requests and every caption field's coverage and length, overall and per top-1 cluster; ``shards``: samples and
bytes per WebDataset shard; ``quarantine``: quarantined rows per stage and reason, with examples.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stats runs on servers and CI

import matplotlib.pyplot as plt  # noqa: E402

from tasks.store.catalog import QueryError, Reader  # noqa: E402

Table = tuple[list[str], list[tuple]]
"""(column names, rows), as :meth:`Reader.sql` returns them."""


@dataclass(frozen=True)
class Report:
    """A report's tables, by name in print order, and the plot files it wrote."""

    tables: dict[str, Table]
    plots: list[Path]


def _require(reader: Reader, report: str, *names: str) -> None:
    """Refuse in one line a report whose views the run did not make (its stages did not run)."""
    _, rows = reader.sql("SELECT table_name FROM information_schema.tables")
    if missing := [n for n in names if n not in {r[0] for r in rows}]:
        raise QueryError(f"the {report} report needs the views {', '.join(missing)}: run the stages that make them")


def _columns(reader: Reader, view: str) -> set[str]:
    return {row[0] for row in reader.sql(f'DESCRIBE "{view}"')[1]}


def _save(fig, folder: Path, name: str) -> Path:
    out = folder / f"{name}.png"
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# --- curation ----------------------------------------------------------------------------------

CURATION = {
    "summary": "SELECT t, entries, entries_matched, head_entries, tail_entries_matched,"
               " round(entropy_bits_before, 3) AS entropy_bits_before, round(entropy_bits_after, 3) AS"
               " entropy_bits_after FROM curate_stats",
    "head_tail": "SELECT CASE WHEN e.count_before > s.t THEN 'head' ELSE 'tail' END AS part, count(*) AS entries,"
                 " count(*) FILTER (WHERE e.count_before > 0) AS matched, sum(e.count_before) AS matches_before,"
                 " sum(e.count_after) AS matches_after,"
                 " round(sum(e.count_before) / sum(sum(e.count_before)) OVER (), 3) AS share_before,"
                 " round(sum(e.count_after) / sum(sum(e.count_after)) OVER (), 3) AS share_after"
                 " FROM entry_counts e, curate_stats s GROUP BY part ORDER BY part",
    "top_entries": "SELECT entry, count_before, count_after, round(prob::DOUBLE, 3) AS keep_prob FROM entry_counts"
                   " ORDER BY count_before DESC, entry LIMIT 10",
    "dropped": "SELECT stage, reason, count(*) AS samples FROM filtered GROUP BY ALL ORDER BY stage, samples DESC",
}


def curation_report(reader: Reader, folder: Path) -> Report:
    _require(reader, "curation", "curate_stats", "entry_counts", "filtered")
    tables = {name: reader.sql(sql) for name, sql in CURATION.items()}
    _, counts = reader.sql("SELECT count_before, count_after FROM entry_counts ORDER BY count_before DESC")
    t = tables["summary"][1][0][0]
    fig, (ax, cum) = plt.subplots(1, 2, figsize=(10, 4))
    for i, label in enumerate(("before balancing", "after balancing")):
        ranked = sorted((row[i] for row in counts), reverse=True)
        total = max(1, sum(ranked))
        ax.plot(range(1, len(ranked) + 1), [max(c, 0.5) for c in ranked], label=label)
        cum.plot([(k + 1) / len(ranked) for k in range(len(ranked))],
                 [c / total for c in itertools.accumulate(ranked)], label=label)
    ax.axhline(t, color="grey", linestyle="--", label=f"t = {t}")
    ax.set(xlabel="entry rank", ylabel="matched samples", yscale="log", title="Metadata entry counts")
    cum.set(xlabel="fraction of entries (sorted by count)", ylabel="cumulative share of matches",
            title="Head and tail")
    ax.legend(), cum.legend()
    return Report(tables, [_save(fig, folder, "curation-entry_counts")])


# --- clusters ----------------------------------------------------------------------------------

CLUSTERS = {
    "summary": "SELECT count(*) AS centers, count(*) FILTER (WHERE size = 0) AS empty, min(size) AS min,"
               " median(size) AS median, max(size) AS max,"
               " round(count(*) * sum(size * size) / (sum(size) * sum(size)), 3) AS imbalance FROM cluster_sizes",
    "largest": "SELECT cluster, size, round(size / sum(size) OVER (), 3) AS share FROM cluster_sizes"
               " ORDER BY size DESC, cluster LIMIT 10",
    "labels": "SELECT count(*) AS samples, round(avg(len(cluster_labels)), 2) AS labels_per_sample,"
              " round(avg(cluster_scores[1]), 4) AS mean_top1_score, round(min(cluster_scores[1])::DOUBLE, 4) AS"
              " min_top1_score FROM samples",
    "semdedup": "SELECT count(*) AS dropped_pairs, round(min(similarity), 3) AS min_similarity,"
                " round(avg(similarity), 3) AS mean_similarity FROM semdedup_pairs",
}


def clusters_report(reader: Reader, folder: Path) -> Report:
    """``imbalance``: faiss's factor, K * sum(size^2) / N^2 (1 when every center has as many samples)."""
    _require(reader, "clusters", "cluster_sizes", "semdedup_pairs", "samples")
    tables = {name: reader.sql(sql) for name, sql in CLUSTERS.items()}
    sizes = [row[0] for row in reader.sql("SELECT size FROM cluster_sizes ORDER BY size DESC")[1]]
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(10, 4))
    ax.bar(range(1, len(sizes) + 1), sizes)
    ax.set(xlabel="center rank", ylabel="samples (top-1)", title="Cluster sizes, sorted")
    hist.hist(sizes, bins=min(50, max(1, len(set(sizes)))))
    hist.set(xlabel="samples per center", ylabel="centers", title=f"{sizes.count(0)} empty of {len(sizes)}")
    return Report(tables, [_save(fig, folder, "clusters-sizes")])


# --- captions ----------------------------------------------------------------------------------

CAPTION_FIELDS = {"text": "text", "rewrite": "unnest(rewrites)", "long_caption": "long_caption",
                  "synthetic_caption": "synthetic_caption"}
"""Each caption kind and how one row per caption is taken from ``samples`` (the rewrites are a list)."""
WORDS = "CASE WHEN coalesce(trim(value), '') = '' THEN 0 ELSE len(string_split_regex(trim(value), '\\s+')) END"


def _caption_words(columns: set[str]) -> str:
    """One row per caption of the samples: (uid, caption kind, words; 0 for an empty one)."""
    fields = {k: v for k, v in CAPTION_FIELDS.items() if k in columns or k == "rewrite" and "rewrites" in columns}
    rows = " UNION ALL ".join(f"SELECT uid, '{k}' AS caption, {v} AS value FROM samples" for k, v in fields.items())
    return f"SELECT uid, caption, {WORDS} AS words FROM ({rows})"


def _per_cluster(columns: set[str]) -> str:
    counts = [f"count(*) FILTER (WHERE coalesce({c}, '') <> '') AS {c}s" for c in ("long_caption",
                                                                                  "synthetic_caption")
              if c in columns]
    if "rewrites" in columns:
        counts.insert(0, "sum(len(rewrites)) AS rewrites")
    return (f"SELECT cluster_labels[1] AS cluster, count(*) AS samples{''.join(', ' + c for c in counts)}"
            " FROM samples GROUP BY cluster ORDER BY cluster")


def captions_report(reader: Reader, folder: Path) -> Report:
    _require(reader, "captions", "caption_requests", "samples")
    columns = _columns(reader, "samples")
    words = _caption_words(columns)
    tables = {
        "requests": reader.sql("SELECT stage, backend, outcome, reason, requests FROM caption_requests"
                               " WHERE requests > 0 OR outcome = 'requests' ORDER BY stage, outcome, reason"),
        "coverage": reader.sql(f"SELECT caption, count(*) AS captions, count(*) FILTER (WHERE words = 0) AS empty,"
                               f" round(avg(words) FILTER (WHERE words > 0), 1) AS mean_words, max(words) AS"
                               f" max_words FROM ({words}) GROUP BY caption ORDER BY caption"),
    }
    if "cluster_labels" in columns:
        tables["per_cluster"] = reader.sql(_per_cluster(columns))
    _, histogram = reader.sql(f"SELECT caption, words, count(*) FROM ({words}) WHERE words > 0"
                              f" GROUP BY ALL ORDER BY caption, words")
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind in dict.fromkeys(row[0] for row in histogram):
        points = [(w, n) for k, w, n in histogram if k == kind]
        ax.step([w for w, _ in points], [n for _, n in points], where="mid", label=kind)
    ax.set(xlabel="words per caption", ylabel="captions", title="Caption lengths")
    ax.legend()
    return Report(tables, [_save(fig, folder, "captions-words")])


# --- shards ------------------------------------------------------------------------------------

def shards_report(reader: Reader, folder: Path) -> Report:
    """Samples per shard from the shards' Parquet sidecars, bytes per shard from the tar files' sizes."""
    _require(reader, "shards", "shard", "stages")
    _, [(path,)] = reader.sql("SELECT path FROM stages WHERE stage = 'shard'")
    tars = "getvariable('workdir') || '/" + path.replace("'", "''") + "/shards/*.tar'"
    per_shard = (f"SELECT s.shard, count(*) AS samples, any_value(b.size) AS bytes FROM shard s LEFT JOIN"
                 f" (SELECT parse_filename(filename) AS shard, size FROM read_blob({tars})) b USING (shard)"
                 f" GROUP BY s.shard")
    tables = {
        "summary": reader.sql(f"SELECT count(*) AS shards, sum(samples) AS samples, sum(bytes) AS bytes,"
                              f" min(samples) AS min_samples, max(samples) AS max_samples,"
                              f" CAST(round(sum(bytes) / sum(samples)) AS BIGINT) AS bytes_per_sample"
                              f" FROM ({per_shard})"),
        "shards": reader.sql(f"{per_shard} ORDER BY s.shard"),
    }
    rows = tables["shards"][1]
    fig, (ax, mb) = plt.subplots(1, 2, figsize=(10, 4))
    ax.bar(range(len(rows)), [r[1] for r in rows])
    ax.set(xlabel="shard", ylabel="samples", title="Samples per shard")
    mb.bar(range(len(rows)), [(r[2] or 0) / 2**20 for r in rows])
    mb.set(xlabel="shard", ylabel="MiB", title="Shard size")
    return Report(tables, [_save(fig, folder, "shards-sizes")])


# --- quarantine --------------------------------------------------------------------------------

QUARANTINE = {
    "stages": "SELECT stage, rows_in, quarantined, round(quarantined / greatest(rows_in, 1), 4) AS share"
              " FROM stages WHERE stage = 'ingest' OR quarantined > 0",
    "reasons": "SELECT stage, reason, count(*) AS samples FROM quarantine GROUP BY ALL ORDER BY samples DESC,"
               " stage, reason",
    "examples": "SELECT stage, reason, uid, left(detail, 80) AS detail FROM (SELECT *, row_number() OVER"
                " (PARTITION BY stage, reason ORDER BY uid) AS n FROM quarantine) WHERE n <= 3"
                " ORDER BY stage, reason, uid",
}


def quarantine_report(reader: Reader, folder: Path) -> Report:
    """No plot when nothing was quarantined."""
    _require(reader, "quarantine", "quarantine", "stages")
    tables = {name: reader.sql(sql) for name, sql in QUARANTINE.items()}
    if not (reasons := tables["reasons"][1]):
        return Report(tables, [])
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.4 * len(reasons))))
    ax.barh([f"{stage}: {reason}" for stage, reason, _ in reasons][::-1], [n for *_, n in reasons][::-1])
    ax.set(xlabel="samples", title="Quarantined samples per reason")
    return Report(tables, [_save(fig, folder, "quarantine-reasons")])


REPORTS: Mapping[str, Callable[[Reader, Path], Report]] = {
    "curation": curation_report,
    "clusters": clusters_report,
    "captions": captions_report,
    "shards": shards_report,
    "quarantine": quarantine_report,
}


# --- output ------------------------------------------------------------------------------------

FORMATS = ("table", "csv", "json")


def _jsonable(value):
    """A DuckDB value as JSON has it: NaN and infinities as null, decimals as numbers, times as ISO 8601,
    bytes as base64, anything else unknown as its text."""
    import base64
    import datetime
    import decimal
    import math

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return _jsonable(float(value))
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta)):
        return str(value) if isinstance(value, datetime.timedelta) else value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def records(table: Table) -> list[dict]:
    """A table as JSON: one object per row."""
    columns, rows = table
    return [{c: _jsonable(v) for c, v in zip(columns, row)} for row in rows]


def format_csv(table: Table) -> str:
    """RFC 4180 CSV with a header; lists and structs as JSON, NULL as an empty field."""
    import csv
    import io
    import json

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table[0])
    for row in records(table):
        writer.writerow(["" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else v
                         for v in row.values()])
    return out.getvalue().rstrip("\n")


def render(tables: Mapping[str, Table], fmt: str, named: bool) -> str:
    """``tables`` in ``fmt``. ``named`` (a report): ``table`` and ``csv`` head each table with its name
    (``csv``: a ``# name`` line), ``json`` is one object of named tables; else the one table alone (``json``:
    a list of row objects)."""
    import json

    from tasks.store.catalog import format_table

    if fmt == "json":
        doc = {name: records(t) for name, t in tables.items()} if named else records(next(iter(tables.values())))
        return json.dumps(doc, indent=2)
    one = format_csv if fmt == "csv" else lambda t: format_table(*t) + ("" if t[1] else "\n(no rows)")
    if not named:
        return one(next(iter(tables.values())))
    head = "# {}" if fmt == "csv" else "{}:"
    return "\n\n".join(f"{head.format(name)}\n{one(t)}" for name, t in tables.items())
