"""The world's evaluation sets: balanced, from other seeds, faithful, with true negatives; the ARO subsets'
caption forms and Order's four perturbations, each checked against its rule."""

import collections
import dataclasses
import hashlib
import re

import numpy as np
import pyarrow as pa
import pytest

from curation.world import evaluation
from curation.world.evaluation import (
    COMPOSITIONAL_SEED_OFFSET,
    ORDER_PERTURBATIONS,
    ORDER_SEED_OFFSET,
    RETRIEVAL_SEED_OFFSET,
    VG_RELATION_SEED_OFFSET,
    _eval_scene,
    classification_set,
    order_set,
    order_words,
    perturb,
    retrieval_set,
    shuffle_allbut_nouns_and_adj,
    shuffle_nouns_and_adj,
    shuffle_trigrams,
    shuffle_within_trigrams,
    trigrams,
    vg_attribution_set,
    vg_relation_set,
)
from curation.world.pool import WorldConfig
from curation.world.shapes import SHAPES
from curation.world.vocabulary import ADJECTIVES, COLOURS, NOUNS, RELATIONS
from tests.curation.world.helpers import CFG, decode

ARO_SETS = (vg_attribution_set, vg_relation_set, order_set)
ATTRIBUTION = re.compile(r"the (\w+) (\w+) and the (\w+) (\w+)")
ARTICLE = {"the": "a", "an": "a"}
"""Articles made one, for 'more than its articles changed'."""
RELATION = re.compile(r"the (\w+) is (left of|right of|above|below) the (\w+)")


def test_eval_sets_are_balanced():
    cls = classification_set(CFG, 3)
    labels = cls.column("label").to_pylist()
    assert collections.Counter(labels) == {k: 3 for k in range(len(SHAPES))}
    assert cls.schema.field("label").type == pa.int32()
    assert cls.column("classname").to_pylist() == [SHAPES[k] for k in labels]
    assert decode(cls.column("image")[0].as_py()).shape == (64, 64, 3)
    for make, width in zip(ARO_SETS, (1, 1, 4), strict=True):
        table = make(CFG, 12)
        assert table.column_names == ["uid", "image", "caption", "negatives"] and table.num_rows == 12
        assert {len(n) for n in table.column("negatives").to_pylist()} == {width}
    ret = retrieval_set(CFG, 30)
    assert ret.column_names == ["uid", "image", "caption"] and ret.num_rows == 30


def test_eval_sets_come_from_other_seeds(pool):
    samples, _ = pool
    pool_images = set(samples.column("image_sha256").to_pylist())
    pool_uids = set(samples.column("uid").to_pylist())
    for table in (classification_set(CFG, 4), retrieval_set(CFG, 50),
                  *(make(CFG, 50) for make in ARO_SETS)):
        digests = {hashlib.sha256(b).hexdigest() for b in table.column("image").to_pylist()}
        assert digests.isdisjoint(pool_images)
        assert pool_uids.isdisjoint(table.column("uid").to_pylist())
        assert len(digests) == table.num_rows


def test_retrieval_captions_are_faithful():
    cfg = WorldConfig(seed=5)
    table = retrieval_set(cfg, 20)
    for i, caption in enumerate(table.column("caption").to_pylist()):
        truth, _ = _eval_scene(cfg, RETRIEVAL_SEED_OFFSET, i, cfg.object_count_probs)
        for obj in truth["objects"]:
            assert f"{obj['colour']} {obj['shape']}" in caption


def test_the_eval_sets_do_not_share_images_or_seeds():
    offsets = {evaluation.CLASSIFICATION_SEED_OFFSET, RETRIEVAL_SEED_OFFSET, COMPOSITIONAL_SEED_OFFSET,
               VG_RELATION_SEED_OFFSET, ORDER_SEED_OFFSET}
    assert len(offsets) == 5 and min(offsets) > CFG.num_images
    digests = [{hashlib.sha256(b).hexdigest() for b in make(CFG, 40).column("image").to_pylist()}
               for make in (retrieval_set, *ARO_SETS)]
    assert sum(map(len, digests)) == len(set().union(*digests)) == 4 * 40


@pytest.mark.parametrize("make", ARO_SETS)
def test_aro_sets_are_seeded(make):
    table = make(CFG, 10)
    assert make(CFG, 10).equals(table)
    assert make(CFG, 4).equals(table.slice(0, 4))  # a row does not depend on the set's size
    other = make(dataclasses.replace(CFG, seed=CFG.seed + 1), 10)
    assert other.column("caption").to_pylist() != table.column("caption").to_pylist()
    assert set(other.column("image").to_pylist()).isdisjoint(table.column("image").to_pylist())


def test_vg_attribution_binds_each_colour_to_its_shape_and_the_negative_swaps_them():
    for i, row in enumerate(vg_attribution_set(CFG, 60).to_pylist()):
        truth, _ = _eval_scene(CFG, COMPOSITIONAL_SEED_OFFSET, i, (0.0, 1.0), distinct_colours=True,
                               texture_p=evaluation.SOLID)
        (c1, s1, c2, s2), (n1, t1, n2, t2) = (ATTRIBUTION.fullmatch(t).groups()
                                              for t in (row["caption"], *row["negatives"]))
        assert [(o["colour"], o["shape"]) for o in truth["objects"]] == [(c1, s1), (c2, s2)]
        assert c1 != c2 and s1 != s2 and {c1, c2} <= set(COLOURS)
        assert (t1, t2) == (s1, s2) and (n1, n2) == (c2, c1)  # same shapes in place, colours swapped
        assert (n1, t1) not in {(o["colour"], o["shape"]) for o in truth["objects"]}


def test_vg_relation_states_the_scenes_relation_and_the_negative_swaps_subject_and_object():
    relations = collections.Counter()
    for i, row in enumerate(vg_relation_set(CFG, 60).to_pylist()):
        truth, _ = _eval_scene(CFG, VG_RELATION_SEED_OFFSET, i, (0.0, 1.0), distinct_colours=True,
                               texture_p=evaluation.SOLID)
        (s, r, o), (ns, nr, no) = (RELATION.fullmatch(t).groups() for t in (row["caption"], *row["negatives"]))
        [rel] = truth["relations"]
        shapes = [obj["shape"] for obj in truth["objects"]]
        assert (shapes[rel["subject"]], rel["relation"], shapes[rel["object"]]) == (s, r, o) and s != o
        assert (ns, nr, no) == (o, r, s)
        relations[r] += 1
    assert set(relations) == set(RELATIONS)  # left/right and above/below pairs all occur


def _is_concatenation(words: list[str], pieces: list[list[str]]) -> bool:
    """Whether words is some ordering of the pieces, concatenated (each piece used once)."""
    if not pieces:
        return not words
    return any(words[:len(p)] == p and _is_concatenation(words[len(p):], pieces[:k] + pieces[k + 1:])
               for k, p in enumerate(pieces))


def _follows(rule: str, words: list[str], out: list[str]) -> bool:
    """Whether out is a perturbation of words by the named ARO rule (what moved and what stayed)."""
    tagged = [w in NOUNS | ADJECTIVES for w in words]
    if rule == "shuffle_nouns_and_adj":
        return all((a == b) if not t else ((a in NOUNS) == (b in NOUNS)) for a, b, t in zip(words, out, tagged))
    if rule == "shuffle_allbut_nouns_and_adj":
        return all(a == b for a, b, t in zip(words, out, tagged) if t) and \
            not any(w in NOUNS | ADJECTIVES for w, t in zip(out, tagged) if not t)
    if rule == "shuffle_within_trigrams":
        return [sorted(t) for t in trigrams(out)] == [sorted(t) for t in trigrams(words)]
    return _is_concatenation(out, trigrams(words))


def test_order_captions_are_faithful_and_every_negative_is_a_rule_abiding_permutation():
    sizes = collections.Counter()
    for i, row in enumerate(order_set(CFG, 80).to_pylist()):
        truth, rng = _eval_scene(CFG, ORDER_SEED_OFFSET, i, CFG.object_count_probs)
        words = row["caption"].split()
        assert words == order_words(truth, rng)  # attempt 0 always perturbs in this world
        for obj in truth["objects"]:
            assert f"{obj['colour']} {obj['shape']}" in row["caption"]
        sizes[len(truth["objects"])] += 1
        assert len(row["negatives"]) == len(ORDER_PERTURBATIONS)
        for rule, negative in zip(ORDER_PERTURBATIONS, row["negatives"], strict=True):
            out = negative.split()
            assert sorted(out) == sorted(words), (rule, negative)  # same words, another order
            assert out != words, (rule, negative)
            assert [ARTICLE.get(w, w) for w in out] != [ARTICLE.get(w, w) for w in words], (rule, negative)
            assert _follows(rule, words, out), (rule, row["caption"], negative)
    assert set(sizes) == {1, 2, 3}


WORDS = "a small red star left of a large blue ring and the red ring above a green tree on grass".split()


@pytest.mark.parametrize("rule", list(ORDER_PERTURBATIONS))
def test_each_rule_check_rejects_the_other_rules(rule):
    """The rule checks above are not vacuous: each accepts its own perturbation and rejects the others' (on a
    caption where they all move words)."""
    rng = np.random.default_rng(0)
    outs = {name: perturb(WORDS, fn, rng) for name, fn in ORDER_PERTURBATIONS.items()}
    assert _follows(rule, WORDS, outs[rule])
    assert not any(_follows(rule, WORDS, out) for name, out in outs.items() if name != rule)


def test_perturbations_move_only_what_their_rule_names():
    rng = np.random.default_rng(1)
    words = "a small red star on a smooth gradient".split()
    out = shuffle_nouns_and_adj(words, rng)
    assert [out[i] for i in (0, 4, 5)] == ["a", "on", "a"]
    assert sorted(out[i] for i in (3, 7)) == ["gradient", "star"]  # nouns among nouns' places
    out = shuffle_allbut_nouns_and_adj(words, rng)
    assert [out[i] for i in (1, 2, 3, 6, 7)] == ["small", "red", "star", "smooth", "gradient"]
    assert trigrams(words) == [["a", "small", "red"], ["star", "on", "a"], ["smooth", "gradient"]]
    out = shuffle_within_trigrams(words, rng)
    assert sorted(out[:3]) == ["a", "red", "small"] and sorted(out[6:]) == ["gradient", "smooth"]
    assert _is_concatenation(shuffle_trigrams(words, rng), trigrams(words))


def test_perturb_gives_up_on_a_caption_it_cannot_change():
    rng = np.random.default_rng(0)
    assert perturb(["a", "star"], shuffle_nouns_and_adj, rng) is None  # one noun, no adjective
    assert perturb(["a", "red", "star"], shuffle_trigrams, rng) is None  # one trigram
    assert perturb(["the", "star", "a"], shuffle_allbut_nouns_and_adj, rng) is None  # articles only
    assert perturb(["a", "star", "on", "grass"], shuffle_nouns_and_adj, rng) == ["a", "grass", "on", "star"]


def test_an_order_row_whose_caption_cannot_be_perturbed_moves_to_its_next_scene(monkeypatch):
    real = evaluation.describe
    calls = []

    def unperturbable_first(truth, rng, style):
        calls.append(truth)
        return "a star" if len(calls) == 1 else real(truth, rng, style)

    monkeypatch.setattr(evaluation, "describe", unperturbable_first)
    row = order_set(CFG, 1).to_pylist()[0]
    truth, rng = _eval_scene(CFG, ORDER_SEED_OFFSET, 0, CFG.object_count_probs, attempt=1)
    assert calls[1] == truth and row["caption"] == " ".join(real(truth, rng, "full").replace(",", "").split())
    monkeypatch.setattr(evaluation, "describe", lambda truth, rng, style: "a star")
    with pytest.raises(RuntimeError, match="no perturbable caption"):
        order_set(CFG, 1)
