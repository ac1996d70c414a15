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
    read_q = _write(tmp_path, "q1.parquet", P.dropped_table(["bad"], "ingest", ["empty_image"], [""]))
    out, q = str(tmp_path / "out.parquet"), str(tmp_path / "q.parquet")
    unit = P.DropDuplicateUids(b, 1, dup_path, read_q, out, q)
    assert unit.run() == {"rows_out": 1, "quarantined": 1}
    assert pq.read_table(out).column("uid").to_pylist() == ["z"]
    assert pq.read_table(q).column("reason").to_pylist() == ["empty_image", "duplicate_uid"]
    assert unit.run() == {"rows_out": 1, "quarantined": 1}  # a rerun (after a crash) writes the same, not more
    assert pq.read_table(q).column("reason").to_pylist() == ["empty_image", "duplicate_uid"]


def test_match_and_balance_parts_agree_with_plain_functions(tmp_path):
    entries = ["star", "red star", "circle", "blue"]
    texts = ["a red star", "a circle", "nothing here", "blue circle", "star"] * 20
    uids = [f"u{i}" for i in range(len(texts))]
    part = _write(tmp_path, "p.parquet", pa.table({"uid": uids, "text": texts}))
    result = P.MatchPart(part, EntryMatcher(entries), str(tmp_path / "m.parquet"), str(tmp_path / "c.npy")).run()
    assert result == {"rows_in": len(texts)}
    counts = np.load(tmp_path / "c.npy")
    matched = EntryMatcher(entries).match_batch(texts)
    assert pq.read_table(tmp_path / "m.parquet").column("matched_entries").to_pylist() == [list(m) for m in matched]
    assert counts.tolist() == balancing.count_entries(matched, len(entries)).tolist()
    probs = balancing.entry_probs(counts, t=10)
    result = P.BalancePart(part, str(tmp_path / "m.parquet"), probs, 3, str(tmp_path / "k.parquet"),
                           str(tmp_path / "d.parquet"), str(tmp_path / "after.npy")).run()
    keep = balancing.keep_mask(uids, balancing.keep_probs(matched, probs), 3)
    kept = pq.read_table(tmp_path / "k.parquet")
    assert kept.column("uid").to_pylist() == [u for u, k in zip(uids, keep) if k]
    assert result["rows_in"] == result["rows_out"] + result["filtered"] == len(texts)
    reasons = pq.read_table(tmp_path / "d.parquet").column("reason").to_pylist()
    assert reasons.count("no_entry") == 20 and set(reasons) <= {"no_entry", "not_sampled"}
    assert np.array_equal(np.load(tmp_path / "after.npy"), balancing.count_entries(
        [m for m, k in zip(matched, keep) if k], len(entries)))


def test_caption_counts_of_parts_add_up_to_the_pool(tmp_path):
    from curation.metadata import count_words_and_pairs

    texts = ["a hot dog", "hot dog, again", "a dog", None, "a hot dog stand"]
    parts = [_write(tmp_path, f"p{i}.parquet", pa.table({"text": pa.array(chunk, pa.string())}))
             for i, chunk in enumerate((texts[:2], texts[2:]))]
    outs = [str(tmp_path / f"c{i}.parquet") for i in range(2)]
    for part, out in zip(parts, outs):
        P.CaptionCounts(part, out).run()
    assert P.read_caption_counts(outs) == count_words_and_pairs(texts)


def test_longcap_reads_the_truth_by_uid_not_by_part_name(tmp_path):
    truth = [_write(tmp_path, "t0.parquet", pa.table({"uid": ["b", "z"], "shape": ["star", "cube"]})),
             _write(tmp_path, "t1.parquet", pa.table({"uid": ["a"], "shape": ["circle"]}))]
    rows = P.truth_rows(truth, ["a", "b", "missing"])
    assert rows == [{"uid": "a", "shape": "circle"}, {"uid": "b", "shape": "star"}, None]
