"""``<workdir>/catalog.duckdb``: DuckDB views over every artifact of the latest run.

Views: one per stage (its sample table, or what the stage produced), ``samples`` (the latest sample
table with every column so far, plus ``shard``/``key`` once sharded), ``quarantine`` and
``filtered`` (dropped rows of every stage with their reasons), ``entry_counts`` (MetaCLIP counts
before and after balancing), ``cluster_sizes`` (samples per k-means center: top-1, before the embedding
filters), ``semdedup_pairs`` (SemDeDup's dropped samples and what each duplicates), ``train_metrics``,
``eval_results``; and tables ``stages`` (rows in, out, filtered, quarantined, status and seconds per stage) and
``caption_requests`` (the caption stages' requests: sent, cached, answered, failed per reason, rejected by the
cleaning rules).

Paths in the views are relative to the workdir: each names its file as ``getvariable('workdir') || '/artifacts/...'``,
and the connection sets that variable to the workdir it was opened for (a local folder, or an object-store URL
whose filesystem is registered with DuckDB through fsspec: DuckDB's ``httpfs`` is not needed). A workdir copied
to another folder, machine or bucket answers the same queries.

Queries from the command line (:func:`query`, :func:`reading`) are held in by DuckDB's own settings, not by
reading the statement (a check that it is one statement is all that is parsed): see :func:`read_only_connection`.
The catalog is rebuilt into a new file and renamed into place, so a query keeps answering while a run writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import duckdb

from tasks.store import layout as L
from tasks.store import readonly as RO
from tasks.store import workdir as W
from tasks.store.artifacts import ArtifactRef, ArtifactStore

CATALOG = "catalog.duckdb"
TABLE_STAGES = ("longcap", "rewrite", "cluster", "embed", "curate", "filter", "ingest")
"""Stages whose artifact is a sample table, latest first."""
DROPPED_COLUMNS = "NULL::VARCHAR AS uid, NULL::VARCHAR AS stage, NULL::VARCHAR AS reason, NULL::VARCHAR AS detail"


class QueryError(ValueError):
    """A query the catalog refuses or cannot answer; the message is one line."""


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_ROOT: list[Path] = []
"""The workdir of the catalog being built (its views' paths are relative to it)."""


def _lit(path: str | Path) -> str:
    """A file of the workdir as a path relative to it, resolved against the connection's ``workdir`` variable."""
    rel = Path(path).relative_to(_ROOT[-1]).as_posix()
    return f"(getvariable('workdir') || {_quote('/' + rel)})"


def _parquet(folder: Path) -> str | None:
    return f"read_parquet({_lit(folder / '*.parquet')}, union_by_name=true)" if W.listing(folder, ".parquet") else None


def _stage_sources(ref: ArtifactRef) -> str | None:
    path = Path(ref.path)
    if ref.stage == "shard":
        return _parquet(path / L.SHARDS)
    if ref.stage == "train":
        metrics = path / L.TRAIN_METRICS
        return f"read_json_auto({_lit(metrics)})" if W.exists(metrics) else None
    if ref.stage == "eval":
        results = path / L.EVAL_RESULTS
        return f"({_eval_rows(results)})" if W.exists(results) else None
    return _parquet(path / L.PARTS)


def _eval_rows(results: Path) -> str:
    """CLIP_benchmark-shaped results as rows (dataset, task, model, pretrained, language, metric, value): one
    row per metric, so one query compares a metric across datasets and runs (a metric CLIP_benchmark writes as
    NaN, acc5 below five classes, is NULL)."""
    columns = ("{dataset: 'VARCHAR', model: 'VARCHAR', pretrained: 'VARCHAR', task: 'VARCHAR', "
               "metrics: 'MAP(VARCHAR, JSON)', language: 'VARCHAR'}")
    return (f"SELECT dataset, task, model, pretrained, language, e.key AS metric, TRY_CAST(e.value AS DOUBLE) AS value"
            f" FROM read_json({_lit(results)}, columns={columns}), unnest(map_entries(metrics)) AS t(e)")


def _dropped_union(refs: Mapping[str, ArtifactRef], folder: str) -> str:
    selects = [f"SELECT uid, stage, reason, detail FROM {src}"
               for ref in refs.values() if (src := _parquet(Path(ref.path) / folder))]
    return " UNION ALL ".join(selects) if selects else f"SELECT {DROPPED_COLUMNS} WHERE false"


def _samples_view(refs: Mapping[str, ArtifactRef]) -> str | None:
    latest = next((refs[s] for s in TABLE_STAGES if s in refs), None)
    if latest is None:
        return None
    base = _stage_sources(latest)
    if "shard" in refs and (shards := _stage_sources(refs["shard"])):
        return (f"SELECT t.*, s.shard, s.key FROM {base} t"
                f" LEFT JOIN (SELECT uid, shard, key FROM {shards}) s USING (uid)")
    return f"SELECT * FROM {base}"


def _stage_rows(store: ArtifactStore, refs: Mapping[str, ArtifactRef]) -> list[tuple]:
    """One row per stage: its counts, status and seconds, its key and folder (relative to the workdir), and the
    machines that computed its parts (the manifest's ``workers``: Ray node ids)."""
    rows = []
    for stage, ref in refs.items():
        c = ref.counts
        workers = store.manifest(ref.stage, ref.key).get("workers", [])
        rows.append((stage, ref.status, c.get("rows_in", 0), c.get("rows_out", 0), c.get("filtered", 0),
                     c.get("quarantined", 0), ref.seconds, ref.key, Path(ref.path).relative_to(_ROOT[-1]).as_posix(),
                     workers))
    return rows


CAPTION_OUTCOMES = ("requests", "cached", "sent", "answered")


def _caption_rows(store: ArtifactStore, refs: Mapping[str, ArtifactRef]) -> list[tuple]:
    """(stage, backend, outcome, reason, requests) of each caption stage, from its manifest's tally: the totals,
    then the failed requests per reason and the answers the cleaning rules rejected."""
    rows = []
    for stage, ref in refs.items():
        manifest = store.manifest(ref.stage, ref.key)
        if not (tally := manifest.get("captions")):
            continue
        backend = (manifest.get("backend") or {}).get("name")
        rows += [(stage, backend, outcome, None, tally.get(outcome, 0)) for outcome in CAPTION_OUTCOMES]
        rows += [(stage, backend, "failed", reason, n) for reason, n in tally.get("failures", {}).items()]
        rows += [(stage, backend, "rejected", reason, n) for reason, n in tally.get("rejected", {}).items()]
    return rows


NO_PAIRS = "SELECT NULL::VARCHAR AS uid, NULL::VARCHAR AS duplicate_of, NULL::FLOAT AS similarity WHERE false"


def _artifact_file_views(refs: Mapping[str, ArtifactRef]) -> dict[str, str]:
    """Views over the files of one artifact: curate's entry counts and stats, cluster's sizes and SemDeDup pairs."""
    files = {"entry_counts": ("curate", L.ENTRY_COUNTS, "read_parquet"),
             "curate_stats": ("curate", L.CURATE_STATS, "read_json_auto"),
             "cluster_sizes": ("cluster", L.CLUSTER_SIZES, "read_parquet")}
    views = {name: f"SELECT * FROM {reader}({_lit(Path(refs[stage].path) / file)})"
             for name, (stage, file, reader) in files.items()
             if stage in refs and W.exists(Path(refs[stage].path) / file)}
    if "cluster" in refs:
        pairs = _parquet(Path(refs["cluster"].path) / L.SEMDEDUP_PAIRS)
        views["semdedup_pairs"] = f"SELECT * FROM {pairs}" if pairs else NO_PAIRS
    return views


@contextmanager
def connect(workdir: str | Path, database: str | Path, read_only: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to ``database`` whose views resolve against ``workdir``: a local folder, or an object-store
    URL (its fsspec filesystem registered with DuckDB, credentials from the environment). ``read_only``: the
    connection :func:`read_only_connection` makes; else a plain one (:func:`build_catalog` writes through it)."""
    if read_only:
        with read_only_connection(workdir, database) as con:
            yield con
        return
    with duckdb.connect(str(database)) as con:
        if W.is_remote(str(workdir)):
            mirror = W.driver_mirror(str(workdir))
            con.register_filesystem(mirror.fs)
            root = mirror.url
        else:
            root = W.local_path(str(workdir))
        con.execute("SET VARIABLE workdir = ?", [root])
        yield con


def _read_only_root(workdir: str | Path) -> tuple[str, object]:
    """(the URL the views' paths start with, the read-only filesystem serving it) for ``workdir``. A local
    workdir is resolved (symlinks too: DuckDB compares ``allowed_directories`` with the resolved path of a
    local file, and our local filesystem with the resolved path of every file it opens)."""
    if W.is_remote(str(workdir)):
        mirror = W.driver_mirror(str(workdir))
        return mirror.url, RO.read_only(mirror.fs)
    root = os.path.realpath(W.local_path(str(workdir)))
    return f"{RO.PROTOCOL}://{root}", RO.ReadOnlyLocalFileSystem(root)


@contextmanager
def read_only_connection(workdir: str | Path, database: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection that can read the catalog ``database`` and the files of ``workdir``, and nothing else.

    What holds it in, in the order DuckDB accepts it (measured on DuckDB 2.0.1), then locked:

    * an in-memory database with the catalog ``ATTACH``-ed ``READ_ONLY``: a connection of its own (DuckDB
      shares a file database's instance, settings included, between the connections of a process; the
      in-memory one is new each time) whose catalog refuses ``CREATE``/``INSERT``/``DROP``, ``EXPLAIN
      ANALYZE`` of them included;
    * the workdir's files through a read-only fsspec filesystem (:mod:`tasks.store.readonly`: DuckDB's
      ``allowed_directories`` would let ``COPY ... TO`` and ``EXPORT DATABASE`` write under the workdir);
    * ``temp_directory=''``: nothing spills to disk (the default is ``.tmp`` in the current folder for an
      in-memory database, ``<catalog>.tmp`` inside the workdir for a file one, which DuckDB then allows
      implicitly); a query larger than memory fails instead of writing;
    * ``allowed_directories=[<workdir URL>/]``: the one prefix reachable once external access is off; it
      can only be set while external access is on, so it comes first;
    * ``enable_external_access=false``: every other file and URL (``read_csv``, ``read_text``, ``glob``,
      ``ATTACH``, ``COPY``), ``INSTALL``/``LOAD`` and Python replacement scans refused; ``..`` is folded
      before the prefix is compared;
    * ``disabled_filesystems='LocalFileSystem'``: no local path at all, not even the attached catalog's own
      files, which DuckDB allows implicitly (after external access is off: set before, it makes
      ``SET enable_external_access`` itself fail);
    * ``lock_configuration=true``, last: ``SET``, ``RESET`` and ``PRAGMA`` of any setting refused, this one
      included.
    """
    root, fs = _read_only_root(workdir)
    with duckdb.connect(":memory:") as con:
        con.execute("ATTACH ? AS catalog (READ_ONLY)", [str(database)])
        con.execute("USE catalog")
        con.register_filesystem(fs)
        con.execute("SET VARIABLE workdir = ?", [root])
        con.execute("SET temp_directory = ''")
        con.execute(f"SET allowed_directories = [{_quote(root.rstrip('/') + '/')}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET disabled_filesystems = 'LocalFileSystem'")
        con.execute("SET lock_configuration = true")
        yield con


def build_catalog(workdir: str | Path, refs: Mapping[str, ArtifactRef]) -> Path:
    """(Re)create the catalog's views for the artifacts of ``refs`` (the latest run). ``workdir``: its local path
    (for an object-store workdir, the driver's mirror: the catalog is uploaded beside the artifacts). The catalog
    is written to a new file and renamed into place, so a query never sees it half-built."""
    path = Path(workdir) / CATALOG
    path.parent.mkdir(parents=True, exist_ok=True)
    mirror = W.mirror_of(workdir)
    _ROOT.append(Path(workdir))
    try:
        views = _views(refs)
        rows = _stage_rows(ArtifactStore(workdir, mirror), refs)
    finally:
        _ROOT.pop()
    tmp = path.with_name(f".{CATALOG}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    with connect(mirror.url if mirror is not None else workdir, tmp, read_only=False) as con:
        con.execute("CREATE TABLE stages (stage VARCHAR, status VARCHAR, rows_in BIGINT, rows_out BIGINT,"
                    " filtered BIGINT, quarantined BIGINT, seconds DOUBLE, key VARCHAR, path VARCHAR,"
                    " workers VARCHAR[])")
        if rows:
            con.executemany("INSERT INTO stages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        con.execute("CREATE TABLE caption_requests (stage VARCHAR, backend VARCHAR, outcome VARCHAR,"
                    " reason VARCHAR, requests BIGINT)")
        if rows := _caption_rows(ArtifactStore(workdir, mirror), refs):
            con.executemany("INSERT INTO caption_requests VALUES (?, ?, ?, ?, ?)", rows)
        for name, sql in views.items():
            con.execute(f'CREATE VIEW "{name}" AS {sql}')
    os.replace(tmp, path)
    if mirror is not None:
        mirror.push(path)
    return path


def _views(refs: Mapping[str, ArtifactRef]) -> dict[str, str]:
    views: dict[str, str] = {}
    for stage, ref in refs.items():
        if src := _stage_sources(ref):
            views[stage] = f"SELECT * FROM {src}"
    if samples := _samples_view(refs):
        views["samples"] = samples
    views["quarantine"] = _dropped_union(refs, L.QUARANTINE)
    views["filtered"] = _dropped_union(refs, L.FILTERED)
    views.update(_artifact_file_views(refs))
    if "train" in views:
        views["train_metrics"] = views.pop("train")
    if "eval" in views:
        views["eval_results"] = views.pop("eval")
    return views


def _check_one_statement(sql: str) -> None:
    """One statement per query (the settings of :func:`read_only_connection`, not this, keep it read-only)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise QueryError(_one_line(err)) from None
    if len(statements) != 1:
        raise QueryError(f"expected exactly one statement, got {len(statements)}")


def _one_line(err: Exception) -> str:
    """DuckDB's message on one line; for an error raised in our Python filesystem, whose message DuckDB gives
    with the whole traceback, only the exception's own last line."""
    text = str(err)
    if "Traceback (most recent call last)" in text:
        text = next((line for line in reversed(text.splitlines()) if "Error:" in line), text)
    return " ".join(text.split())


def catalog_file(workdir: str | Path) -> Path:
    """The local catalog file of ``workdir``; for an object-store workdir, downloaded from it afresh."""
    if not W.is_remote(str(workdir)):
        return Path(W.local_path(str(workdir))) / CATALOG
    mirror = W.driver_mirror(str(workdir))
    local = mirror.local / CATALOG
    if not mirror.exists(local):
        return local.with_name(".absent")
    tmp = local.with_name(f".{CATALOG}.{os.getpid()}.download")
    mirror.fs.get_file(mirror.remote(local), str(tmp))
    os.replace(tmp, local)
    return local


class Reader:
    """Read-only statements against one open catalog connection (a report's several queries share one)."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def sql(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run one statement: (column names, rows)."""
        _check_one_statement(sql)
        try:
            cursor = self.con.execute(sql)
            columns = [d[0] for d in cursor.description] if cursor.description else []
            return columns, cursor.fetchall()
        except duckdb.Error as err:
            raise QueryError(_one_line(err)) from None


@contextmanager
def reading(workdir: str | Path) -> Iterator[Reader]:
    """A :class:`Reader` of ``workdir``'s catalog (a local folder or an object-store URL)."""
    path = catalog_file(workdir)
    if not path.is_file():
        raise QueryError(f"no catalog in {workdir}: run `curaclip run` first")
    try:
        with connect(workdir, path) as con:
            yield Reader(con)
    except duckdb.Error as err:
        raise QueryError(_one_line(err)) from None


def query(workdir: str | Path, sql: str) -> tuple[list[str], list[tuple]]:
    """Run one read-only statement against the catalog: (column names, rows). ``workdir``: a local folder or an
    object-store URL."""
    _check_one_statement(sql)
    with reading(workdir) as reader:
        return reader.sql(sql)


def stage_table(workdir: str | Path) -> tuple[list[str], list[tuple]]:
    """The default ``curaclip stats`` answer: every stage's row accounting."""
    return query(workdir, "SELECT stage, status, rows_in, rows_out, filtered, quarantined, round(seconds, 1) AS seconds"
                          " FROM stages")


def caption_table(workdir: str | Path) -> tuple[list[str], list[tuple]]:
    """The caption stages' requests that did not simply succeed: failures per reason and rejected answers."""
    return query(workdir, "SELECT stage, backend, outcome, reason, requests FROM caption_requests"
                          " WHERE outcome IN ('failed', 'rejected') AND requests > 0 OR outcome = 'requests'")


def format_table(columns: list[str], rows: list[tuple]) -> str:
    cells = [columns] + [["" if v is None else (json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                          for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
