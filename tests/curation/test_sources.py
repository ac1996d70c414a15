"""Tests of curation/sources.py and curation/readers.py: every real format, built in tmp_path, with the
corrupt-input corpus (truncated JPEG, zero bytes, a 20000x20000 PNG header, invalid UTF-8, unsafe tar
paths, duplicate uids); every record lands in samples or in quarantine with its reason."""

import http.server
import importlib.util
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from curation import readers
from curation.readers import SourceConfig, expand_braces, list_files
from curation.sources import IngestConfig, PartitionSpec, plan_partitions, read_partition
from curation.validation import content_uid
from curation.world.pool import WorldConfig

_spec = importlib.util.spec_from_file_location("ingest_corpus", Path(__file__).with_name("ingest_corpus.py"))
C = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(C)

GOOD = C.good_images()


def ingest(*sources: SourceConfig, **kw) -> tuple[pa.Table, pa.Table, int]:
    """All samples and quarantine rows of every partition, and the number of partitions."""
    cfg = IngestConfig(sources=tuple(sources), **kw)
    specs = plan_partitions(cfg)
    tables = [read_partition(cfg, spec) for spec in specs]
    assert all(truth is None for _, truth, _ in tables)
    return pa.concat_tables([t[0] for t in tables]), pa.concat_tables([t[2] for t in tables]), len(specs)


def reasons_by_id(quarantine: pa.Table) -> dict[str, str]:
    return dict(zip(quarantine.column("uid").to_pylist(), quarantine.column("reason").to_pylist()))


def by_uid(samples: pa.Table) -> dict[str, dict]:
    return {row["uid"]: row for row in samples.to_pylist()}


MISSING_FILE, OUTSIDE = "image path naming no file", "image path outside the source's folder"
"""Bad-input kinds of the reliability ledger (tests/conftest.py) beside the corpus's (C.KIND)."""


# --- paths ------------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern, expected", [
    ("s3://b/{00000..00002}.tar", ["s3://b/00000.tar", "s3://b/00001.tar", "s3://b/00002.tar"]),
    ("d/{8..10}.tar", ["d/8.tar", "d/9.tar", "d/10.tar"]),
    ("{a,b}/{0..1}", ["a/0", "a/1", "b/0", "b/1"]),
    ("plain/path.tar", ["plain/path.tar"]),
    ("lit{x}/{1..2}", ["lit{x}/1", "lit{x}/2"]),
])
def test_expand_braces(pattern, expected):
    assert expand_braces(pattern) == expected


def test_list_files_folder_glob_braces_and_missing(tmp_path):
    for name in ("00000.tar", "00001.tar", "00000.parquet", "sub/00002.tar"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    root = str(tmp_path)
    assert list_files(root, (".tar",)) == [f"{root}/00000.tar", f"{root}/00001.tar", f"{root}/sub/00002.tar"]
    assert list_files(f"{root}/*.parquet", (".tar",)) == [f"{root}/00000.parquet"]
    assert list_files(f"{root}/{{00001..00003}}.tar", (".tar",)) == [f"{root}/0000{i}.tar" for i in (1, 2, 3)]


# --- webdataset -------------------------------------------------------------------------------

def corrupt_shard(path: Path) -> Path:
    """A shard with good samples, the corrupt corpus, unsafe members and incomplete samples."""
    members = []
    for i, (ext, image) in enumerate(GOOD.items()):
        members += C.sample_members(f"good{i}", image, f"good caption {i}".encode(), ext)
    for name, (make, _reason) in C.CORRUPT_IMAGES.items():
        members += C.sample_members(name, make(), b"a caption")
    members += C.sample_members("badtext", GOOD["jpg"], C.BAD_UTF8)
    members += C.sample_members("notext", GOOD["png"], None, "png")
    members += C.sample_members("noimage", None, b"a caption without its image")
    members += [("../evil.jpg", GOOD["jpg"]), ("../evil.txt", b"escape"), ("/etc/x.txt", b"absolute")]
    members += C.sample_members("badjson", GOOD["jpg"], b"fine", meta=None)[:2] + [("badjson.json", b"{not json")]
    return C.write_tar(path, members, links=(("link.jpg", "/etc/passwd"),))


WEBDATASET_REASONS = {
    "truncated": "truncated_image", "empty": "empty_image", "bomb": "decompression_bomb",
    "garbage": "undecodable_image", "badtext": "caption_not_utf8", "notext": "missing_caption",
    "noimage": "missing_image", "../evil": "unsafe_path", "/etc/x": "unsafe_path", "link": "unsafe_path",
    "badjson": "wrong_type",
}


def test_webdataset_shard_with_the_corrupt_corpus(tmp_path, reliability):
    shard = corrupt_shard(tmp_path / "shards" / "00000.tar")
    samples, quarantine, parts = ingest(SourceConfig(format="webdataset", path=str(tmp_path / "shards")))
    assert parts == 1
    # the img2dataset key is the uid; a sample that never validated is named <tar>#<key>
    assert {uid: row["image"] for uid, row in by_uid(samples).items()} == {
        f"good{i}": image for i, image in enumerate(GOOD.values())}
    assert by_uid(samples)["good2"]["text"] == "good caption 2"
    expected = {(f"{shard}#{k}" if k in ("../evil", "/etc/x", "link", "badjson") else k): r
                for k, r in WEBDATASET_REASONS.items()}
    assert reasons_by_id(quarantine) == expected
    assert samples.num_rows + quarantine.num_rows == 3 + len(WEBDATASET_REASONS)
    for name, reason in WEBDATASET_REASONS.items():
        reliability.bad_input(C.KIND[name], reason)
    reliability.rows(3 + len(WEBDATASET_REASONS), samples.num_rows + quarantine.num_rows)


def test_unsafe_member_checks(reliability):
    import tarfile

    def info(name, kind=tarfile.REGTYPE):
        member = tarfile.TarInfo(name)
        member.type = kind
        return member

    assert readers.unsafe_member(info("00000/000001.jpg")) is None
    assert readers.unsafe_member(info("a/../../b.jpg")) == "path climbs out with '..'"
    assert readers.unsafe_member(info("/abs.jpg")) == "absolute path"
    assert readers.unsafe_member(info("C:\\win.jpg")) == "absolute path"
    assert readers.unsafe_member(info("h.jpg", tarfile.LNKTYPE)).startswith("link")
    assert readers.unsafe_member(info("dev.jpg", tarfile.CHRTYPE)).startswith("special file")
    reliability.bad_input(C.KIND["../evil"], "unsafe_path")
    reliability.bad_input(C.KIND["/etc/x"], "unsafe_path", count=2)  # POSIX and Windows
    reliability.bad_input("tar hard-link member", "unsafe_path")
    reliability.bad_input("tar device member", "unsafe_path")


def test_tar_keys_follow_webdataset(tmp_path):
    assert readers.split_key("dir.v1/000123.seg.png") == ("dir.v1/000123", "seg.png")
    assert readers.split_key("README") == ("README", "")


@pytest.mark.parametrize("where", ["at a header", "inside a header", "inside member data"])
def test_truncated_tar_keeps_its_good_rows_and_reports_the_rest(tmp_path, where, reliability):
    import tarfile

    members = [m for i in range(4) for m in C.sample_members(f"k{i}", C.encoded("PNG", 32, i), b"cap", "png")]
    whole = C.write_tar(tmp_path / "whole.tar", members)
    with tarfile.open(whole) as tar:
        k2 = tar.getmembers()[6]  # k2.png, the first member of the third sample
    cut = {"at a header": k2.offset, "inside a header": k2.offset + 100, "inside member data": k2.offset_data + 10}
    (tmp_path / "cut.tar").write_bytes(whole.read_bytes()[: cut[where]])
    samples, quarantine, _ = ingest(SourceConfig(format="webdataset", path=str(tmp_path / "cut.tar")))
    assert samples.column("uid").to_pylist() == ["k0", "k1"]
    assert reasons_by_id(quarantine) == {f"{tmp_path}/cut.tar#rest": "unreadable_file"}
    reliability.bad_input(f"tar cut short {where}", "unreadable_file (the rows before it kept)")


def test_missing_shard_of_a_brace_range_is_quarantined(tmp_path, reliability):
    C.write_tar(tmp_path / "00000.tar", C.sample_members("a", GOOD["jpg"], b"x"))
    samples, quarantine, parts = ingest(SourceConfig(format="webdataset", path=f"{tmp_path}/{{00000..00001}}.tar"))
    assert (parts, samples.num_rows) == (2, 1)
    assert reasons_by_id(quarantine) == {f"{tmp_path}/00001.tar#rest": "unreadable_file"}
    reliability.bad_input("missing shard of a brace range", "unreadable_file")


def test_webdataset_uid_and_caption_from_json(tmp_path, reliability):
    members = [("s1.jpg", GOOD["jpg"]), ("s1.json", b'{"id": "A-1", "caption": "from json"}'),
               ("s2.jpg", GOOD["jpg"]), ("s2.txt", b"from txt"), ("s2.json", b'{"caption": "ignored"}')]
    C.write_tar(tmp_path / "t.tar", members)
    src = SourceConfig(format="webdataset", path=str(tmp_path / "t.tar"), text_column="caption", uid_column="id")
    samples, quarantine, _ = ingest(src)
    assert by_uid(samples)["A-1"]["text"] == "from json"
    assert reasons_by_id(quarantine) == {f"{tmp_path}/t.tar#s2": "missing_column"}
    reliability.bad_input("sample whose JSON lacks the uid column", "missing_column")


# --- parquet ----------------------------------------------------------------------------------

def test_parquet_with_image_bytes_and_the_corrupt_corpus(tmp_path, reliability):
    images = list(GOOD.values()) + [make() for make, _ in C.CORRUPT_IMAGES.values()] + [None, GOOD["png"]]
    texts = ["g0", "g1", "g2", "t", "t", "t", "t", "no image", None]
    C.write_parquet(tmp_path / "p.parquet", {"key": [f"k{i}" for i in range(len(images))], "image": images,
                                             "caption": texts})
    samples, quarantine, _ = ingest(SourceConfig(format="parquet", path=str(tmp_path), text_column="caption"))
    assert {u: r["image"] for u, r in by_uid(samples).items()} == {"k0": GOOD["jpg"], "k1": GOOD["png"],
                                                                   "k2": GOOD["webp"]}
    reasons = [r for _, r in C.CORRUPT_IMAGES.values()]
    assert reasons_by_id(quarantine) == {**{f"k{i + 3}": r for i, r in enumerate(reasons)},
                                         "k7": "missing_image", "k8": "missing_caption"}
    for name, (_, reason) in C.CORRUPT_IMAGES.items():
        reliability.bad_input(C.KIND[name], reason)
    reliability.bad_input(C.KIND["noimage"], "missing_image")
    reliability.bad_input(C.KIND["notext"], "missing_caption")


def test_parquet_with_relative_and_absolute_image_paths(tmp_path, reliability):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(GOOD["jpg"])
    (tmp_path / "b.webp").write_bytes(GOOD["webp"])
    C.write_parquet(tmp_path / "data" / "p.parquet", {
        "image": ["../img/a.jpg", str(tmp_path / "b.webp"), "../img/nope.jpg", ""],
        "text": ["a", "b", "c", "d"]})
    samples, quarantine, _ = ingest(SourceConfig(format="parquet", path=str(tmp_path / "data" / "p.parquet"),
                                                 allowed_roots=(str(tmp_path),)))  # img/ is beside data/
    assert sorted(samples.column("image").to_pylist()) == sorted([GOOD["jpg"], GOOD["webp"]])
    # no uid column and no "key" column: the uid is the content hash
    assert set(samples.column("uid").to_pylist()) == {content_uid(GOOD["jpg"], "a"), content_uid(GOOD["webp"], "b")}
    assert reasons_by_id(quarantine) == {f"{tmp_path}/data/p.parquet#2": "missing_image",
                                         f"{tmp_path}/data/p.parquet#3": "missing_image"}
    reliability.bad_input(MISSING_FILE, "missing_image")
    reliability.bad_input("empty image path", "missing_image")


def test_parquet_wrong_types_binary_captions_and_hf_structs(tmp_path, reliability):
    hf = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    C.write_parquet(tmp_path / "hf.parquet", {
        "image": pa.array([{"bytes": GOOD["png"], "path": None}, {"bytes": None, "path": None}], hf),
        "text": pa.array([b"bytes caption", C.BAD_UTF8], pa.binary())})
    numbers = [1, 2]
    C.write_parquet(tmp_path / "types.parquet", {"image": numbers, "text": ["a", "b"]})
    C.write_parquet(tmp_path / "numeric_caption.parquet", {"image": [GOOD["jpg"]], "text": [3.5]})
    samples, quarantine, parts = ingest(SourceConfig(format="parquet", path=str(tmp_path)))
    assert parts == 3 and samples.column("text").to_pylist() == ["bytes caption"]
    assert sorted(quarantine.column("reason").to_pylist()) == ["missing_image", "wrong_type", "wrong_type",
                                                               "wrong_type"]
    reliability.bad_input("Hugging Face image struct without bytes", "missing_image")
    reliability.bad_input("image cell of the wrong type (int)", "wrong_type", count=len(numbers))
    reliability.bad_input("caption of the wrong type (float)", "wrong_type")


def test_parquet_missing_column_quarantines_every_row_of_that_file(tmp_path, reliability):
    C.write_parquet(tmp_path / "a.parquet", {"image": [GOOD["jpg"]] * 3, "caption": ["x", "y", "z"]})
    C.write_parquet(tmp_path / "b.parquet", {"image": [GOOD["png"]], "text": ["ok"]})
    samples, quarantine, _ = ingest(SourceConfig(format="parquet", path=str(tmp_path), files_per_partition=2))
    assert samples.column("text").to_pylist() == ["ok"]
    assert quarantine.column("reason").to_pylist() == ["missing_column"] * 3
    assert "'text'" in quarantine.column("detail")[0].as_py()
    reliability.bad_input("file without the caption column", "missing_column", count=quarantine.num_rows)


def test_parquet_uid_column_nulls_and_corrupt_file(tmp_path, reliability):
    C.write_parquet(tmp_path / "u.parquet", {"image": [GOOD["jpg"], GOOD["png"]], "text": ["a", "b"],
                                             "sid": pa.array([None, 12], pa.int64())})
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 definitely not parquet")
    samples, quarantine, _ = ingest(SourceConfig(format="parquet", path=str(tmp_path), uid_column="sid"))
    assert samples.column("uid").to_pylist() == ["12"]
    assert reasons_by_id(quarantine) == {f"{tmp_path}/u.parquet#0": "wrong_type",
                                         f"{tmp_path}/broken.parquet#rest": "unreadable_file"}
    reliability.bad_input("null uid", "wrong_type")
    reliability.bad_input("corrupt Parquet file", "unreadable_file")


# --- folder -----------------------------------------------------------------------------------

def test_folder_of_image_and_txt_pairs(tmp_path, reliability):
    root = tmp_path / "pairs"
    (root / "00000").mkdir(parents=True)
    files = {"00000/a.jpg": GOOD["jpg"], "00000/a.txt": b"caption a\n", "00000/a.json": b'{"key": "000000001"}',
             "b.png": GOOD["png"], "b.txt": b"caption b", "lonely.webp": GOOD["webp"], "orphan.txt": b"no image",
             "cut.jpg": C.truncated_jpeg(), "cut.txt": b"t", "zero.png": b"", "zero.txt": b"t",
             "bomb.png": C.bomb_png(), "bomb.txt": b"t", "latin.jpg": GOOD["jpg"], "latin.txt": C.BAD_UTF8,
             "notes.md": b"not part of the pool"}
    for name, data in files.items():
        (root / name).write_bytes(data)
    samples, quarantine, parts = ingest(SourceConfig(format="folder", path=str(root), pairs_per_partition=3))
    assert parts == 3  # 8 stems, 3 per partition
    texts = {r["uid"]: (r["text"], r["image"]) for r in samples.to_pylist()}
    assert texts["000000001"] == ("caption a", GOOD["jpg"])
    assert ("caption b", GOOD["png"]) in texts.values() and samples.num_rows == 2
    assert reasons_by_id(quarantine) == {
        f"{root}/lonely.webp": "missing_caption", f"{root}/orphan": "missing_image",
        f"{root}/cut.jpg": "truncated_image", f"{root}/zero.png": "empty_image",
        f"{root}/bomb.png": "decompression_bomb", f"{root}/latin.jpg": "caption_not_utf8"}
    kinds = {"lonely.webp": "notext", "orphan": "noimage", "cut.jpg": "truncated", "zero.png": "empty",
             "bomb.png": "bomb", "latin.jpg": "badtext"}
    for name, kind in kinds.items():
        reliability.bad_input(C.KIND[kind], reasons_by_id(quarantine)[f"{root}/{name}"])


# --- csv / tsv --------------------------------------------------------------------------------

def test_csv_and_tsv_of_caption_and_path(tmp_path, reliability):
    (tmp_path / "img").mkdir()
    for name, data in {"a.jpg": GOOD["jpg"], "b.png": GOOD["png"], "cut.jpg": C.truncated_jpeg(),
                       "zero.jpg": b"", "bomb.png": C.bomb_png()}.items():
        (tmp_path / "img" / name).write_bytes(data)
    C.write_csv(tmp_path / "pool.csv", ["url", "caption"], [
        ["img/a.jpg", '"a caption, with a comma"'], ["img/cut.jpg", "t"], ["img/zero.jpg", "t"],
        ["img/bomb.png", "t"], ["img/b.png", C.BAD_UTF8], ["img/missing.jpg", "t"], ["img/a.jpg"],
        ["img/b.png", "x" * 30]])
    C.write_csv(tmp_path / "pool.tsv", ["caption", "url"], [["tab, separated", "img/b.png"]], delimiter=b"\t")
    src = dict(image_column="url", text_column="caption")
    samples, quarantine, parts = ingest(SourceConfig(format="csv", path=str(tmp_path), **src),
                                        max_caption_chars=25)
    assert parts == 2
    assert sorted(zip(samples.column("text").to_pylist(), samples.column("image").to_pylist())) == [
        ("a caption, with a comma", GOOD["jpg"]), ("tab, separated", GOOD["png"])]
    csv_ = f"{tmp_path}/pool.csv"
    assert reasons_by_id(quarantine) == {
        f"{csv_}#1": "truncated_image", f"{csv_}#2": "empty_image", f"{csv_}#3": "decompression_bomb",
        f"{csv_}#4": "caption_not_utf8", f"{csv_}#5": "missing_image", f"{csv_}#6": "malformed_row",
        f"{csv_}#7": "caption_too_long"}
    kinds = [C.KIND["truncated"], C.KIND["empty"], C.KIND["bomb"], C.KIND["badtext"], MISSING_FILE,
             "CSV row with a field missing", "caption over max_caption_chars"]
    for row, kind in enumerate(kinds, start=1):
        reliability.bad_input(kind, reasons_by_id(quarantine)[f"{csv_}#{row}"])


def test_csv_missing_column_and_key_uids(tmp_path, reliability):
    (tmp_path / "a.jpg").write_bytes(GOOD["jpg"])
    C.write_csv(tmp_path / "nocap.csv", ["image"], [["a.jpg"], ["a.jpg"]])
    C.write_csv(tmp_path / "keyed.csv", ["key", "image", "text"], [["K1", "a.jpg", "hello"], ["", "a.jpg", "x"]])
    samples, quarantine, _ = ingest(SourceConfig(format="csv", path=str(tmp_path)))
    assert samples.column("uid").to_pylist() == ["K1"]
    assert sorted(quarantine.column("reason").to_pylist()) == ["missing_column", "missing_column", "wrong_type"]
    missing = quarantine.column("reason").to_pylist().count("missing_column")  # nocap.csv's rows
    reliability.bad_input("file without the caption column", "missing_column", count=missing)
    reliability.bad_input("empty uid", "wrong_type")


# --- several sources, duplicates, planning ----------------------------------------------------

def test_sources_combine_and_duplicate_uids_are_left_for_the_uid_pass(tmp_path):
    C.write_tar(tmp_path / "shards" / "00000.tar", C.sample_members("dup", GOOD["jpg"], b"first"))
    C.write_tar(tmp_path / "shards" / "00001.tar", C.sample_members("dup", GOOD["png"], b"second", "png"))
    C.write_parquet(tmp_path / "p.parquet", {"key": ["dup", "own"], "image": [GOOD["webp"]] * 2, "text": ["3", "4"]})
    cfg = IngestConfig(sources=(SourceConfig(format="webdataset", path=str(tmp_path / "shards")),
                                SourceConfig(format="parquet", path=str(tmp_path / "p.parquet")),
                                SourceConfig()), world=WorldConfig(num_images=6), partitions=2)
    specs = plan_partitions(cfg)
    assert [s.source for s in specs] == [0, 0, 1, 2, 2]
    assert specs[3] == PartitionSpec(2, (0, 3)) and cfg.source == "webdataset+parquet+synthetic"
    uids = []
    for spec in specs:
        samples, truth, quarantine = read_partition(cfg, spec)
        assert quarantine.num_rows == 0 and (truth is not None) == (spec.source == 2)
        uids += samples.column("uid").to_pylist()
    # the ingest task's duplicate_uid pass quarantines the repeats; the readers drop nothing
    assert uids.count("dup") == 3 and len(uids) == 3 + 1 + 6


@pytest.mark.parametrize("src, message", [
    (SourceConfig(format="tfrecord", path="x"), "unknown ingest source format 'tfrecord'"),
    (SourceConfig(format="parquet"), "needs a path"),
])
def test_bad_source_blocks_raise(src, message):
    with pytest.raises(ValueError, match=message):
        plan_partitions(IngestConfig(sources=(src,)))


def test_empty_folder_source_raises(tmp_path):
    with pytest.raises(ValueError, match="holds nothing to read"):
        plan_partitions(IngestConfig(sources=(SourceConfig(format="webdataset", path=str(tmp_path)),)))
    with pytest.raises(ValueError, match="is not a folder"):
        plan_partitions(IngestConfig(sources=(SourceConfig(format="folder", path=str(tmp_path / "nope")),)))


def test_files_per_partition_groups_files(tmp_path):
    for i in range(5):
        C.write_parquet(tmp_path / f"{i}.parquet", {"image": [GOOD["jpg"]], "text": [str(i)]})
    cfg = IngestConfig(sources=(SourceConfig(format="parquet", path=str(tmp_path), files_per_partition=2),))
    assert [len(s.units) for s in plan_partitions(cfg)] == [2, 2, 1]


# --- where image files may come from --------------------------------------------------------

class _Images(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _Images.seen.append(self.path)
        body = GOOD["jpg"]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def image_host():
    """A real HTTP server on loopback that serves a JPEG at any path and records the paths asked for."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Images.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def hostile_pool(tmp_path, image_host):
    """A pool folder whose image cells point inside it, out of it in every way, and at a remote host."""
    pool, secret = tmp_path / "pool", tmp_path / "secret"
    (pool / "img").mkdir(parents=True)
    secret.mkdir()
    (pool / "img" / "a.jpg").write_bytes(GOOD["jpg"])
    (secret / "s.jpg").write_bytes(GOOD["png"])
    (pool / "img" / "link.jpg").symlink_to(secret / "s.jpg")
    cells = {"inside": "img/a.jpg", "climbs": "../secret/s.jpg", "absolute": str(secret / "s.jpg"),
             "symlink": "img/link.jpg", "file_url": f"file://{secret / 's.jpg'}", "dotted": "img/../../secret/s.jpg",
             "remote": f"{image_host}/x.jpg"}
    C.write_parquet(pool / "p.parquet", {"image": list(cells.values()), "text": list(cells)})
    return pool, secret, cells


HOSTILE_KINDS = {
    "climbs": f"{OUTSIDE}: '..'", "absolute": f"{OUTSIDE}: absolute", "symlink": f"{OUTSIDE}: a symlink",
    "file_url": f"{OUTSIDE}: a file:// URL", "dotted": f"{OUTSIDE}: '..' mid-path",
    "remote": "remote image URL (fetching off)",
}
"""The hostile pool's cells (but "inside") -> their bad-input kind in the reliability ledger."""


def test_image_paths_outside_the_sources_folder_are_quarantined_and_urls_not_fetched(hostile_pool, reliability):
    pool, _, cells = hostile_pool
    samples, quarantine, _ = ingest(SourceConfig(format="parquet", path=str(pool / "p.parquet")))
    assert samples.column("text").to_pylist() == ["inside"]
    reasons = dict(zip(quarantine.column("uid").to_pylist(), quarantine.column("reason").to_pylist()))
    assert reasons == {f"{pool}/p.parquet#{i}": "path_outside_roots" for i in range(1, len(cells))}
    assert samples.num_rows + quarantine.num_rows == len(cells)  # counts reconcile
    assert _Images.seen == []  # the remote host was never asked
    for cell in list(cells)[1:]:
        reliability.bad_input(HOSTILE_KINDS[cell], "path_outside_roots")
    reliability.rows(len(cells), samples.num_rows + quarantine.num_rows)


def test_allowed_roots_and_fetch_urls_open_exactly_what_they_name(hostile_pool, image_host):
    pool, secret, cells = hostile_pool
    src = SourceConfig(format="parquet", path=str(pool / "p.parquet"), allowed_roots=(str(pool), str(secret)),
                       fetch_urls=True)
    samples, quarantine, _ = ingest(src)
    assert sorted(samples.column("text").to_pylist()) == sorted(cells)
    assert quarantine.num_rows == 0 and set(_Images.seen) == {"/x.jpg"}  # fsspec may ask twice (size, bytes)
    other = SourceConfig(format="parquet", path=str(pool / "p.parquet"), allowed_roots=(str(secret),))
    samples, _, _ = ingest(other)  # the pool's own folder is no longer allowed: only what is in secret/
    assert sorted(samples.column("text").to_pylist()) == ["absolute", "climbs", "dotted", "file_url", "symlink"]


def test_a_csv_and_a_folder_keep_to_their_roots_too(tmp_path, reliability):
    pool, secret = tmp_path / "pool", tmp_path / "secret"
    pool.mkdir()
    secret.mkdir()
    (secret / "s.jpg").write_bytes(GOOD["jpg"])
    (pool / "a.jpg").write_bytes(GOOD["jpg"])
    (pool / "a.txt").write_text("inside")
    (pool / "b.jpg").symlink_to(secret / "s.jpg")  # a folder sample whose image links out
    (pool / "b.txt").write_text("linked out")
    samples, quarantine, _ = ingest(SourceConfig(format="folder", path=str(pool)))
    assert samples.column("text").to_pylist() == ["inside"]
    assert quarantine.column("reason").to_pylist() == ["path_outside_roots"]
    reliability.bad_input(HOSTILE_KINDS["symlink"], "path_outside_roots")
    C.write_csv(tmp_path / "list.csv", ["image", "text"], [["pool/a.jpg", "inside"], [str(secret / "s.jpg"), "out"]])
    samples, quarantine, _ = ingest(SourceConfig(format="csv", path=str(tmp_path / "list.csv"),
                                                 allowed_roots=(str(pool),)))
    assert samples.column("text").to_pylist() == ["inside"]
    assert quarantine.column("reason").to_pylist() == ["path_outside_roots"]
    reliability.bad_input(HOSTILE_KINDS["absolute"], "path_outside_roots")


def test_an_empty_shard_and_an_empty_pool(tmp_path):
    C.write_tar(tmp_path / "empty.tar", [])
    C.write_tar(tmp_path / "one.tar", C.sample_members("k0", GOOD["jpg"], b"a caption"))
    samples, quarantine, parts = ingest(SourceConfig(format="webdataset", path=str(tmp_path / "*.tar")))
    assert parts == 2 and samples.num_rows == 1 and quarantine.num_rows == 0  # the empty shard adds nothing
    C.write_parquet(tmp_path / "empty" / "none.parquet", {"image": [], "text": []},
                    schema=pa.schema([("image", pa.binary()), ("text", pa.string())]))
    samples, quarantine, _ = ingest(SourceConfig(format="parquet", path=str(tmp_path / "empty")))
    assert samples.num_rows == quarantine.num_rows == 0
    empty = tmp_path / "nothing"
    empty.mkdir()
    for fmt in ("webdataset", "parquet", "csv"):
        with pytest.raises(ValueError, match="holds nothing to read"):
            plan_partitions(IngestConfig(sources=(SourceConfig(format=fmt, path=str(empty)),)))
