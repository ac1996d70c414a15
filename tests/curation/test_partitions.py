import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import balancing
from curation import partitions as P
from curation.matching import EntryMatcher


def _write(tmp_path, name, table):
    path = tmp_path / name
    pq.write_table(table, path)
    return str(path)


def test_plan_shards_fills_in_global_order():
    plan = P.plan_shards([5, 0, 7], samples_per_shard=4)
    assert plan == [[(0, 0, 4)], [(0, 4, 1), (2, 0, 3)], [(2, 3, 4)]]
    assert sum(n for shard in plan for _, _, n in shard) == 12
    assert P.plan_shards([], 4) == []


def test_duplicate_uids_keep_first_occurrence_across_parts(tmp_path):
    a = _write(tmp_path, "a.parquet", pa.table({"uid": ["x", "y", "x"]}))
    b = _write(tmp_path, "b.parquet", pa.table({"uid": ["y", "z"]}))
    dups = P.duplicate_uid_table([a, b])
    assert list(zip(*(dups.column(c).to_pylist() for c in ("part", "row", "uid")))) == [(0, 2, "x"), (1, 0, "y")]
    dup_path = _write(tmp_path, "d.parquet", dups)
    q = _write(tmp_path, "q.parquet", P.dropped_table([], "ingest", [], []))
    out = str(tmp_path / "out.parquet")
    counts = P.drop_duplicate_uids_part(b, 1, dup_path, out, q)
    assert counts == {"rows_out": 1, "quarantined": 1}
    assert pq.read_table(out).column("uid").to_pylist() == ["z"]
    assert pq.read_table(q).column("reason").to_pylist() == ["duplicate_uid"]


def test_match_and_balance_parts_agree_with_plain_functions(tmp_path):
    entries = ["star", "red star", "circle", "blue"]
    texts = ["a red star", "a circle", "nothing here", "blue circle", "star"] * 20
    uids = [f"u{i}" for i in range(len(texts))]
    part = _write(tmp_path, "p.parquet", pa.table({"uid": uids, "text": texts}))
    shared = P.match_part(part, EntryMatcher(entries), str(tmp_path / "shared.parquet"))  # the stage's way
    counts = P.match_part(part, entries, str(tmp_path / "m.parquet"))
    assert shared.tolist() == counts.tolist()
    assert pq.read_table(tmp_path / "shared.parquet").equals(pq.read_table(tmp_path / "m.parquet"))
    matched = EntryMatcher(entries).match_batch(texts)
    assert counts.tolist() == balancing.count_entries(matched, len(entries)).tolist()
    probs = balancing.entry_probs(counts, t=10)
    result = P.balance_part(part, str(tmp_path / "m.parquet"), probs, 3, str(tmp_path / "k.parquet"),
                            str(tmp_path / "d.parquet"))
    keep = balancing.keep_mask(uids, balancing.keep_probs(matched, probs), 3)
    kept = pq.read_table(tmp_path / "k.parquet")
    assert kept.column("uid").to_pylist() == [u for u, k in zip(uids, keep) if k]
    assert result["rows_in"] == result["rows_out"] + result["filtered"] == len(texts)
    reasons = pq.read_table(tmp_path / "d.parquet").column("reason").to_pylist()
    assert reasons.count("no_entry") == 20 and set(reasons) <= {"no_entry", "not_sampled"}
    assert np.array_equal(result["counts_after"], balancing.count_entries(
        [m for m, k in zip(matched, keep) if k], len(entries)))
