import collections
import hashlib
import io
import re

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curation import alttext, synthetic
from curation.synthetic import WorldConfig

CFG = WorldConfig(num_images=5000, seed=3)


@pytest.fixture(scope="module")
def pool() -> tuple[pa.Table, pa.Table]:
    return synthetic.generate_pool(CFG, 0, 1500)


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_vocabulary_sizes():
    assert len(synthetic.SHAPES) >= 24 and len(set(synthetic.SHAPES)) == len(synthetic.SHAPES)
    assert len(synthetic.COLOURS) >= 10 and len(synthetic.BACKGROUNDS) >= 8
    assert all(re.fullmatch(r"[a-z]+( [a-z]+)?", s) for s in synthetic.SHAPES)
    assert set(synthetic.SHAPE_PRIMITIVES) == set(synthetic.SHAPES)


def test_partitions_give_identical_rows():
    whole = synthetic.generate_pool(CFG, 0, 20)
    parts = [synthetic.generate_pool(CFG, 0, 10), synthetic.generate_pool(CFG, 10, 20)]
    for k in range(2):
        assert pa.concat_tables([p[k] for p in parts]).equals(whole[k])
    assert synthetic.generate_pool(CFG, 5, 15)[0].equals(whole[0].slice(5, 10))


def test_seed_changes_pool():
    a, _ = synthetic.generate_pool(CFG, 0, 10)
    b, _ = synthetic.generate_pool(WorldConfig(num_images=5000, seed=4), 0, 10)
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
        assert _decode(row["image"]).shape == (64, 64, 3)
        assert hashlib.sha256(row["image"]).hexdigest() == row["image_sha256"]
        assert (row["width"], row["height"]) == (64, 64)
    small, _ = synthetic.generate_pool(WorldConfig(num_images=10, image_size=32), 0, 3)
    assert _decode(small.column("image")[0].as_py()).shape == (32, 32, 3)


def test_png_encoder_round_trips():
    pixels = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    assert np.array_equal(_decode(synthetic.encode_png(pixels)), pixels)


def test_render_places_objects_where_the_truth_says():
    truth = {"background": "white", "relations": [],
             "objects": [{"shape": "circle", "colour": "red", "size": "medium", "texture": "solid",
                          "x": 0.3, "y": 0.7}]}
    img = synthetic.render(truth, 64, np.random.default_rng(0)).astype(float)
    assert np.linalg.norm(img[45, 19] - synthetic.COLOUR_RGB["red"]) < 40  # row = y, column = x
    assert np.linalg.norm(img[19, 45] - synthetic.BACKGROUND_MEAN["white"]) < 40


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
    assert len(shapes) == len(synthetic.SHAPES)
    assert max(shapes.values()) > 8 * min(shapes.values())
    assert max(colours.values()) > 5 * min(colours.values())
    flat, _ = synthetic.generate_pool(WorldConfig(num_images=400, zipf_a=0.0), 0, 400)
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
    samples, truth = synthetic.generate_pool(only_empty, 0, 30)
    assert set(samples.column("text").to_pylist()) == {""}
    with pytest.raises(ValueError):
        WorldConfig(p_junk=-1.0).mixture()


def test_eval_sets_are_balanced():
    cls = synthetic.classification_set(CFG, 3)
    labels = cls.column("label").to_pylist()
    assert collections.Counter(labels) == {k: 3 for k in range(len(synthetic.SHAPES))}
    assert cls.schema.field("label").type == pa.int32()
    assert cls.column("classname").to_pylist() == [synthetic.SHAPES[k] for k in labels]
    assert _decode(cls.column("image")[0].as_py()).shape == (64, 64, 3)
    comp = synthetic.compositional_set(CFG, 40)
    assert collections.Counter(comp.column("kind").to_pylist()) == {"colour_swap": 20, "relation_swap": 20}
    ret = synthetic.retrieval_set(CFG, 30)
    assert ret.column_names == ["uid", "image", "caption"] and ret.num_rows == 30


def test_eval_sets_come_from_other_seeds(pool):
    samples, _ = pool
    pool_images = set(samples.column("image_sha256").to_pylist())
    pool_uids = set(samples.column("uid").to_pylist())
    for table in (synthetic.classification_set(CFG, 4), synthetic.retrieval_set(CFG, 50),
                  synthetic.compositional_set(CFG, 50)):
        digests = {hashlib.sha256(b).hexdigest() for b in table.column("image").to_pylist()}
        assert digests.isdisjoint(pool_images)
        assert pool_uids.isdisjoint(table.column("uid").to_pylist())
        assert len(digests) == table.num_rows


def test_compositional_negatives_differ_from_positives():
    comp = synthetic.compositional_set(CFG, 60).to_pylist()
    for row in comp:
        pos, neg = row["positive"], row["negative"]
        assert pos != neg
        assert sorted(pos.split()) == sorted(neg.split())  # same words, bound differently
        if row["kind"] == "colour_swap":
            assert [w for w in pos.split() if w in synthetic.SHAPES] == \
                   [w for w in neg.split() if w in synthetic.SHAPES]


def test_retrieval_captions_are_faithful():
    cfg = WorldConfig(seed=5)
    table = synthetic.retrieval_set(cfg, 20)
    for i, caption in enumerate(table.column("caption").to_pylist()):
        truth, _ = synthetic._eval_scene(cfg, synthetic.RETRIEVAL_SEED_OFFSET, i, cfg.object_count_probs)
        for obj in truth["objects"]:
            assert f"{obj['colour']} {obj['shape']}" in caption


def _scene(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    uniform = (1 / len(synthetic.SHAPES),) * len(synthetic.SHAPES)
    count_p = tuple(float(k == n - 1) for k in range(3))
    return synthetic.sample_scene(rng, uniform, (1 / 12,) * 12, count_p, CFG.texture_probs)


def test_describe_styles():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3):
        truth = _scene(n, seed=n)
        full = alttext.describe(truth, rng, "full")
        assert all(alttext.object_phrase(o) in full for o in truth["objects"])
        assert alttext.BACKGROUND_PHRASES[truth["background"]] in full
        long = alttext.describe(truth, rng, "long")
        assert len([s for s in long.split(". ") if s]) >= 3
        assert truth["objects"][0]["shape"] in alttext.describe(truth, rng, "short")
    with pytest.raises(ValueError):
        alttext.describe(_scene(1), rng, "haiku")


def test_templates_hold_no_vocabulary_word():
    """MetaCLIP matches substrings: a template's fixed words must not match an entry by accident."""
    entries = [e for e in synthetic.metadata_entries() if " " not in e]
    fixed = [*alttext.SHORT_TEMPLATES, *alttext.BOILERPLATE, *alttext.CONCEPTLESS_BOILERPLATE,
             *alttext.VAGUE_TEMPLATES, "The image shows",
             "This picture contains", "There is also", "Nothing else is in the scene besides",
             "towards the top left", "towards the bottom right", "near the middle"]
    for template in fixed:
        words = re.sub(r"\{[a-zA-Z]+\}", " ", template).lower()
        assert not [e for e in entries if e in words], template
    for texture, phrase in alttext.TEXTURE_PHRASES.items():
        assert [e for e in entries if e in phrase] == [texture]


def test_metadata_entries():
    entries = synthetic.metadata_entries()
    assert entries == sorted(set(entries))
    assert {*synthetic.SHAPES, *synthetic.COLOURS, "red star", "grass"} <= set(entries)
    samples, _ = synthetic.generate_pool(WorldConfig(num_images=300), 0, 300)
    text = " ".join(samples.column("text").to_pylist()).lower()
    assert all(d not in text for d in synthetic.DISTRACTOR_ENTRIES)


def test_bad_ranges_raise():
    with pytest.raises(ValueError):
        synthetic.generate_pool(WorldConfig(num_images=10), 5, 11)
