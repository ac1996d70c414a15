"""The raw pool: partition-independent, seeded, exact schemas, long-tailed, its alt-text mixture."""

import collections
import hashlib
import re

import pyarrow as pa
import pytest

from curation.world import alttext
from curation.world.pool import WorldConfig, generate_pool
from curation.world.shapes import SHAPES
from tests.curation.world.helpers import CFG, decode


def test_partitions_give_identical_rows():
    whole = generate_pool(CFG, 0, 20)
    parts = [generate_pool(CFG, 0, 10), generate_pool(CFG, 10, 20)]
    for k in range(2):
        assert pa.concat_tables([p[k] for p in parts]).equals(whole[k])
    assert generate_pool(CFG, 5, 15)[0].equals(whole[0].slice(5, 10))


def test_seed_changes_pool():
    a, _ = generate_pool(CFG, 0, 10)
    b, _ = generate_pool(WorldConfig(num_images=5000, seed=4), 0, 10)
    assert set(a.column("image_sha256").to_pylist()).isdisjoint(b.column("image_sha256").to_pylist())


def test_schemas_are_exact(pool):
    samples, truth = pool
    assert samples.schema == pa.schema([
        ("uid", pa.string()), ("text", pa.string()), ("image", pa.binary()), ("image_sha256", pa.string()),
        ("width", pa.int32()), ("height", pa.int32()),
    ])
    obj = pa.struct([("shape", pa.string()), ("colour", pa.string()), ("size", pa.string()),
                     ("texture", pa.string()), ("x", pa.float32()), ("y", pa.float32())])
    rel = pa.struct([("subject", pa.int32()), ("relation", pa.string()), ("object", pa.int32())])
    assert truth.schema == pa.schema([("uid", pa.string()), ("background", pa.string()),
                                      ("objects", pa.list_(obj)), ("relations", pa.list_(rel)),
                                      ("text_kind", pa.string())])
    assert samples.column("uid").equals(truth.column("uid"))
    assert samples.column("text").null_count == 0
    assert samples.column("uid")[7].as_py() == "syn3-00000007"


def test_images_decode_to_configured_size(pool):
    samples, _ = pool
    for row in samples.slice(0, 20).to_pylist():
        assert decode(row["image"]).shape == (64, 64, 3)
        assert hashlib.sha256(row["image"]).hexdigest() == row["image_sha256"]
        assert (row["width"], row["height"]) == (64, 64)
    small, _ = generate_pool(WorldConfig(num_images=10, image_size=32), 0, 3)
    assert decode(small.column("image")[0].as_py()).shape == (32, 32, 3)


def test_scene_graphs_are_consistent(pool):
    _, truth = pool
    counts = collections.Counter()
    for row in truth.to_pylist():
        objs = row["objects"]
        counts[len(objs)] += 1
        assert len({o["shape"] for o in objs}) == len(objs)
        for r in row["relations"]:
            s, o = objs[r["subject"]], objs[r["object"]]
            assert {"left of": s["x"] < o["x"], "right of": s["x"] > o["x"],
                    "above": s["y"] < o["y"], "below": s["y"] > o["y"]}[r["relation"]]
        if len(objs) == 2:
            assert len(row["relations"]) == 1
    assert set(counts) == {1, 2, 3}
    assert abs(counts[1] / 1500 - CFG.object_count_probs[0]) < 0.05


def test_pool_is_long_tailed(pool):
    _, truth = pool
    rows = truth.to_pylist()
    shapes = collections.Counter(r["objects"][0]["shape"] for r in rows)
    colours = collections.Counter(o["colour"] for r in rows for o in r["objects"])
    assert len(shapes) == len(SHAPES)
    assert max(shapes.values()) > 8 * min(shapes.values())
    assert max(colours.values()) > 5 * min(colours.values())
    flat, _ = generate_pool(WorldConfig(num_images=400, zipf_a=0.0), 0, 400)
    assert flat.num_rows == 400


def test_alt_text_mixture_matches_config(pool):
    samples, truth = pool
    texts, rows = samples.column("text").to_pylist(), truth.to_pylist()
    n = len(texts)
    kinds = collections.Counter(r["text_kind"] for r in rows)
    for kind, p in zip(alttext.ALT_TEXT_KINDS, CFG.mixture(), strict=True):
        assert abs(kinds[kind] / n - p) < 0.035, kind
    assert sum(t == "" for t in texts) / n == pytest.approx(CFG.p_empty, abs=0.02)
    junk = re.compile(r"^(IMG_|DSC|image \(|untitled-|photo_|thumb_|Screenshot |[0-9a-f]+\.webp$)")
    assert sum(bool(junk.match(t)) for t in texts) / n == pytest.approx(CFG.p_junk, abs=0.025)
    names_main = sum(r["objects"][0]["shape"] in t.lower() for t, r in zip(texts, rows, strict=True)) / n
    assert 0.55 <= names_main <= 0.67
    wrong = [t for t, r in zip(texts, rows, strict=True) if r["text_kind"] == "other_image"]
    assert len(set(wrong)) > 0.8 * len(wrong)


def test_alt_text_mixture_follows_its_proportions():
    only_empty = WorldConfig(num_images=50, **{f"p_{k}": 0.0 for k in alttext.ALT_TEXT_KINDS if k != "empty"})
    samples, truth = generate_pool(only_empty, 0, 30)
    assert set(samples.column("text").to_pylist()) == {""}
    with pytest.raises(ValueError):
        WorldConfig(p_junk=-1.0).mixture()


def test_bad_ranges_raise():
    with pytest.raises(ValueError):
        generate_pool(WorldConfig(num_images=10), 5, 11)
