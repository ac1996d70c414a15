import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.store.artifacts import ArtifactStore
from tasks.store.catalog import QueryError, build_catalog, format_table, query, stage_table


def _artifact(store, stage, key, table, counts, dropped=None):
    with store.writing(stage, key, {"counts": counts}) as staging:
        tmp = staging.path
        (tmp / "parts").mkdir()
        pq.write_table(table, tmp / "parts" / "part-00000.parquet")
        if dropped is not None:
            (tmp / "filtered").mkdir()
            pq.write_table(dropped, tmp / "filtered" / "part-00000.parquet")
    return store.ref(stage, key, status="computed")


@pytest.fixture()
def workdir(tmp_path):
    store = ArtifactStore(tmp_path)
    pool = pa.table({"uid": ["a", "b", "c"], "text": ["x", "y", "z"]})
    refs = {"ingest": _artifact(store, "ingest", "k1", pool, {"rows_in": 3, "rows_out": 3})}
    dropped = pa.table({"uid": ["c"], "stage": ["filter"], "reason": ["caption_too_short_words"], "detail": [""]})
    refs["filter"] = _artifact(store, "filter", "k2", pool.slice(0, 2),
                               {"rows_in": 3, "rows_out": 2, "filtered": 1}, dropped)
    build_catalog(tmp_path, refs)
    return tmp_path


def test_views_answer(workdir):
    assert query(workdir, "select count(*) from samples") == (["count_star()"], [(2,)])
    assert query(workdir, "select count(*) from ingest")[1] == [(3,)]
    assert query(workdir, "select reason, count(*) from filtered group by 1")[1] == [("caption_too_short_words", 1)]
    assert query(workdir, "select count(*) from quarantine")[1] == [(0,)]
    columns, rows = stage_table(workdir)
    assert columns[:6] == ["stage", "status", "rows_in", "rows_out", "filtered", "quarantined"]
    assert [r[:6] for r in rows] == [("ingest", "computed", 3, 3, 0, 0), ("filter", "computed", 3, 2, 1, 0)]
    assert "filter" in format_table(columns, rows)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


CHANGES = "stats: SQL changing the catalog"


@pytest.mark.parametrize("sql, words, check", [
    ("selec 1", "syntax error", None),  # a mistake, not an attempt: no security check
    ("select * from nowhere", "nowhere", None),
    ("insert into stages select * from stages", "read-only mode", CHANGES),
    ("drop view samples", "read-only mode", CHANGES),
    ("copy (select 1) to 'out.csv'", "disabled by configuration",
     "stats: SQL writing files (COPY, EXPORT) or copying one into a table"),
    ("attach 'other.db'", "disabled by configuration", "stats: SQL attaching another database"),
    ("create table t as select 1", "read-only mode", CHANGES),
    ("select 1; drop view samples", "exactly one statement", "stats: a second statement after a query"),
])
def test_refused_queries_are_one_line_and_change_nothing(workdir, sql, words, check, monkeypatch, reliability):
    monkeypatch.chdir(workdir)
    before = _digest(workdir)
    with pytest.raises(QueryError, match=words) as err:
        query(workdir, sql)
    assert "\n" not in str(err.value)
    assert _digest(workdir) == before
    if check:
        reliability.check(check)


def test_a_copied_workdir_answers_the_same_queries(workdir, tmp_path_factory):
    """The views name their files relative to the workdir, so a copy elsewhere (another folder, machine or
    bucket) answers; the original's files are not what it reads."""
    import shutil

    copy = tmp_path_factory.mktemp("elsewhere") / "copied"
    shutil.copytree(workdir, copy)
    want = query(workdir, "select uid from samples order by uid")
    shutil.rmtree(workdir / "artifacts")
    assert query(copy, "select uid from samples order by uid") == want
    assert query(copy, "select path from stages order by stage")[1] == [("artifacts/filter/k2",),
                                                                       ("artifacts/ingest/k1",)]
    with pytest.raises(QueryError):
        query(workdir, "select count(*) from samples")  # the original's files are gone, and it says so
