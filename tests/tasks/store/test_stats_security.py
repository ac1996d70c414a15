"""`curaclip stats` reads the catalog and the workdir's files and nothing else, and changes no file: each way
out (another path, a URL, a `..` or a symlink out of the workdir, ATTACH, COPY, EXPORT, INSTALL/LOAD, a
setting, EXPLAIN ANALYZE of a write) is refused in one line by DuckDB's settings or the read-only filesystem
(tasks.store.catalog.read_only_connection), and the files of the workdir and of a folder beside it are the same
after as before. A catalog rebuilt while queries run never fails one."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from tasks.store import layout as L
from tasks.store.artifacts import ArtifactStore
from tasks.store.catalog import QueryError, build_catalog, query, reading
from tasks.store.readonly import PROTOCOL


def _artifact(store, stage, key, table, counts, dropped=None, results=None):
    with store.writing(stage, key, {"counts": counts}) as staging:
        (staging.path / L.PARTS).mkdir()
        pq.write_table(table, staging.path / L.PARTS / "part-00000.parquet")
        if dropped is not None:
            (staging.path / L.FILTERED).mkdir()
            pq.write_table(dropped, staging.path / L.FILTERED / "part-00000.parquet")
        if results is not None:
            (staging.path / L.EVAL_RESULTS).write_text(json.dumps(results))
    return store.ref(stage, key, status="computed")


EVAL = [{"dataset": "synthetic-shapes", "task": "zeroshot_classification", "model": "m", "pretrained": "p",
         "language": "en", "metrics": {"acc1": 0.5, "acc5": 0.75}}]


def _refs(workdir: Path) -> dict:
    store = ArtifactStore(workdir)
    pool = pa.table({"uid": ["a", "b", "c"], "text": ["x", "y", "z"]})
    dropped = pa.table({"uid": ["c"], "stage": ["filter"], "reason": ["caption_too_short_words"], "detail": [""]})
    return {"ingest": _artifact(store, "ingest", "k1", pool, {"rows_in": 3, "rows_out": 3}),
            "filter": _artifact(store, "filter", "k2", pool.slice(0, 2), {"rows_in": 3, "rows_out": 2, "filtered": 1},
                                dropped),
            "eval": _artifact(store, "eval", "k3", pool.slice(0, 0), {}, results=EVAL)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A workdir with a catalog; beside it a folder of files it must not reach (a secret, a CSV, a Parquet file, a
    DuckDB database); in it a symlink to that folder and one to its own artifacts."""
    base = Path(os.path.realpath(tmp_path_factory.mktemp("security")))
    workdir, outside = base / "workdir", base / "outside"
    workdir.mkdir(), outside.mkdir()
    refs = _refs(workdir)
    build_catalog(workdir, refs)
    (outside / "secret.txt").write_text("the secret\n")
    (outside / "data.csv").write_text("a,b\n1,2\n")
    pq.write_table(pa.table({"a": [1]}), outside / "data.parquet")
    with duckdb.connect(str(outside / "other.duckdb")) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS a")
    (workdir / "escape").symlink_to(outside, target_is_directory=True)
    (workdir / "own").symlink_to(workdir / "artifacts", target_is_directory=True)
    return {"base": base, "workdir": workdir, "outside": outside, "refs": refs}


@pytest.fixture(scope="module")
def http():
    """A real HTTP server on loopback that records every request it gets."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.path)
            body = b"a,b\n1,2\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def _snapshot(base: Path) -> dict[str, tuple]:
    """Every entry under ``base`` (symlinks not followed): its kind, size and mtime."""
    found = {}
    for folder, dirs, files in os.walk(base):
        for name in dirs + files:
            info = os.lstat(Path(folder) / name)
            found[str(Path(folder, name).relative_to(base))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


RO = "{ro}"  # the workdir as the catalog's views name it: curaclip-ro:///<resolved workdir>
REFUSED_BY_CHECK = {
    "stats: SQL reading files or URLs outside the workdir": [
        ("SELECT * FROM read_csv('{out}/data.csv')", "disabled by configuration"),
        ("SELECT * FROM read_text('{out}/secret.txt')", "disabled by configuration"),
        ("SELECT * FROM read_parquet('{out}/data.parquet')", "disabled by configuration"),
        ("SELECT * FROM glob('{out}/*')", "disabled by configuration"),
        ("SELECT * FROM read_text('" + PROTOCOL + "://{out}/secret.txt')", "disabled by configuration"),
        ("SELECT * FROM glob('" + PROTOCOL + "://{out}/*')", "disabled by configuration"),
        ("SELECT * FROM read_csv('{url}/data.csv')", "disabled by configuration"),
        ("SELECT * FROM read_text('{url}/secret.txt')", "disabled by configuration"),
        ("SELECT * FROM read_parquet('{url}/data.parquet')", "disabled by configuration"),
        ("SELECT * FROM glob('{url}/*')", "disabled by configuration"),
    ],
    # the workdir's own files by their local path (DuckDB's local filesystem is off for stats)
    "stats: SQL reading the workdir's files by their local path": [
        ("SELECT * FROM read_text('{wd}/catalog.duckdb')", "LocalFileSystem has been disabled"),
        ("SELECT * FROM glob('{wd}/*')", "LocalFileSystem has been disabled"),
    ],
    "stats: SQL leaving the workdir by `..` or a symlink": [
        ("SELECT * FROM read_text('" + RO + "/../outside/secret.txt')", "disabled by configuration"),
        ("SELECT * FROM read_text('" + RO + "/artifacts/../../outside/secret.txt')", "disabled by configuration"),
        ("SELECT * FROM read_text('" + RO + "/escape/secret.txt')", "resolves outside the workdir"),
        ("SELECT * FROM read_csv('" + RO + "/escape/data.csv')", "resolves outside the workdir"),
        ("SELECT * FROM read_parquet('" + RO + "/escape/data.parquet')", "resolves outside the workdir"),
        ("SELECT * FROM glob('" + RO + "/escape/*')", "resolves outside the workdir"),
    ],
    # other databases, new or old, anywhere
    "stats: SQL attaching another database": [
        ("ATTACH '{out}/other.duckdb' AS other", "disabled by configuration"),
        ("ATTACH '{out}/new.duckdb' AS other", "disabled by configuration"),
        ("ATTACH '{wd}/new.duckdb' AS other", "LocalFileSystem has been disabled"),
        ("ATTACH '" + RO + "/new.duckdb' AS other", "read-only for curaclip stats"),
        ("ATTACH '" + RO + "/catalog.duckdb' AS other", "read-only for curaclip stats"),
    ],
    "stats: SQL writing files (COPY, EXPORT) or copying one into a table": [
        ("COPY (SELECT 1) TO '{out}/new.csv'", "disabled by configuration"),
        ("COPY (SELECT 1) TO '{wd}/new.csv'", "LocalFileSystem has been disabled"),
        ("COPY (SELECT 1) TO '" + RO + "/new.csv'", "read-only for curaclip stats"),
        ("COPY (SELECT 1) TO '" + RO + "/artifacts/ingest/k1/parts/part-00000.parquet' (FORMAT parquet)",
         "read-only for curaclip stats"),
        ("COPY (SELECT 1 AS a, 2 AS b) TO '" + RO + "/artifacts/new' (FORMAT csv, PARTITION_BY (a))",
         "read-only for curaclip stats|LocalFileSystem has been disabled"),
        ("COPY stages FROM '{out}/data.csv'", "read-only mode|disabled by configuration"),
        ("COPY memory.main.stages FROM '" + RO + "/escape/data.csv'", "does not exist|resolves outside"),
        ("EXPORT DATABASE '{out}/export'", "disabled by configuration"),
        ("EXPORT DATABASE '" + RO + "/export'", "read-only for curaclip stats"),
    ],
    "stats: SQL installing or loading an extension": [
        ("INSTALL httpfs", "disabled by configuration"),
        ("LOAD httpfs", "disabled through configuration"),
        ("LOAD '{out}/x.duckdb_extension'", "disabled through configuration"),
    ],
    # settings that would give access back (or write files)
    "stats: SQL changing a locked setting": [
        ("SET enable_external_access = true", "configuration has been locked"),
        ("SET allowed_directories = ['/']", "configuration has been locked"),
        ("SET allowed_paths = ['{out}/secret.txt']", "configuration has been locked"),
        ("SET disabled_filesystems = ''", "configuration has been locked"),
        ("SET temp_directory = '{out}'", "configuration has been locked"),
        ("SET profiling_output = '{out}/profile.json'", "configuration has been locked"),
        ("SET lock_configuration = false", "configuration has been locked"),
        ("RESET enable_external_access", "configuration has been locked"),
        ("RESET lock_configuration", "configuration has been locked"),
        ("PRAGMA enable_external_access = true", "configuration has been locked"),
        ("PRAGMA disabled_filesystems = ''", "configuration has been locked"),
        ("PRAGMA enable_profiling = 'json'", "configuration has been locked"),
    ],
    # EXPLAIN ANALYZE runs its statement
    "stats: EXPLAIN ANALYZE of a write": [
        ("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", "read-only mode"),
        ("EXPLAIN ANALYZE INSERT INTO stages SELECT * FROM stages", "read-only mode"),
        ("EXPLAIN ANALYZE COPY (SELECT 1) TO '" + RO + "/new.csv'", "read-only for curaclip stats"),
        ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{out}/new.csv'", "disabled by configuration"),
    ],
}
"""The reliability ledger's check (tests/conftest.py) -> the statements it tries, each with what its refusal says."""
REFUSED = [(check, sql, words) for check, cases in REFUSED_BY_CHECK.items() for sql, words in cases]


def _sql(template: str, world, url: str) -> str:
    return template.format(out=world["outside"], wd=world["workdir"], url=url, ro=f"{PROTOCOL}://{world['workdir']}")


@pytest.mark.parametrize("check, template, words", REFUSED, ids=[t for _, t, _ in REFUSED])
def test_refused_in_one_line_and_nothing_changes(world, http, check, template, words, monkeypatch, reliability):
    url, seen = http
    monkeypatch.chdir(world["base"])  # a relative path a statement writes would land here
    before = _snapshot(world["base"])
    with pytest.raises(QueryError, match=words) as err:
        query(world["workdir"], _sql(template, world, url))
    assert "\n" not in str(err.value)
    assert "Traceback" not in str(err.value)
    assert _snapshot(world["base"]) == before
    assert seen == []
    reliability.check(check)


ALLOWED = [
    ("SELECT uid FROM samples ORDER BY uid", [("a",), ("b",)]),
    ("SELECT reason, count(*) FROM filtered GROUP BY 1", [("caption_too_short_words", 1)]),
    ("SELECT stage, rows_out FROM stages ORDER BY stage", [("eval", 0), ("filter", 2), ("ingest", 3)]),
    ("SELECT dataset, metric, value FROM eval_results ORDER BY metric",
     [("synthetic-shapes", "acc1", 0.5), ("synthetic-shapes", "acc5", 0.75)]),
    ("SELECT count(*) FROM glob(getvariable('workdir') || '/artifacts/*/*/manifest.json')", [(3,)]),
    ("SELECT count(*) FROM read_parquet(getvariable('workdir') || '/own/ingest/k1/parts/*.parquet')", [(3,)]),
    ("SELECT parse_filename(file) AS name FROM glob(getvariable('workdir') || '/*') ORDER BY 1",  # no `escape`
     [("artifacts",), ("catalog.duckdb",), ("own",)]),
    ("SELECT count(*) FROM read_csv(getvariable('workdir') || '/artifacts/ingest/k1/manifest.json')"
     " WHERE false", [(0,)]),
    ("CREATE TABLE memory.main.scratch AS SELECT 1", [(1,)]),  # the connection's own in-memory database
]


@pytest.mark.parametrize("sql, rows", ALLOWED, ids=[s for s, _ in ALLOWED])
def test_reads_of_the_workdir_still_answer(world, sql, rows, monkeypatch):
    monkeypatch.chdir(world["base"])
    before = _snapshot(world["base"])
    assert query(world["workdir"], sql)[1] == rows
    assert _snapshot(world["base"]) == before


def test_settings_are_the_locked_ones(world):
    """What the connection runs under: the workdir's prefix and the attached catalog's own files; nothing
    spills (an in-memory database would spill into ``.tmp`` of the current folder, a file one into
    ``<catalog>.tmp``, and DuckDB would allow that folder implicitly)."""
    root = f"{PROTOCOL}://{world['workdir']}"
    with reading(world["workdir"]) as reader:
        _, [row] = reader.sql("SELECT current_setting('allowed_directories'), current_setting('allowed_paths'),"
                              " current_setting('temp_directory'), current_setting('enable_external_access'),"
                              " current_setting('lock_configuration')")
    allowed, paths, *rest = row
    assert allowed == [root + "/"] and rest == ["", False, True]  # disabled_filesystems reads '': refusals show it
    catalog = str(world["workdir"] / "catalog.duckdb")  # DuckDB allows an attached database's files (and WAL)
    assert paths and all(p.startswith(catalog) for p in paths)


def test_a_symlinked_workdir_is_resolved(world, tmp_path):
    """The workdir named through a symlink answers (its files are compared resolved)."""
    link = tmp_path / "link-to-workdir"
    link.symlink_to(world["workdir"], target_is_directory=True)
    assert query(link, "SELECT count(*) FROM samples")[1] == [(2,)]


def test_the_command_line_prints_one_line_and_exits_2(world, capsys, reliability):
    assert main(["stats", "--workdir", str(world["workdir"]),
                 f"SELECT * FROM read_text('{world['outside']}/secret.txt')"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("curaclip stats: error: ") and err.count("\n") == 1 and "the secret" not in err
    reliability.check("stats: SQL reading files or URLs outside the workdir")


def test_stats_answers_while_the_catalog_is_rebuilt(world):
    """A run rebuilds the catalog (a new file renamed into place) while stats queries it: every query answers."""
    stop, rebuilt, failures = threading.Event(), [], []

    def rebuild():
        while not stop.is_set():
            try:
                build_catalog(world["workdir"], world["refs"])
                rebuilt.append(1)
            except Exception as err:  # noqa: BLE001 (reported below)
                failures.append(err)
                return

    thread = threading.Thread(target=rebuild)
    thread.start()
    try:
        for _ in range(60):
            assert query(world["workdir"], "SELECT uid FROM samples ORDER BY uid")[1] == [("a",), ("b",)]
            assert query(world["workdir"], "SELECT count(*) FROM stages")[1] == [(3,)]
    finally:
        stop.set()
        thread.join()
    assert not failures and len(rebuilt) >= 3


S3_REFUSED = [
    ("SELECT * FROM read_text('s3://stats-security/other/secret.txt')", "disabled by configuration"),
    ("SELECT * FROM read_text('s3://stats-security/run-other/secret.txt')", "disabled by configuration"),
    ("SELECT * FROM read_text('s3://stats-security/run/../other/secret.txt')", "disabled by configuration"),
    ("SELECT * FROM glob('s3://stats-security/*')", "disabled by configuration"),
    ("COPY (SELECT 1) TO 's3://stats-security/run/new.csv'", "read-only for curaclip stats"),
    ("COPY (SELECT 1) TO 's3://stats-security/other/new.csv'", "disabled by configuration"),
    ("EXPORT DATABASE 's3://stats-security/run/export'", "read-only for curaclip stats"),
    ("ATTACH 's3://stats-security/run/new.duckdb' AS other", "requires extension 'httpfs'"),  # cannot load
]


@pytest.mark.slow
def test_an_object_store_workdir_answers_and_nothing_else_is_reached(tmp_path, monkeypatch, reliability):
    """On S3 (moto's server on loopback) DuckDB applies ``allowed_directories`` to the fsspec filesystem: the
    workdir's prefix answers, another prefix of the same bucket (a sibling sharing its name's start included) is
    refused, and writes under the prefix are refused by the read-only filesystem; no object changes."""
    import fsspec

    from tests.servers.s3_server import s3_server

    local = tmp_path / "workdir"
    local.mkdir()
    build_catalog(local, _refs(local))
    monkeypatch.setenv("CURACLIP_MIRROR_DIR", str(tmp_path / "mirrors"))
    with s3_server("stats-security"):
        fs = fsspec.filesystem("s3")
        fs.put(str(local) + "/", "stats-security/run", recursive=True)
        for prefix in ("other", "run-other"):
            fs.pipe_file(f"stats-security/{prefix}/secret.txt", b"the secret\n")
        objects = {name: (info["size"], info.get("ETag")) for name, info in
                   fs.find("stats-security", detail=True).items()}
        url = "s3://stats-security/run"
        assert query(url, "SELECT uid FROM samples ORDER BY uid")[1] == [("a",), ("b",)]
        assert query(url, "SELECT count(*) FROM glob(getvariable('workdir') || '/artifacts/*/*/manifest.json')")[1] \
            == [(3,)]
        for sql, words in S3_REFUSED:
            with pytest.raises(QueryError, match=words) as err:
                query(url, sql)
            assert "\n" not in str(err.value) and "the secret" not in str(err.value), sql
        fs.invalidate_cache()
        assert {name: (info["size"], info.get("ETag")) for name, info in
                fs.find("stats-security", detail=True).items()} == objects
    reliability.check("stats (S3 workdir): SQL reaching another prefix or writing", refused=len(S3_REFUSED))
