"""`curaclip stats --report NAME` and `--format`: each report's tables on a small catalog whose numbers are known,
its plots written where asked and nothing in the workdir, and every output format of reports and queries."""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from tasks.store import layout as L
from tasks.store.artifacts import ArtifactStore
from tasks.store.catalog import QueryError, build_catalog, reading
from tasks.store.stats_reports import REPORTS, render

UIDS = ["a", "b", "c", "d"]


def _publish(store, stage, key, counts, files):
    """An artifact whose files are ``{relative path: pyarrow table | text | bytes}``."""
    with store.writing(stage, key, {"counts": counts}) as staging:
        for rel, content in files.items():
            path = staging.path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, pa.Table):
                pq.write_table(content, path)
            else:
                path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return store.ref(stage, key, status="computed")


def _tar(names: list[str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name in names:
            info = tarfile.TarInfo(f"{name}.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"cap"))
    return out.getvalue()


def _dropped(uids, stage, reasons, details=None):
    return pa.table({"uid": uids, "stage": [stage] * len(uids), "reason": reasons,
                     "detail": details or [""] * len(uids)})


def _refs(workdir: Path) -> dict:
    store = ArtifactStore(workdir)
    pool = pa.table({"uid": UIDS + ["e", "f"], "text": ["a red cube", "blue", "", "a cat", "x", "y"]})
    curated = pa.table({"uid": UIDS, "text": ["a red cube", "blue", "", "a cat"],
                        "matched_entries": [[0], [0, 1], [1], [2]]})
    clustered = curated.append_column("cluster_labels", [[[0, 1], [0, 1], [1, 0], [1, 0]]]) \
        .append_column("cluster_scores", pa.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]],
                                                  pa.list_(pa.float32()))) \
        .append_column("rewrites", [[["a crimson cube", "red box"], ["azure"], [], ["a kitten"]]]) \
        .append_column("long_caption", [["one two three four", "", "five six", "seven"]])
    stats = {"t": 2, "entries": 3, "entries_matched": 3, "head_entries": 1, "tail_entries_matched": 2,
             "matches_before": 6, "matches_after": 5, "head_share_before": 0.5, "head_share_after": 0.4,
             "entropy_bits_before": 1.459, "entropy_bits_after": 1.522, "max_count_before": 3, "max_count_after": 2}
    return {
        "ingest": _publish(store, "ingest", "k1", {"rows_in": 8, "rows_out": 6, "quarantined": 2}, {
            "parts/part-00000.parquet": pool,
            "quarantine/part-00000.parquet": _dropped(["g", "h"], "ingest", ["undecodable_image"] * 2,
                                                      ["truncated JPEG", "zero bytes"])}),
        "curate": _publish(store, "curate", "k2", {"rows_in": 6, "rows_out": 4, "filtered": 2}, {
            "parts/part-00000.parquet": curated,
            "filtered/part-00000.parquet": _dropped(["e", "f"], "curate", ["no_entry", "not_sampled"]),
            L.ENTRY_COUNTS: pa.table({"entry_id": pa.array([0, 1, 2], pa.int32()), "entry": ["red", "blue", "cat"],
                                      "count_before": [3, 2, 1], "count_after": [2, 2, 1],
                                      "prob": pa.array([2 / 3, 1.0, 1.0], pa.float32())}),
            L.CURATE_STATS: json.dumps(stats)}),
        "cluster": _publish(store, "cluster", "k3", {"rows_in": 4, "rows_out": 4}, {
            "parts/part-00000.parquet": clustered,
            L.CLUSTER_SIZES: pa.table({"cluster": pa.array([0, 1, 2], pa.int32()), "size": [2, 2, 0]})}),
        "shard": _publish(store, "shard", "k4", {"rows_in": 4, "rows_out": 4}, {
            "shards/00000.parquet": pa.table({"uid": UIDS[:3], "shard": ["00000.tar"] * 3, "key": ["0", "1", "2"]}),
            "shards/00000.tar": _tar(["0", "1", "2"]),
            "shards/00001.parquet": pa.table({"uid": UIDS[3:], "shard": ["00001.tar"], "key": ["3"]}),
            "shards/00001.tar": _tar(["3"])}),
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = Path(os.path.realpath(tmp_path_factory.mktemp("reports")))
    build_catalog(workdir, _refs(workdir))
    return workdir


def _snapshot(folder: Path) -> dict[str, tuple]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _report(workdir: Path, name: str, plots: Path):
    with reading(workdir) as reader:
        return REPORTS[name](reader, plots)


def _rows(report, table):
    columns, rows = report.tables[table]
    return [dict(zip(columns, row)) for row in rows]


def test_curation_head_and_tail(workdir, tmp_path):
    report = _report(workdir, "curation", tmp_path)
    assert _rows(report, "head_tail") == [
        {"part": "head", "entries": 1, "matched": 1, "matches_before": 3, "matches_after": 2,
         "share_before": 0.5, "share_after": 0.4},
        {"part": "tail", "entries": 2, "matched": 2, "matches_before": 3, "matches_after": 3,
         "share_before": 0.5, "share_after": 0.6}]
    assert _rows(report, "summary")[0]["t"] == 2
    assert [r["entry"] for r in _rows(report, "top_entries")] == ["red", "blue", "cat"]
    assert [(r["reason"], r["samples"]) for r in _rows(report, "dropped")] == [("no_entry", 1), ("not_sampled", 1)]


def test_clusters_sizes_and_labels(workdir, tmp_path):
    report = _report(workdir, "clusters", tmp_path)
    assert _rows(report, "summary") == [{"centers": 3, "empty": 1, "min": 0, "median": 2.0, "max": 2,
                                         "imbalance": 1.5}]  # 3 * (4 + 4) / 4^2
    assert _rows(report, "labels")[0] == {"samples": 4, "labels_per_sample": 2.0, "mean_top1_score": 0.75,
                                          "min_top1_score": 0.6}
    assert _rows(report, "semdedup") == [{"dropped_pairs": 0, "min_similarity": None, "mean_similarity": None}]


def test_captions_coverage_and_per_cluster(workdir, tmp_path):
    report = _report(workdir, "captions", tmp_path)
    assert {r["caption"]: (r["captions"], r["empty"], r["max_words"]) for r in _rows(report, "coverage")} == {
        "text": (4, 1, 3), "rewrite": (4, 0, 3), "long_caption": (4, 1, 4)}
    assert _rows(report, "per_cluster") == [{"cluster": 0, "samples": 2, "rewrites": 3, "long_captions": 1},
                                            {"cluster": 1, "samples": 2, "rewrites": 1, "long_captions": 2}]


def test_shards_samples_and_bytes(workdir, tmp_path):
    report = _report(workdir, "shards", tmp_path)
    tars = sorted((workdir / "artifacts" / "shard" / "k4" / "shards").glob("*.tar"))
    assert _rows(report, "shards") == [
        {"shard": "00000.tar", "samples": 3, "bytes": tars[0].stat().st_size},
        {"shard": "00001.tar", "samples": 1, "bytes": tars[1].stat().st_size}]
    assert _rows(report, "summary")[0]["shards"] == 2


def test_quarantine_reasons_and_examples(workdir, tmp_path):
    report = _report(workdir, "quarantine", tmp_path)
    assert _rows(report, "reasons") == [{"stage": "ingest", "reason": "undecodable_image", "samples": 2}]
    assert _rows(report, "stages") == [{"stage": "ingest", "rows_in": 8, "quarantined": 2, "share": 0.25}]
    assert [r["detail"] for r in _rows(report, "examples")] == ["truncated JPEG", "zero bytes"]


TABLES = {"curation": ["summary", "head_tail", "top_entries", "dropped"],
          "clusters": ["summary", "largest", "labels", "semdedup"],
          "captions": ["requests", "coverage", "per_cluster"],
          "shards": ["summary", "shards"],
          "quarantine": ["stages", "reasons", "examples"]}


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_every_report_writes_its_plots_where_asked_and_nothing_in_the_workdir(workdir, tmp_path, name, capsys):
    before = _snapshot(workdir)
    plots = tmp_path / "plots"
    assert main(["stats", "--workdir", str(workdir), "--report", name, "--plots", str(plots)]) == 0
    out = capsys.readouterr().out
    written = [Path(line.removeprefix("wrote ")) for line in out.splitlines() if line.startswith("wrote ")]
    assert written and all(p.parent == plots and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    assert [line[:-1] for line in out.splitlines() if line.endswith(":")] == TABLES[name]
    assert _snapshot(workdir) == before


def test_a_report_in_json_is_an_object_of_tables_and_csv_names_each(workdir, tmp_path, capsys):
    assert main(["stats", "--workdir", str(workdir), "--report", "shards", "--format", "json",
                 "--plots", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert list(doc) == ["summary", "shards"] and doc["shards"][1] == {"shard": "00001.tar", "samples": 1,
                                                                        "bytes": doc["shards"][1]["bytes"]}
    assert "wrote " in captured.err  # stdout stays JSON
    assert main(["stats", "--workdir", str(workdir), "--report", "quarantine", "--format", "csv",
                 "--plots", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# stages\nstage,rows_in,quarantined,share\ningest,8,2,0.25\n")
    assert "# reasons\nstage,reason,samples\ningest,undecodable_image,2" in out


def test_queries_and_the_default_table_in_every_format(workdir, capsys):
    assert main(["stats", "--workdir", str(workdir), "--format", "json",
                 "SELECT uid, matched_entries FROM curate ORDER BY uid LIMIT 2"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"uid": "a", "matched_entries": [0]},
                                                   {"uid": "b", "matched_entries": [0, 1]}]
    assert main(["stats", "--workdir", str(workdir), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["stage"], r["rows_out"], r["quarantined"]) for r in rows][0] == ("ingest", "6", "2")
    assert main(["stats", "--workdir", str(workdir), "--format", "csv",
                 "SELECT [1, 2] AS l, NULL AS n, 'a,b' AS s"]) == 0
    assert capsys.readouterr().out == 'l,n,s\n"[1, 2]",,"a,b"\n'


def test_render_of_an_empty_table():
    assert render({"t": (["a"], [])}, "table", named=True) == "t:\na\n-\n(no rows)"
    assert render({"t": (["a"], [])}, "json", named=False) == "[]"


@pytest.mark.parametrize("args, words", [
    (["--report", "shards", "SELECT 1"], "either SQL or --report"),
    (["--report", "shards", "--plots", "{workdir}/plots"], "inside the workdir"),
    (["--report", "shards", "--plots", "{workdir}"], "inside the workdir"),
])
def test_refused_report_arguments(workdir, args, words, capsys):
    before = _snapshot(workdir)
    assert main(["stats", "--workdir", str(workdir), *[a.format(workdir=workdir) for a in args]]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert _snapshot(workdir) == before


def test_a_report_whose_views_are_missing_says_which(tmp_path):
    store = ArtifactStore(tmp_path)
    refs = {"ingest": _publish(store, "ingest", "k1", {"rows_in": 1, "rows_out": 1},
                               {"parts/part-00000.parquet": pa.table({"uid": ["a"], "text": ["x"]})})}
    build_catalog(tmp_path, refs)
    with pytest.raises(QueryError, match="needs the views curate_stats, entry_counts"):
        _report(tmp_path, "curation", tmp_path)
