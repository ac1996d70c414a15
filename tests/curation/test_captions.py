import copy
import re

import numpy as np
import pyarrow as pa
import pytest

from curation import alttext, captions, synthetic
from curation.captions import LongcapConfig, RewriteConfig, SimulatedBackend


def _scenes(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    shape_p = (1 / len(synthetic.SHAPES),) * len(synthetic.SHAPES)
    colour_p = (1 / len(synthetic.COLOURS),) * len(synthetic.COLOURS)
    return [synthetic.sample_scene(rng, shape_p, colour_p, (0.4, 0.4, 0.2), (0.55, 0.15, 0.15, 0.15))
            for _ in range(n)]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def _is_wrong(caption: str, truth: dict) -> bool:
    """A colour or shape named in the caption that the scene does not hold."""
    words = _words(caption)
    colours = {o["colour"] for o in truth["objects"]} | {truth["background"]}
    shapes = {o["shape"] for o in truth["objects"]}
    return bool((words & set(synthetic.COLOURS)) - colours or (words & set(synthetic.SHAPES)) - shapes)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=\.)\s+", text.strip()) if s]


SCENES = _scenes(400)
UIDS = [f"u{i}" for i in range(len(SCENES))]
TEXTS = [alttext.describe(s, np.random.default_rng(i), "full") for i, s in enumerate(SCENES)]


def test_registry_and_name():
    backend = captions.make_backend("simulated", 0.1)
    assert backend.name == "simulated" and backend.error_rate == 0.1
    assert set(captions.BACKENDS) >= {"simulated"}
    with pytest.raises(ValueError, match="simulated"):
        captions.make_backend("gpt-17", 0.0)


def test_outputs_depend_on_seed_and_uid_only():
    backend = SimulatedBackend(error_rate=0.3)
    n = 30
    whole = backend.rewrite(UIDS[:n], TEXTS[:n], SCENES[:n], 3, seed=7)
    reversed_ = backend.rewrite(UIDS[:n][::-1], TEXTS[:n][::-1], SCENES[:n][::-1], 3, seed=7)[::-1]
    singles = [backend.rewrite([u], [t], [s], 3, seed=7)[0] for u, t, s in zip(UIDS[:n], TEXTS[:n], SCENES[:n])]
    assert whole == reversed_ == singles
    images = [b""] * n
    long_a = backend.long_captions(UIDS[:n], images, TEXTS[:n], SCENES[:n], seed=7)
    long_b = backend.long_captions(UIDS[:n][::-1], images, TEXTS[:n][::-1], SCENES[:n][::-1], seed=7)[::-1]
    assert long_a == long_b
    assert backend.long_captions(UIDS[:n], images, TEXTS[:n], SCENES[:n], seed=8) != long_a


def test_error_rate_is_honoured():
    n, images = len(SCENES), [b""] * len(SCENES)
    clean = SimulatedBackend(error_rate=0.0)
    noisy = SimulatedBackend(error_rate=0.3)
    for method in ("long_captions", "short_captions"):
        ok = getattr(clean, method)(UIDS, images, TEXTS, SCENES, seed=1)
        assert not any(_is_wrong(c, s) for c, s in zip(ok, SCENES))
        bad = getattr(noisy, method)(UIDS, images, TEXTS, SCENES, seed=1)
        assert sum(_is_wrong(c, s) for c, s in zip(bad, SCENES)) / n == pytest.approx(0.3, abs=0.07), method
    rewrites = noisy.rewrite(UIDS, TEXTS, SCENES, 2, seed=1)
    wrong = [_is_wrong(r, s) for rs, s in zip(rewrites, SCENES) for r in rs]
    assert np.mean(wrong) == pytest.approx(0.3, abs=0.07)
    assert not any(_is_wrong(r, s) for rs, s in zip(clean.rewrite(UIDS, TEXTS, SCENES, 2, 1), SCENES) for r in rs)


def test_long_captions_have_several_sentences():
    backend = SimulatedBackend()
    images = [b""] * 50
    for caption, scene in zip(backend.long_captions(UIDS[:50], images, TEXTS[:50], SCENES[:50], 0), SCENES):
        assert len(_sentences(caption)) >= 3
        assert scene["objects"][0]["shape"] in caption or _is_wrong(caption, scene)
    other = backend.long_captions(["x"], [b""], ["A dog runs on the beach."], [None], 0)[0]
    assert len(_sentences(other)) >= 3 and "dog" in other


def test_short_captions_are_one_faithful_sentence():
    shorts = SimulatedBackend(error_rate=0.0).short_captions(UIDS[:50], [b""] * 50, TEXTS[:50], SCENES[:50], 0)
    for caption, scene in zip(shorts, SCENES):
        assert f"{scene['objects'][0]['colour']} {scene['objects'][0]['shape']}" in caption
        assert len(_sentences(caption)) == 1


def test_rewrites_keep_the_true_concepts_of_the_caption():
    scene = {"background": "grass", "relations": [{"subject": 0, "relation": "left of", "object": 1}],
             "objects": [{"shape": "star", "colour": "red", "size": "small", "texture": "solid", "x": 0.3, "y": 0.5},
                         {"shape": "ring", "colour": "blue", "size": "large", "texture": "dotted", "x": 0.7,
                          "y": 0.5}]}
    backend = SimulatedBackend(error_rate=0.0)
    (rewrites,) = backend.rewrite(["a"], ["Buy red star sticker online - free shipping!"], [scene], 4, 0)
    assert len(rewrites) == 4 and len(set(rewrites)) == 4
    for r in rewrites:
        assert "red star" in r and "ring" not in r and "blue" not in r and "sticker" not in r
    (rewrites,) = backend.rewrite(["b"], ["red star left of a ring on grass"], [scene], 3, 0)
    for r in rewrites:
        assert ("red star left of a ring" in r or "ring right of a red star" in r) and "grass" in r


def test_mentioned_concepts_drop_what_is_untrue():
    scene = _scenes(1, seed=3)[0]
    obj = scene["objects"][0]
    wrong_colour = next(c for c in synthetic.COLOURS if c not in {o["colour"] for o in scene["objects"]})
    kept = captions.mentioned_concepts(f"a {wrong_colour} {obj['shape']}", scene)
    assert kept["objects"] == [{"shape": obj["shape"], "colour": None, "size": None, "texture": None}]
    assert kept["relations"] == [] and kept["background"] is None
    assert captions.mentioned_concepts("IMG_2034.jpg", scene)["objects"] == []


def test_text_without_truth_is_paraphrased():
    backend = SimulatedBackend(error_rate=0.5)
    texts = ["A photo of a small dog with a ball.", "Buy cheap shoes online", "IMG_2034.jpg", ""]
    out = backend.rewrite(["a", "b", "c", "d"], texts, [None] * 4, 3, seed=0)
    assert [len(r) for r in out] == [3, 3, 3, 3]
    assert all("dog" in r and "ball" in r for r in out[0])
    assert len(set(out[0])) > 1
    assert all("shoes" in r for r in out[1])
    assert out[3] == ["", "", ""]  # nothing to rewrite: the original stays
    shorts = backend.short_captions(["a", "d"], [b"", b""], [texts[0], ""], [None, None], 0)
    assert "dog" in shorts[0] and shorts[1] == ""
    # a synthetic caption that names nothing true is paraphrased too (a text-only rewriter keeps it)
    (junk,) = backend.rewrite(["j"], ["IMG_2034.jpg"], [SCENES[0]], 2, 0)
    assert all("IMG_2034" in r for r in junk)


def test_table_helpers_add_columns_independent_of_batching():
    n = 20
    table = pa.table({"uid": UIDS[:n], "text": TEXTS[:n], "image": [b"png"] * n})
    small = captions.rewrite_table(table, SCENES[:n], RewriteConfig(k=2, batch_size=3), seed=0)
    big = captions.rewrite_table(table, SCENES[:n], RewriteConfig(k=2, batch_size=256), seed=0)
    assert small.equals(big)
    assert small.schema.field("rewrites").type == pa.list_(pa.string())
    assert all(len(r) == 2 for r in small.column("rewrites").to_pylist())
    long = captions.longcap_table(table, SCENES[:n], LongcapConfig(batch_size=7), seed=0)
    assert long.column_names == ["uid", "text", "image", "long_caption", "synthetic_caption"]
    assert long.equals(captions.longcap_table(table, SCENES[:n], LongcapConfig(batch_size=100), seed=0))


def test_templates_hold_no_vocabulary_word():
    entries = [e for e in synthetic.metadata_entries() if " " not in e]
    for template in (*captions.REWRITE_TEMPLATES, *captions.PARAPHRASE_FRAMES, "In short",
                     "The original caption reads"):
        words = re.sub(r"\{[a-z]+\}", " ", template).lower()
        assert not [e for e in entries if e in words], template


def test_corrupt_changes_one_attribute_to_an_absent_value():
    rng = np.random.default_rng(0)
    for scene in SCENES[:100]:
        bad = captions.corrupt(scene, rng)
        diffs = [(a, o[a], b[a]) for o, b in zip(scene["objects"], bad["objects"]) for a in o if o[a] != b[a]]
        assert len(diffs) == 1 and diffs[0][0] == "colour"
        assert diffs[0][2] not in {o["colour"] for o in scene["objects"]} | {scene["background"]}
    before = copy.deepcopy(SCENES[0])
    captions.corrupt(SCENES[0], rng)
    assert SCENES[0] == before  # the input is left alone
    shape_only = {"objects": [{"shape": "star", "colour": None}], "relations": [], "background": None}
    assert captions.corrupt(shape_only, rng, avoid=frozenset({"ring"}))["objects"][0]["shape"] not in {"star", "ring"}
