"""The ingest task end to end on a mixed pool: WebDataset shards + a Parquet file + a CSV, with the
corrupt-input corpus spread among them and uids repeated across files and sources. Every bad row must
be in the artifact's quarantine with its reason, good rows must survive byte-exact, and the manifest's
counts must reconcile. Ray starts locally (one CPU) on the first call, about 10 s."""

import json
from pathlib import Path

import pyarrow.parquet as pq

from curation import partitions as P
from flows.config import from_dict
from tasks.stages.common import RunContext
from tasks.stages.ingest import ingest
from tasks.store import layout as L
from tests.curation import ingest_corpus as C
from tests.tasks.stages.artifact_checks import columns, expected_columns, manifest, reconciles


def write_pool(root: Path) -> tuple[dict[str, tuple[str, bytes]], dict[str, str], int]:
    """The raw files; returns (good uid -> (text, image)), (quarantine uid -> reason), records written."""
    good = {f"g{i}": (f"good caption {i}", C.encoded(fmt, 40 + 8 * i, i))
            for i, fmt in enumerate(("JPEG", "PNG", "WEBP", "JPEG", "PNG"))}
    shard0 = [m for k in ("g0", "g1", "dup") for m in C.sample_members(k, good["g0" if k == "dup" else k][1],
                                                                        good["g0" if k == "dup" else k][0].encode())]
    shard0 += C.sample_members("trunc", C.truncated_jpeg(), b"t")
    shard0 += [("../evil.jpg", good["g0"][1]), ("../evil.txt", b"escape"), ("/etc/x.txt", b"absolute")]
    C.write_tar(root / "shards" / "00000.tar", shard0)
    shard1 = C.sample_members("g2", good["g2"][1], good["g2"][0].encode(), "webp")
    shard1 += C.sample_members("dup", good["g1"][1], b"same key, other shard")
    shard1 += C.sample_members("zero", b"", b"t")
    C.write_tar(root / "shards" / "00001.tar", shard1)
    C.write_parquet(root / "table" / "pool.parquet", {
        "key": ["g3", "bomb", "nocap", "g0"],
        "image": [good["g3"][1], C.bomb_png(), good["g3"][1], good["g0"][1]],
        "caption": [good["g3"][0], "t", None, "the key of a tar sample, again"]})
    (root / "csv" / "img").mkdir(parents=True)
    for name, data in {"g4.png": good["g4"][1], "zero.jpg": b"", "ok.png": good["g4"][1]}.items():
        (root / "csv" / "img" / name).write_bytes(data)
    C.write_csv(root / "csv" / "pool.csv", ["key", "filepath", "caption"], [
        ["g4", "img/g4.png", good["g4"][0]], ["latin", "img/ok.png", C.BAD_UTF8],
        ["gone", "img/missing.jpg", "t"], ["empty", "img/zero.jpg", "t"]])
    bad = {"trunc": "truncated_image", f"{root}/shards/00000.tar#../evil": "unsafe_path",
           f"{root}/shards/00000.tar#/etc/x": "unsafe_path", "dup": "duplicate_uid", "zero": "empty_image",
           "bomb": "decompression_bomb", "nocap": "missing_caption", "g0": "duplicate_uid",
           "latin": "caption_not_utf8", "gone": "missing_image", "empty": "empty_image"}
    return good, bad, len(good) + len(bad) + 1  # + the first "dup", kept


BAD_KINDS = {"trunc": C.KIND["truncated"], "../evil": C.KIND["../evil"], "/etc/x": C.KIND["/etc/x"],
             "dup": "uid repeated in another shard", "g0": "uid repeated in another source",
             "zero": C.KIND["empty"], "empty": C.KIND["empty"], "bomb": C.KIND["bomb"], "nocap": C.KIND["notext"],
             "latin": C.KIND["badtext"], "gone": "image path naming no file"}
"""The bad rows of write_pool (by uid, or by member for those that never validated) -> the reliability ledger's
kind (tests/conftest.py)."""


def pool_config(root: Path):
    """The mixed pool as YAML would give it, validated by the run config's loader."""
    from curation.sources import IngestConfig

    return from_dict(IngestConfig, {"sources": [
        {"format": "webdataset", "path": f"{root}/shards/{{00000..00001}}.tar"},
        {"format": "parquet", "path": str(root / "table"), "text_column": "caption"},
        {"format": "csv", "path": str(root / "csv" / "pool.csv"), "image_column": "filepath",
         "text_column": "caption"},
    ]}, "ingest")


def test_ingest_task_quarantines_every_bad_row_and_reconciles(tmp_path, reliability):
    good, bad, records = write_pool(tmp_path / "raw")
    cfg = pool_config(tmp_path / "raw")
    ctx = RunContext(workdir=str(tmp_path / "work"), run_id="t", ray_num_cpus=1)
    ref = ingest.fn(ctx, cfg)
    art = Path(ref.path)
    manifest = json.loads((art / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["rows_in"] == records
    assert counts["rows_in"] == counts["rows_out"] + counts["filtered"] + counts["quarantined"]
    assert manifest["source"] == "webdataset+parquet+csv"

    quarantine = pq.ParquetDataset(sorted(art.glob("quarantine/*.parquet"))).read()
    assert dict(zip(quarantine.column("uid").to_pylist(), quarantine.column("reason").to_pylist())) == bad
    assert quarantine.num_rows == counts["quarantined"] == len(bad)
    assert set(quarantine.column("stage").to_pylist()) == {"ingest"}
    expected_reasons = {r: list(bad.values()).count(r) for r in set(bad.values())}
    assert manifest["reasons"]["quarantined"] == expected_reasons

    parts = pq.ParquetDataset(sorted(art.glob("parts/*.parquet"))).read()
    kept = {row["uid"]: (row["text"], row["image"]) for row in parts.to_pylist()}
    assert parts.num_rows == counts["rows_out"] == len(kept)
    assert {uid: kept[uid] for uid in good} == good  # byte-exact images, decoded captions
    assert kept["dup"] == good["g0"]  # the first of a repeated uid stays

    again = ingest.fn(ctx, cfg)
    assert (again.status, again.key) == ("cached", ref.key)
    for uid, reason in bad.items():
        reliability.bad_input(BAD_KINDS[uid.rsplit("#", 1)[-1]], reason)
    reliability.rows(counts["rows_in"], counts["rows_out"] + counts["filtered"] + counts["quarantined"])


def test_ingest_on_the_local_executor(local_run):
    cfg, refs = local_run
    ref = refs["ingest"]
    assert ref.counts["rows_in"] == cfg.ingest.world.num_images and reconciles(ref)
    assert columns(ref) == expected_columns("ingest")
    assert len(P.list_parts(Path(ref.path) / L.TRUTH)) == cfg.ingest.partitions
    assert manifest(ref)["parts"]["read"] == {"computed": cfg.ingest.partitions, "reused": 0}
    assert not (Path(ref.path) / L.CANDIDATES).exists()
