import importlib
import inspect
import re
import typing

import numpy as np
import pyarrow as pa
import pytest

from curation import captions, rewriter
from curation.captions import CaptionerConfig, LongcapConfig, RewriteConfig, SimulatedBackend
from curation.world import alttext
from curation.world.scenes import sample_scene
from curation.world.shapes import SHAPES
from curation.world.vocabulary import COLOURS


def _scenes(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    shape_p = (1 / len(SHAPES),) * len(SHAPES)
    colour_p = (1 / len(COLOURS),) * len(COLOURS)
    return [sample_scene(rng, shape_p, colour_p, (0.4, 0.4, 0.2), (0.55, 0.15, 0.15, 0.15))
            for _ in range(n)]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def _is_wrong(caption: str, truth: dict) -> bool:
    """A colour or shape named in the caption that the scene does not hold."""
    words = _words(caption)
    colours = {o["colour"] for o in truth["objects"]} | {truth["background"]}
    shapes = {o["shape"] for o in truth["objects"]}
    return bool((words & set(COLOURS)) - colours or (words & set(SHAPES)) - shapes)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=\.)\s+", text.strip()) if s]


SCENES = _scenes(400)
UIDS = [f"u{i}" for i in range(len(SCENES))]
TEXTS = [alttext.describe(s, np.random.default_rng(i), "full") for i, s in enumerate(SCENES)]


def test_registry_names_every_backend_a_config_may_name():
    assert set(captions.BACKENDS) == set(typing.get_args(captions.BackendName)) == {"simulated", "openai",
                                                                                    "transformers"}
    for path in captions.BACKENDS.values():
        module, name = path.rsplit(".", 1)
        assert isinstance(getattr(importlib.import_module(module), name), type)


def test_outputs_depend_on_seed_and_uid_only():
    backend = SimulatedBackend(error_rate=0.3)
    n = 30
    whole = backend.rewrite(UIDS[:n], TEXTS[:n], 3, seed=7)
    reversed_ = backend.rewrite(UIDS[:n][::-1], TEXTS[:n][::-1], 3, seed=7)[::-1]
    singles = [backend.rewrite([u], [t], 3, seed=7)[0] for u, t in zip(UIDS[:n], TEXTS[:n])]
    assert whole == reversed_ == singles
    long_a = backend.long_captions(UIDS[:n], TEXTS[:n], SCENES[:n], seed=7)
    long_b = backend.long_captions(UIDS[:n][::-1], TEXTS[:n][::-1], SCENES[:n][::-1], seed=7)[::-1]
    assert long_a == long_b
    assert backend.long_captions(UIDS[:n], TEXTS[:n], SCENES[:n], seed=8) != long_a


def test_error_rate_is_honoured():
    n = len(SCENES)
    clean = SimulatedBackend(error_rate=0.0)
    noisy = SimulatedBackend(error_rate=0.3)
    for method in ("long_captions", "short_captions"):
        ok = getattr(clean, method)(UIDS, TEXTS, SCENES, seed=1)
        assert not any(_is_wrong(c, s) for c, s in zip(ok, SCENES))
        bad = getattr(noisy, method)(UIDS, TEXTS, SCENES, seed=1)
        assert sum(_is_wrong(c, s) for c, s in zip(bad, SCENES)) / n == pytest.approx(0.3, abs=0.07), method
    # every TEXTS caption names a colour, so each rewrite has one to distort (into any English colour word)
    rewrites = noisy.rewrite(UIDS, TEXTS, 2, seed=1)

    def colours(text: str) -> set[str]:
        return _words(text) & set(rewriter.ENGLISH_COLOURS)

    distorted = [colours(r) != colours(t) for rs, t in zip(rewrites, TEXTS) for r in rs]
    assert np.mean(distorted) == pytest.approx(0.3, abs=0.07)
    assert not any(_is_wrong(r, s) for rs, s in zip(clean.rewrite(UIDS, TEXTS, 2, 1), SCENES) for r in rs)


def test_long_captions_have_several_sentences():
    backend = SimulatedBackend()
    for caption, scene in zip(backend.long_captions(UIDS[:50], TEXTS[:50], SCENES[:50], 0), SCENES):
        assert len(_sentences(caption)) >= 3
        assert scene["objects"][0]["shape"] in caption or _is_wrong(caption, scene)
    other = backend.long_captions(["x"], ["A dog runs on the beach."], [None], 0)[0]
    assert len(_sentences(other)) >= 3 and "dog" in other


def test_short_captions_are_one_faithful_sentence():
    shorts = SimulatedBackend(error_rate=0.0).short_captions(UIDS[:50], TEXTS[:50], SCENES[:50], 0)
    for caption, scene in zip(shorts, SCENES):
        assert f"{scene['objects'][0]['colour']} {scene['objects'][0]['shape']}" in caption
        assert len(_sentences(caption)) == 1


def test_the_rewriter_is_text_only_and_never_corrects_a_caption():
    """LaCLIP's rewriter is a text-only LLM: it gets no scene, and a wrong alt-text stays wrong."""
    assert "truths" not in inspect.signature(SimulatedBackend.rewrite).parameters
    assert "truths" not in inspect.signature(captions.Rewriter.rewrite_table).parameters
    backend = SimulatedBackend(error_rate=0.0)
    # captions of *other* scenes (the pool's 'other_image' alt-texts): shapes the image does not hold
    others = [alttext.describe(SCENES[(i + 1) % len(SCENES)], np.random.default_rng(i), "full")
              for i in range(len(SCENES))]
    for text, scene, rewrites in zip(others, SCENES, backend.rewrite(UIDS, others, 3, seed=0)):
        named = _words(text) & set(SHAPES)
        for r in rewrites:
            assert _words(r) & set(SHAPES) == named  # nothing added from the scene, nothing dropped
            assert _is_wrong(r, scene) == _is_wrong(text, scene)


def test_rewrites_keep_what_the_caption_says():
    backend = SimulatedBackend(error_rate=0.0)
    (rewrites,) = backend.rewrite(["a"], ["Buy red star sticker online - free shipping!"], 4, 0)
    assert len(rewrites) == 4 and len(set(rewrites)) == 4
    assert all("red star" in r and "sticker" in r for r in rewrites)  # boilerplate stays: it reads text only
    (rewrites,) = backend.rewrite(["b"], ["red star left of a ring on grass"], 6, 0)
    for r in rewrites:
        assert "red star left of a ring" in r or "ring right of a red star" in r
    assert rewriter.reorder_relation("a red star left of a ring on grass") == "a ring right of a red star on grass"
    assert rewriter.reorder_relation("a red star and a ring") is None


def test_text_without_truth_is_paraphrased():
    backend = SimulatedBackend(error_rate=0.5)
    texts = ["A photo of a small dog with a ball.", "Buy cheap shoes online", "IMG_2034.jpg", ""]
    out = backend.rewrite(["a", "b", "c", "d"], texts, 3, seed=0)
    assert [len(r) for r in out] == [3, 3, 3, 0]
    assert all("dog" in r and "ball" in r for r in out[0])
    assert len(set(out[0])) > 1
    assert all("shoes" in r for r in out[1])
    assert all("IMG_2034" in r for r in out[2])
    assert out[3] == []  # nothing to rewrite: the original stays the only text
    shorts = backend.short_captions(["a", "d"], [texts[0], ""], [None, None], 0)
    assert "dog" in shorts[0] and shorts[1] == ""


def test_backends_say_what_they_could_see():
    backend = SimulatedBackend(error_rate=0.1)
    rewrite, longcap = backend.describe("rewrite"), backend.describe("longcap")
    assert rewrite["simulated"] and "caption text only" in rewrite["sees"] and rewrite["error_rate"] == 0.1
    assert longcap["simulated"] and "ground truth" in longcap["sees"]


def test_table_helpers_add_columns_independent_of_partitioning():
    n = 20
    table = pa.table({"uid": UIDS[:n], "text": TEXTS[:n], "image": [b"png"] * n})
    rewriter_ = captions.Rewriter(RewriteConfig(k=2), cache_root=None)
    whole, tally = rewriter_.rewrite_table(table, seed=0)
    halves = [rewriter_.rewrite_table(table.slice(i, 10), seed=0)[0] for i in (0, 10)]
    assert whole.equals(pa.concat_tables(halves))
    assert whole.schema.field("rewrites").type == pa.list_(pa.string())
    assert all(len(r) == 2 for r in whole.column("rewrites").to_pylist())
    assert tally.samples == n and tally.requests == 0  # the simulated model sends nothing
    captioner = captions.Captioner(LongcapConfig(), cache_root=None)
    long, _ = captioner.longcap_table(table, SCENES[:n], seed=0)
    assert long.column_names == ["uid", "text", "image", "long_caption", "long_captions", "long_caption_sentences",
                                 "synthetic_caption"]
    halves = [captioner.longcap_table(table.slice(i, 10), SCENES[i:i + 10], seed=0)[0] for i in (0, 10)]
    assert long.equals(pa.concat_tables(halves))
    rows = long.to_pylist()
    assert all(r["long_captions"] == [r["long_caption"]] for r in rows)
    assert all(r["long_caption_sentences"] == captions.split_sentences(r["long_caption"]) for r in rows)


def test_several_simulated_captioners_each_keep_their_caption():
    table = pa.table({"uid": UIDS[:10], "text": TEXTS[:10], "image": [b"png"] * 10})
    cfg = LongcapConfig(captioners=(CaptionerConfig("a"), CaptionerConfig("b"), CaptionerConfig("c")))
    out = captions.Captioner(cfg, cache_root=None).longcap_table(table, SCENES[:10], seed=0)[0].to_pylist()
    single = captions.Captioner(LongcapConfig(), cache_root=None).longcap_table(table, SCENES[:10], seed=0)[0]
    assert [r["long_caption"] for r in out] == single.column("long_caption").to_pylist()  # the first's
    assert sum(len(set(r["long_captions"])) > 1 for r in out) >= 7  # each draws its own phrasing
    for r in out:
        assert len(r["long_captions"]) == 3
        assert r["long_caption_sentences"] == [s for c in r["long_captions"] for s in captions.split_sentences(c)]
    with pytest.raises(ValueError, match="names must differ"):
        captions.Captioner(LongcapConfig(captioners=(CaptionerConfig("a"), CaptionerConfig("a"))), None)
