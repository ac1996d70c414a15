"""The simulated captioner writes in phrasings of its own: nothing it says reuses the text the evaluation
generates (zero-shot prompts, retrieval captions, every choice of the three ARO-style compositional sets), so
eval scores measure learning, not template matching (issue 8)."""

import copy
import re

import numpy as np

from curation.captions import SimulatedBackend
from curation.world import captioner
from curation.world.evaluation import order_set, retrieval_set, vg_attribution_set, vg_relation_set
from curation.world.pool import WorldConfig
from curation.world.scenes import sample_scene
from curation.world.shapes import SHAPES
from curation.world.vocabulary import BACKGROUNDS, COLOURS, SIZES, TEXTURES
from eval.config import EvalConfig
from eval.datasets import fill_template

RELATION = re.compile(r"\b(left of|right of|above|below)\b")
VOCABULARY = {*SHAPES, *COLOURS, *SIZES, *TEXTURES, *BACKGROUNDS}


def skeleton(text: str) -> list[str]:
    """The text's words with the world's vocabulary masked: relations as R, every other vocabulary word as X
    (runs of X collapsed), so two texts share a gram only where their own wording agrees."""
    words = re.findall(r"[a-z]+", RELATION.sub(" R ", text.lower()))
    out: list[str] = []
    for word in ("X" if w in VOCABULARY else w for w in words):
        if not (word == "X" and out and out[-1] == "X"):
            out.append(word)
    return out


def grams(words: list[str], n: int = 4) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def eval_texts() -> list[str]:
    world, cfg = WorldConfig(), EvalConfig()
    prompts = [fill_template(t, c) for t in cfg.synthetic.templates for c in SHAPES]
    retrieval = retrieval_set(world, 150).column("caption").to_pylist()
    choices = [text for make in (vg_attribution_set, vg_relation_set, order_set)
               for row in make(world, 150).to_pylist() for text in (row["caption"], *row["negatives"])]
    return prompts + retrieval + choices


def captioner_texts(n: int = 400) -> list[str]:
    rng = np.random.default_rng(0)
    shape_p, colour_p = (1 / len(SHAPES),) * len(SHAPES), (1 / 12,) * 12
    scenes = [sample_scene(rng, shape_p, colour_p, (0.4, 0.4, 0.2), (0.55, 0.15, 0.15, 0.15))
              for _ in range(n)]
    backend, uids = SimulatedBackend(error_rate=0.05), [f"u{i}" for i in range(n)]
    long = backend.long_captions(uids, [""] * n, scenes, seed=0)
    short = backend.short_captions(uids, [""] * n, scenes, seed=0)
    sentences = [s for caption in long for s in re.split(r"(?<=\.)\s+", caption)]  # DreamLIP trains on these
    return long + short + sentences


def test_no_captioner_text_shares_a_four_word_gram_with_any_eval_text():
    evals = eval_texts()
    eval_grams = set().union(*(grams(skeleton(t)) for t in evals))
    short_evals = {tuple(skeleton(t)) for t in evals if len(skeleton(t)) < 4}  # "a {}." has no 4-gram
    assert eval_grams and short_evals
    for text in captioner_texts():
        words = skeleton(text)
        shared = grams(words) & eval_grams
        assert not shared, (text, shared)
        assert tuple(words) not in short_evals, text


def test_the_check_catches_the_old_phrasings():
    """The check is not vacuous: the eval's own describe() phrasing (what the captioner used before) fails it."""
    evals = eval_texts()
    eval_grams = set().union(*(grams(skeleton(t)) for t in evals))
    assert grams(skeleton("a photo of a small red star")) & eval_grams
    assert grams(skeleton("a red star left of a blue ring on a white background")) & eval_grams
    # ARO's attribution and relation forms, and every Order perturbation, are among the eval texts checked
    assert grams(skeleton("the red star and the blue ring")) & eval_grams
    assert grams(skeleton("the star is left of the ring")) & eval_grams
    for negative in order_set(WorldConfig(), 3).column("negatives").to_pylist()[2]:
        assert grams(skeleton(negative)) <= eval_grams, negative


def test_captioner_frames_name_no_shape_or_colour():
    """A frame word that is a class name ('frame', 'corner', 'cross'...) would put a false shape in the caption."""
    literals = [*captioner.SHORT_FRAMES, *captioner.OPENERS, *captioner.FILLS.values(),
                *captioner.RELATION_PHRASES.values(), "Nothing else appears in the picture.", "One of them is",
                "Another is", "It is", "close to the centre", "in the upper left part", "figures"]
    for literal in literals:
        words = set(re.findall(r"[a-z]+", re.sub(r"\{[a-zA-Z]+\}", " ", literal).lower()))
        assert not words & {*SHAPES, *COLOURS}, literal


def _scenes(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    shape_p, colour_p = (1 / len(SHAPES),) * len(SHAPES), (1 / len(COLOURS),) * len(COLOURS)
    return [sample_scene(rng, shape_p, colour_p, (0.4, 0.4, 0.2), (0.55, 0.15, 0.15, 0.15)) for _ in range(n)]


def test_corrupt_changes_one_attribute_to_an_absent_value():
    rng = np.random.default_rng(0)
    for scene in _scenes(100):
        bad = captioner.corrupt(scene, rng)
        diffs = [(a, o[a], b[a]) for o, b in zip(scene["objects"], bad["objects"]) for a in o if o[a] != b[a]]
        assert len(diffs) == 1 and diffs[0][0] == "colour"
        assert diffs[0][2] not in {o["colour"] for o in scene["objects"]} | {scene["background"]}
    before = copy.deepcopy(scene)
    captioner.corrupt(scene, rng)
    assert scene == before  # the input is left alone
    shape_only = {"objects": [{"shape": "star", "colour": None}], "relations": [], "background": None}
    assert captioner.corrupt(shape_only, rng, avoid=frozenset({"ring"}))["objects"][0]["shape"] not in {"star", "ring"}

