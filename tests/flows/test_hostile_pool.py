"""A hostile raw pool end to end (issue 15): one `curaclip run --preset smoke` whose sources are the synthetic world
plus a WebDataset folder, a Parquet folder, a CSV/TSV folder and an image folder, each full of what the web serves:
truncated, corrupt, empty and decompression-bomb images, absurd aspect ratios, CMYK / 16-bit / palette / alpha and
EXIF-rotated images (valid: kept, and decoded to upright RGB), captions that are not UTF-8, carry HTML and control
characters (cleaned by ``curation.validation.clean_caption``'s rule) or run to a megabyte, repeated uids, tar members
that climb out, are absolute or are links, an empty and a truncated shard, image paths outside the source's roots,
files that lack a configured column or hold a column of the wrong type. The run must finish every stage; each
hostile record lands where its kind says (quarantined with its reason, filtered with its reason, or kept in the
curated set); and the rows read reconcile with kept + filtered + quarantined, in the manifests and in the catalog.

A source block with a missing or unknown path, or one that holds nothing, is a clear ValueError before any work
starts: that stops a run, so it is left to tests/curation/test_sources.py (test_bad_source_blocks_raise,
test_empty_folder_source_raises, test_an_empty_shard_and_an_empty_pool)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from curation.images import decode_rgb

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ingest_corpus", ROOT / "tests" / "curation" / "ingest_corpus.py")
C = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(C)

SYNTHETIC = 360
"""The smoke preset's synthetic pool (ingest.world.num_images)."""
STAGES = ("ingest", "filter", "curate", "embed", "cluster", "rewrite", "longcap", "shard", "train", "eval")
KEPT = "kept"
MEGABYTE = "x" * 1_000_000


# --- the images ------------------------------------------------------------------------------------------------

def save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """A noise image of ``mode`` (distinct bytes per seed, so the filter's exact-duplicate check keeps each)."""
    rng = np.random.default_rng(seed)
    w, h = size
    if mode in ("RGB", "RGBA", "CMYK"):
        return Image.fromarray(rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8), mode)
    return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")


def sixteen_bit(seed: int) -> bytes:
    """A 16-bit grayscale PNG of values 40000..40255 (61% grey): plain convert("RGB") would clip it to white."""
    samples = 40000 + np.random.default_rng(seed).integers(0, 256, (48, 48)).astype(np.uint16)
    return save(Image.fromarray(samples), "PNG")


def palette(seed: int, transparent: bool) -> bytes:
    image = noise("RGB", (48, 48), seed).quantize(16)
    return save(image, "PNG", **({"transparency": 0} if transparent else {}))


def exif_rotated(seed: int) -> bytes:
    """Stored 64x40 lying on its side (red left, blue right) with EXIF orientation 6: upright it is 40x64, red on
    top."""
    pixels = np.zeros((40, 64, 3), np.uint8)
    pixels[:, :32], pixels[:, 32:] = (255, 0, 0), (0, 0, 255)
    pixels[0, 0] = seed  # distinct bytes per seed
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def bomb_jpeg() -> bytes:
    """A real JPEG whose SOF0 header is patched to claim 60000x60000 pixels."""
    data = bytearray(save(noise("RGB", (16, 16), 9), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2
    return bytes(data)


def corrupt_png() -> bytes:
    """A PNG whose IHDR checksum is wrong."""
    data = bytearray(save(noise("RGB", (32, 32), 10), "PNG"))
    data[29] ^= 0xFF
    return bytes(data)


VALID_KINDS = {
    "CMYK JPEG": lambda s: save(noise("CMYK", (48, 48), s), "JPEG"),
    "16-bit grayscale PNG": sixteen_bit,
    "palette PNG": lambda s: palette(s, False),
    "palette PNG with transparency": lambda s: palette(s, True),
    "RGBA PNG": lambda s: save(noise("RGBA", (48, 48), s), "PNG"),
    "RGBA WebP (lossless)": lambda s: save(noise("RGBA", (48, 48), s), "WEBP", lossless=True),
    "grayscale JPEG": lambda s: save(noise("L", (48, 48), s), "JPEG"),
    "EXIF-rotated JPEG": exif_rotated,
}
"""Valid images a naive decoder gets wrong: each must be kept and decode to upright 8-bit RGB."""

CORRUPT_KINDS = {
    "truncated JPEG": (lambda: truncated(save(noise("RGB", (128, 128), 11), "JPEG")), "truncated_image"),
    "truncated PNG": (lambda: truncated(save(noise("RGB", (96, 96), 12), "PNG")), "truncated_image"),
    "truncated WebP": (lambda: truncated(save(noise("RGB", (96, 96), 13), "WEBP")), "truncated_image"),
    "corrupt PNG (bad IHDR checksum)": (corrupt_png, "undecodable_image"),
    "not an image": (lambda: b"<html>404 not found</html>", "undecodable_image"),
    "GIF (not an accepted format)": (lambda: save(noise("L", (32, 32), 14), "GIF"), "undecodable_image"),
    "zero-byte image": (lambda: b"", "empty_image"),
    "decompression bomb PNG (20000x20000)": (C.bomb_png, "decompression_bomb"),
    "decompression bomb PNG, header only": (lambda: C.bomb_png(idat=False), "decompression_bomb"),
    # 100M pixels: over ingest.max_pixels (89.5M) but under PIL's own refusal (2 x 89.5M), so only ingest's guard
    # stands between it and a 300 MB decode
    "decompression bomb PNG (10000x10000)": (lambda: C.bomb_png(side=10000), "decompression_bomb"),
    "decompression bomb JPEG (60000x60000)": (bomb_jpeg, "decompression_bomb"),
}
"""kind -> (bytes maker, quarantine reason)."""

WORDS = iter("violin lighthouse pineapple saxophone volcano kayak cathedral telescope accordion tractor bicycle "
             "canoe piano trumpet waterfall glacier harbor windmill lantern compass anchor cactus tulip walnut "
             "teapot bagpipe chandelier hammock igloo jukebox kettle ladder mandolin necklace oboe parachute "
             "quill rickshaw sundial tambourine ukulele vineyard wardrobe xylophone yacht zeppelin banjo "
             "cello drum flute harp lute organ tuba satchel thimble barometer".split())


def caption(what: str) -> str:
    """A caption the filter keeps (several words) with a rare word no other caption has: its MetaCLIP entry is
    seen once, far below t, so curate keeps the sample with probability 1."""
    return f"a {what} photo of a {next(WORDS)}"


# --- the pool ---------------------------------------------------------------------------------------------------

@dataclass
class Pool:
    """What the hostile sources hold, and where each record must end up."""

    root: Path
    expected: list[tuple[str, str, str | None]] = field(default_factory=list)
    """(kind, outcome, uid or None) per record: a quarantine reason, "filtered:<reason>" or "kept"."""
    kept_images: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    """uid -> (kind, bytes) of the hostile-but-valid images that must reach the curated set."""
    kept_texts: dict[str, str] = field(default_factory=dict)
    """uid -> the caption as the curated set must hold it."""
    seed: int = 100

    def expect(self, kind: str, outcome: str, uid: str | None = None) -> None:
        self.expected.append((kind, outcome, uid))

    def valid(self, kind: str, uid: str, what: str = "") -> tuple[bytes, str]:
        """A kept hostile-valid image of ``kind`` and its caption."""
        self.seed += 1
        data, text = VALID_KINDS[kind](self.seed), caption(what or kind)
        self.expect(kind, KEPT, uid)
        self.kept_images[uid], self.kept_texts[uid] = (kind, data), text
        return data, text

    def plain(self) -> tuple[bytes, str]:
        """An ordinary valid JPEG (distinct bytes) and a caption curate keeps, for records hostile elsewhere."""
        self.seed += 1
        return save(noise("RGB", (48, 48), self.seed), "JPEG"), caption("plain")


def build_tars(pool: Pool) -> Path:
    folder = pool.root / "shards"
    members: list[tuple[str, bytes]] = []
    for kind in VALID_KINDS:
        uid = f"wds-{kind.split()[0].lower()}-{len(members)}"
        data, text = pool.valid(kind, uid)
        members += C.sample_members(uid, data, text.encode(), "png" if "PNG" in kind else "jpg")
    for i, (kind, (make, reason)) in enumerate(CORRUPT_KINDS.items()):
        members += C.sample_members(f"wds-bad{i}", make(), b"a caption of a broken image")
        pool.expect(f"{kind} (tar)", reason, f"wds-bad{i}")
    data, _ = pool.plain()
    members += C.sample_members("wds-latin1", data, C.BAD_UTF8 + b" photo")
    pool.expect("caption not UTF-8 (.txt)", "caption_not_utf8", "wds-latin1")
    data, _ = pool.plain()
    members += C.sample_members("wds-huge", data, MEGABYTE.encode())
    pool.expect("1 MB caption (.txt)", "caption_too_long", "wds-huge")
    data, text = pool.plain()
    raw = f"<p><b>{text}</b>&nbsp;&amp;\x00 more\x1b[31m\u202e\u200b</p>"
    members += C.sample_members("wds-markup", data, raw.encode())
    pool.kept_texts["wds-markup"] = f"{text} & more [31m"
    pool.expect("HTML, entities, NUL, ESC and bidi characters in a caption", "kept (cleaned)", "wds-markup")
    for uid, size, outcome in (("wds-wide", (4000, 40), "filtered:aspect_ratio"),
                               ("wds-sliver", (1, 10000), "filtered:image_too_small")):
        members += C.sample_members(uid, save(noise("L", size, pool.seed), "PNG"), caption("thin").encode(), "png")
        pool.expect(f"absurd aspect ratio {size[0]}x{size[1]}", outcome, uid)
    data, _ = pool.plain()
    members += C.sample_members("wds-nocaption", data, None)
    pool.expect("no caption member", "missing_caption", "wds-nocaption")
    members += C.sample_members("wds-noimage", None, b"a caption without its image")
    pool.expect("no image member", "missing_image", "wds-noimage")
    members += [("../escape.jpg", data), ("../escape.txt", b"climbs out"), ("/etc/absolute.jpg", data),
                ("/etc/absolute.txt", b"absolute")]
    pool.expect("tar member with ../ path", "unsafe_path")
    pool.expect("tar member with absolute path", "unsafe_path")
    C.write_tar(folder / "00000.tar", members, links=(("symlink.jpg", "/etc/passwd"),))
    pool.expect("tar member that is a symlink", "unsafe_path")
    with tarfile.open(folder / "00000.tar", "a") as tar:
        hard = tarfile.TarInfo("hardlink.jpg")
        hard.type, hard.linkname = tarfile.LNKTYPE, "wds-cmyk-0.jpg"
        tar.addfile(hard)
    pool.expect("tar member that is a hard link", "unsafe_path")

    C.write_tar(folder / "00001.tar", [])  # an empty shard: no records, no error (recorded by the test)
    data, text = pool.plain()
    C.write_tar(folder / "00002.tar", C.sample_members("wds-cmyk-0", data, text.encode()))
    pool.expect("uid repeated in another shard", "duplicate_uid", "wds-cmyk-0")

    cut = []
    for i in range(3):
        data, text = pool.plain()
        cut += C.sample_members(f"wds-cut{i}", data, text.encode())
        if i < 2:
            pool.expect("good sample before a shard's cut", KEPT, f"wds-cut{i}")
            pool.kept_texts[f"wds-cut{i}"] = text
    whole = C.write_tar(pool.root / "whole.tar", cut).read_bytes()
    with tarfile.open(pool.root / "whole.tar") as tar:
        third = tar.getmembers()[6]
    (folder / "00003.tar").write_bytes(whole[: third.offset_data + 10])  # cut inside the third sample's image
    pool.expect("truncated tar shard (its unread rest)", "unreadable_file")
    (pool.root / "whole.tar").unlink()
    return folder


def build_parquet(pool: Pool, secret: Path) -> Path:
    """a_bytes.parquet holds encoded images, a_paths.parquet image paths (a Parquet column is one or the other)."""
    folder = pool.root / "parquet"
    (folder / "img").mkdir(parents=True)
    tables: dict[str, dict[str, list]] = {"a_bytes": {}, "a_paths": {}}

    def row(file: str, key: str, image: object, text: object, kind: str | None = None, outcome: str = "") -> None:
        for column, value in (("key", key), ("image", image), ("text", text)):
            tables[file].setdefault(column, []).append(value)
        if kind is not None:
            pool.expect(kind, outcome, key)

    for i, kind in enumerate(("16-bit grayscale PNG", "RGBA WebP (lossless)", "CMYK JPEG")):
        row("a_bytes", f"pq-{i}", *pool.valid(kind, f"pq-{i}", kind + " in parquet"))
    for i, (kind, (make, reason)) in enumerate(CORRUPT_KINDS.items()):
        row("a_bytes", f"pq-bad{i}", make(), "a caption of a broken image", f"{kind} (parquet bytes)", reason)
    row("a_bytes", "pq-null", None, "a caption with a null image", "null image cell", "missing_image")
    row("a_bytes", "pq-huge", pool.plain()[0], MEGABYTE, "1 MB caption (parquet)", "caption_too_long")
    row("a_bytes", "syn0-00000005", *pool.plain(), "uid repeating a synthetic uid", "duplicate_uid")
    data, text = pool.plain()
    row("a_bytes", "pq-long", data, text + " " + "word " * 400, "2,000-character caption",
        "filtered:caption_too_long")

    data, text = pool.valid("palette PNG with transparency", "pq-path", "palette file")
    (folder / "img" / "palette.png").write_bytes(data)
    row("a_paths", "pq-path", "img/palette.png", text)
    (folder / "img" / "link.jpg").symlink_to(secret / "s.jpg")
    outside = {"../secret/s.jpg": "image path with ../ (parquet)",
               str(secret / "s.jpg"): "absolute image path outside the roots (parquet)",
               "img/link.jpg": "image symlink out of the roots (parquet)",
               f"file://{secret / 's.jpg'}": "file:// URL outside the roots (parquet)",
               "img/../../secret/s.jpg": "image path that climbs out midway (parquet)",
               "http://127.0.0.1:9/x.jpg": "http URL with fetch_urls off (parquet)"}
    for i, (cell, kind) in enumerate(outside.items()):
        row("a_paths", f"pq-out{i}", cell, "a caption of an image elsewhere", kind, "path_outside_roots")
    row("a_paths", "pq-missing", "img/nope.jpg", "a caption of a missing file", "image path to no file",
        "missing_image")
    for name, columns in tables.items():
        C.write_parquet(folder / f"{name}.parquet", columns)

    C.write_parquet(folder / "b_nocaption.parquet", {"key": ["pq-nc0", "pq-nc1"], "image": [pool.plain()[0]] * 2,
                                                     "caption": ["a caption", "in the wrong column"]})
    pool.expect("file without the text column (parquet)", "missing_column")  # named <file>#<row>: no key read
    pool.expect("file without the text column (parquet)", "missing_column")
    C.write_parquet(folder / "c_int_image.parquet", {"key": ["pq-int"], "image": [12345], "text": ["an int image"]})
    pool.expect("image column of integers (parquet)", "wrong_type", "pq-int")
    C.write_parquet(folder / "d_float_text.parquet", {"key": ["pq-float"], "image": [pool.plain()[0]],
                                                      "text": [3.5]})
    pool.expect("caption column of floats (parquet)", "wrong_type", "pq-float")
    (folder / "e_broken.parquet").write_bytes(b"PAR1 this is not a parquet file")
    pool.expect("corrupt Parquet file", "unreadable_file")
    return folder


def build_csv(pool: Pool, secret: Path) -> Path:
    folder = pool.root / "csv"
    (folder / "img").mkdir(parents=True)
    rows: list[list[str | bytes]] = []
    data, text = pool.valid("palette PNG", "csv-palette", "palette csv")
    (folder / "img" / "palette.png").write_bytes(data)
    rows.append(["csv-palette", "img/palette.png", text])
    data, text = pool.valid("grayscale JPEG", "csv-gray", "grayscale csv")
    (folder / "img" / "gray.jpg").write_bytes(data)
    data, plain = pool.plain()
    (folder / "img" / "plain.jpg").write_bytes(data)
    rows.append(["csv-gray", "img/gray.jpg", text])
    rows.append(["csv-html", "img/plain.jpg", f'"<a href=""x"">{plain}</a>&#39;s\x1b\x7f"'])
    pool.kept_texts["csv-html"] = f"{plain} 's"
    pool.expect("HTML and control characters in a CSV caption", "kept (cleaned)", "csv-html")
    (folder / "img" / "zero.jpg").write_bytes(b"")
    (folder / "img" / "cut.webp").write_bytes(CORRUPT_KINDS["truncated WebP"][0]())
    (folder / "img" / "link.jpg").symlink_to(secret / "s.jpg")
    for key, cell, caption_cell, kind, outcome in (
            ("csv-zero", "img/zero.jpg", "a caption", "zero-byte image file (csv)", "empty_image"),
            ("csv-cut", "img/cut.webp", "a caption", "truncated WebP file (csv)", "truncated_image"),
            ("csv-up", "../secret/s.jpg", "a caption", "image path with ../ (csv)", "path_outside_roots"),
            ("csv-abs", str(secret / "s.jpg"), "a caption", "absolute image path outside the roots (csv)",
             "path_outside_roots"),
            ("csv-link", "img/link.jpg", "a caption", "image symlink out of the roots (csv)", "path_outside_roots"),
            ("csv-https", "https://example.com/x.jpg", "a caption", "https URL with fetch_urls off (csv)",
             "path_outside_roots"),
            ("csv-latin1", "img/plain.jpg", C.BAD_UTF8 + b" photo", "caption not UTF-8 (csv)", "caption_not_utf8"),
            ("csv-huge", "img/plain.jpg", MEGABYTE, "1 MB caption (csv: over the parser's field limit)",
             "malformed_row"),
            ("", "img/plain.jpg", "an empty key", "empty uid (csv)", "wrong_type"),
            ("pq-0", "img/plain.jpg", "a caption", "uid repeated across sources (csv after parquet)", "duplicate_uid")):
        rows.append([key, cell, caption_cell])
        pool.expect(kind, outcome, key if key and outcome != "malformed_row" else None)  # else <file>#<row>
    rows.append(["csv-short", "img/plain.jpg"])
    pool.expect("row with a missing field (csv)", "malformed_row")
    rows.append(["csv-long", "img/plain.jpg", "a", "b"])
    pool.expect("row with an extra field (csv)", "malformed_row")
    C.write_csv(folder / "list.csv", ["key", "image", "text"], rows)
    C.write_csv(folder / "nocaption.tsv", ["key", "image"], [["tsv-0", "img/plain.jpg"], ["tsv-1", "img/gray.jpg"]],
                delimiter=b"\t")
    pool.expect("file without the text column (tsv)", "missing_column")
    pool.expect("file without the text column (tsv)", "missing_column")
    return folder


def build_folder(pool: Pool, secret: Path) -> Path:
    folder = pool.root / "folder"
    folder.mkdir()

    def pair(stem: str, image: bytes | None, text: bytes | None, uid: str, ext: str = "jpg") -> None:
        if image is not None:
            (folder / f"{stem}.{ext}").write_bytes(image)
        if text is not None:
            (folder / f"{stem}.txt").write_bytes(text)
        (folder / f"{stem}.json").write_text(json.dumps({"key": uid}))

    for kind in ("CMYK JPEG", "EXIF-rotated JPEG", "RGBA PNG"):
        uid = f"dir-{len(pool.expected)}"
        data, text = pool.valid(kind, uid, kind + " file")
        pair(uid, data, text.encode(), uid, "png" if "PNG" in kind else "jpg")
    pair("zero", b"", b"a caption", "dir-zero", "png")
    pool.expect("zero-byte image file (folder)", "empty_image", "dir-zero")
    pair("cut", CORRUPT_KINDS["truncated JPEG"][0](), b"a caption", "dir-cut")
    pool.expect("truncated JPEG file (folder)", "truncated_image", "dir-cut")
    pair("bomb", C.bomb_png(), b"a caption", "dir-bomb", "png")
    pool.expect("decompression bomb PNG file (folder)", "decompression_bomb", "dir-bomb")
    pair("latin", pool.plain()[0], C.BAD_UTF8, "dir-latin")
    pool.expect("caption not UTF-8 (folder .txt)", "caption_not_utf8", "dir-latin")
    pair("huge", pool.plain()[0], MEGABYTE.encode(), "dir-huge")
    pool.expect("1 MB caption (folder .txt)", "caption_too_long", "dir-huge")
    (folder / "link.jpg").symlink_to(secret / "s.jpg")
    pair("link", None, b"a caption", "dir-link")
    pool.expect("image symlink out of the folder", "path_outside_roots", "dir-link")
    pair("lonely", pool.plain()[0], None, "dir-lonely")
    pool.expect("image without a .txt (folder)", "missing_caption", "dir-lonely")
    (folder / "orphan.txt").write_bytes(b"a caption without an image")
    pool.expect("caption without an image (folder)", "missing_image")
    return folder


def build_pool(root: Path) -> tuple[Pool, list[dict]]:
    """The hostile pool under ``root`` and its source blocks (the synthetic world first)."""
    pool = Pool(root)
    secret = root / "secret"
    secret.mkdir(parents=True)
    (secret / "s.jpg").write_bytes(save(noise("RGB", (48, 48), 1), "JPEG"))
    sources = [{"format": "synthetic"},
               {"format": "webdataset", "path": str(build_tars(pool))},
               {"format": "parquet", "path": str(build_parquet(pool, secret))},
               {"format": "csv", "path": str(build_csv(pool, secret))},
               {"format": "folder", "path": str(build_folder(pool, secret))}]
    return pool, sources


# --- the run ----------------------------------------------------------------------------------------------------

def run_curaclip(config: Path, workdir: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke", "--config", str(config),
               "--workdir", str(workdir), "--set", "executor=local"]
    return subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=900)


def hostile_config(path: Path, sources: list[dict]) -> Path:
    """The packaged default config (what `--preset smoke` runs over) with the hostile sources as its pool."""
    config = yaml.safe_load((ROOT / "flows" / "default.yaml").read_text())
    config.setdefault("ingest", {})["sources"] = sources
    path.write_text(yaml.safe_dump(config))
    return path


def stage_parts(workdir: Path, stage: str, columns: list[str]) -> pa.Table:
    (artifact,) = [p.parent for p in (workdir / "artifacts" / stage).glob("*/manifest.json")]
    return pa.concat_tables(pq.read_table(p, columns=columns) for p in sorted((artifact / "parts").glob("*.parquet")))


@pytest.mark.slow
def test_a_hostile_pool_runs_end_to_end_and_every_record_lands_where_its_kind_says(tmp_path, reliability):
    from tasks.store.catalog import query

    pool, sources = build_pool(tmp_path / "pool")
    work = tmp_path / "work"
    run = run_curaclip(hostile_config(tmp_path / "hostile.yaml", sources), work)
    assert run.returncode == 0, run.stderr[-4000:]
    stages = json.loads((work / "report.json").read_text())["stages"]
    assert list(stages) == list(STAGES) and {s["status"] for s in stages.values()} == {"computed"}

    # Every record read is kept, filtered or quarantined: per stage in the manifests, and over the catalog's tables.
    rows_in = stages["ingest"]["rows_in"]
    assert rows_in == SYNTHETIC + len(pool.expected)
    for name, s in stages.items():
        assert s["rows_in"] == s["rows_out"] + s["filtered"] + s["quarantined"], name
    quarantine = query(work, "SELECT uid, stage, reason FROM quarantine")[1]
    filtered = query(work, "SELECT uid, stage, reason FROM filtered")[1]
    (shard_rows,) = query(work, "SELECT count(*) FROM shard")[1][0]
    accounted = shard_rows + len(filtered) + len(quarantine)
    assert accounted == rows_in and shard_rows == stages["shard"]["rows_out"]
    reliability.rows(rows_in, accounted)

    # Quarantine: the expected count per reason (the synthetic world brings none), and each keyed record's reason.
    want_quarantined = Counter(o for _, o, _ in pool.expected if not o.startswith(("kept", "filtered:")))
    assert {s for _, s, _ in quarantine} == {"ingest"}
    assert Counter(r for _, _, r in quarantine) == want_quarantined
    got = Counter((u, r) for u, _, r in quarantine)
    assert [(u, o) for _, o, u in pool.expected if u and o in want_quarantined and not got[u, o]] == []
    # Filtered: the hostile records the filter stage must drop, for their reason.
    dropped = {u: f"filtered:{r}" for u, _, r in filtered}
    for _, outcome, uid in pool.expected:
        if outcome.startswith("filtered:"):
            assert dropped.get(uid) == outcome, uid

    # Kept: the hostile-but-valid images and the cleaned captions reach the curated set byte-exact (images) and
    # cleaned by the documented rule (captions), and every image decodes to upright 8-bit RGB.
    curated = {r["uid"]: r for r in stage_parts(work, "curate", ["uid", "text", "image"]).to_pylist()}
    for uid, text in pool.kept_texts.items():
        assert curated.get(uid, {}).get("text") == text, uid
    for uid, (kind, data) in pool.kept_images.items():
        assert curated[uid]["image"] == data, uid
        image = decode_rgb(data)
        assert image.mode == "RGB", kind
        if kind == "EXIF-rotated JPEG":
            assert image.size == (40, 64) and image.getpixel((20, 4))[0] > 200  # upright: red on top
        if kind == "16-bit grayscale PNG":
            assert 150 <= image.getpixel((5, 5))[0] <= 160  # 40000..40255 / 256, not clipped to white
    shard_uids = {u for (u,) in query(work, "SELECT uid FROM shard")[1]}
    assert set(pool.kept_texts) <= shard_uids  # and on through embed, cluster, the caption stages and shard

    outcomes = Counter((kind, "kept (RGB)" if o == KEPT and u in pool.kept_images else o.replace(":", ": "))
                       for kind, o, u in pool.expected)
    for (kind, outcome), n in outcomes.items():
        reliability.bad_input(kind, outcome, n)
    reliability.bad_input("empty tar shard", "no rows, no error")
