"""The synthetic world's evaluation sets: balanced, and drawn from seeds apart from the pool's.

Single-object images for zero-shot classification, kNN and the linear probe; images with a faithful
caption for retrieval; and for compositionality the three ARO subsets (Yuksekgonul et al., "When and Why
Vision-Language Models Behave Like Bags-of-Words, and What to Do About It?", ICLR 2023), each an image with
its true caption first and its false ones after:

- VG-Attribution: "the red star and the blue ring" against the colours swapped, "the blue star and the red
  ring" (ARO's "the paved road and the white house" / "the white road and the paved house");
- VG-Relation: "the star is left of the ring" against subject and object swapped (ARO's "the horse is eating
  the grass" / "the grass is eating the horse");
- Order (ARO's COCO/Flickr30k-Order): a faithful one-sentence caption of a scene of one to three objects
  against ARO's four word-order perturbations of it (ORDER_PERTURBATIONS, in the order of ARO's
  `perturb_functions` in `COCO_Order`), with words tagged by the world's vocabulary instead of spaCy.

These are tables; :mod:`eval.synthetic_world` turns them into the eval stage's dataset protocol.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from curation.world.alttext import describe
from curation.world.png import encode_png
from curation.world.pool import WorldConfig
from curation.world.rendering import render
from curation.world.scenes import sample_scene
from curation.world.shapes import SHAPES
from curation.world.vocabulary import ADJECTIVES, COLOURS, NOUNS

CLASSIFICATION_SEED_OFFSET = 1_000_003
RETRIEVAL_SEED_OFFSET = 2_000_003
COMPOSITIONAL_SEED_OFFSET = 3_000_003  # VG-Attribution's (the old two-way compositional set drew from it)
VG_RELATION_SEED_OFFSET = 4_000_003
ORDER_SEED_OFFSET = 5_000_003
"""Eval sets draw from seeds apart from the pool's (POOL_SEED_OFFSET = 0), so no eval image is a pool image."""


def _uniform(n: int) -> tuple[float, ...]:
    return (1.0 / n,) * n


def _eval_scene(cfg: WorldConfig, offset: int, i: int, count_p: tuple[float, ...],
                shape_p: tuple[float, ...] | None = None, distinct_colours: bool = False,
                texture_p: tuple[float, ...] | None = None, attempt: int = 0) -> tuple[dict, np.random.Generator]:
    """Scene i of an eval set: uniform shapes and colours, from the seed cfg.seed + offset; attempt > 0 draws
    a replacement scene for row i (the Order set's, when a caption cannot be perturbed)."""
    rng = np.random.default_rng([cfg.seed + offset, i, attempt] if attempt else [cfg.seed + offset, i])
    shape_p = _uniform(len(SHAPES)) if shape_p is None else shape_p
    truth = sample_scene(rng, shape_p, _uniform(len(COLOURS)), count_p,
                         cfg.texture_probs if texture_p is None else texture_p, distinct_colours)
    return truth, rng


def _png(cfg: WorldConfig, truth: dict, rng: np.random.Generator) -> bytes:
    return encode_png(render(truth, cfg.image_size, rng, cfg.max_rotation, cfg.supersample))


def classification_set(cfg: WorldConfig, per_class: int) -> pa.Table:
    """Balanced single-object images, per_class of each shape, interleaved (row i has label i % C)."""
    rows: dict[str, list] = {"uid": [], "image": [], "label": [], "classname": []}
    for i in range(per_class * len(SHAPES)):
        label = i % len(SHAPES)
        one_hot = tuple(float(k == label) for k in range(len(SHAPES)))
        truth, rng = _eval_scene(cfg, CLASSIFICATION_SEED_OFFSET, i, (1.0,), one_hot)
        rows["uid"].append(f"cls{cfg.seed}-{i:08d}")
        rows["image"].append(_png(cfg, truth, rng))
        rows["label"].append(label)
        rows["classname"].append(SHAPES[label])
    schema = pa.schema([("uid", pa.string()), ("image", pa.binary()), ("label", pa.int32()),
                        ("classname", pa.string())])
    return pa.Table.from_pydict(rows, schema=schema)


def retrieval_set(cfg: WorldConfig, n: int) -> pa.Table:
    """Images of one to three objects with a faithful one-sentence caption each."""
    rows: dict[str, list] = {"uid": [], "image": [], "caption": []}
    for i in range(n):
        truth, rng = _eval_scene(cfg, RETRIEVAL_SEED_OFFSET, i, cfg.object_count_probs)
        rows["uid"].append(f"ret{cfg.seed}-{i:08d}")
        rows["caption"].append(describe(truth, rng, "full"))
        rows["image"].append(_png(cfg, truth, rng))
    schema = pa.schema([("uid", pa.string()), ("image", pa.binary()), ("caption", pa.string())])
    return pa.Table.from_pydict(rows, schema=schema)


SOLID = (1.0, 0.0, 0.0, 0.0)
"""Texture probabilities of the VG scenes: solid fills, so each object's colour is plain to see."""


def _choice_table(prefix: str, cfg: WorldConfig, rows: list[tuple[dict, np.random.Generator, str, list[str]]]
                  ) -> pa.Table:
    """(truth, rng, true caption, negatives) rows as a table; each image is rendered from its row's rng."""
    schema = pa.schema([("uid", pa.string()), ("image", pa.binary()), ("caption", pa.string()),
                        ("negatives", pa.list_(pa.string()))])
    return pa.Table.from_pydict({
        "uid": [f"{prefix}{cfg.seed}-{i:08d}" for i in range(len(rows))],
        "image": [_png(cfg, truth, rng) for truth, rng, _, _ in rows],
        "caption": [caption for _, _, caption, _ in rows],
        "negatives": [negatives for _, _, _, negatives in rows],
    }, schema=schema)


def _pair_scene(cfg: WorldConfig, offset: int, i: int) -> tuple[dict, np.random.Generator]:
    """Two solid objects of distinct shapes and colours. Two objects always share a row or a column
    (scenes._layout puts them in two halves), so the scene has exactly one relation."""
    return _eval_scene(cfg, offset, i, (0.0, 1.0), distinct_colours=True, texture_p=SOLID)


def attribution_caption(shapes: tuple[str, str], colours: tuple[str, str]) -> str:
    """ARO's VG-Attribution form: 'the {attr1} {obj1} and the {attr2} {obj2}'."""
    return f"the {colours[0]} {shapes[0]} and the {colours[1]} {shapes[1]}"


def relation_caption(subject: str, relation: str, obj: str) -> str:
    """ARO's VG-Relation form: 'the {obj1} is {relation} the {obj2}'."""
    return f"the {subject} is {relation} the {obj}"


def vg_attribution_set(cfg: WorldConfig, n: int) -> pa.Table:
    """n two-object scenes; the true caption binds each colour to its shape, the negative swaps the colours."""
    rows = []
    for i in range(n):
        truth, rng = _pair_scene(cfg, COMPOSITIONAL_SEED_OFFSET, i)
        shapes = (truth["objects"][0]["shape"], truth["objects"][1]["shape"])
        colours = (truth["objects"][0]["colour"], truth["objects"][1]["colour"])
        rows.append((truth, rng, attribution_caption(shapes, colours), [attribution_caption(shapes, colours[::-1])]))
    return _choice_table("vga", cfg, rows)


def vg_relation_set(cfg: WorldConfig, n: int) -> pa.Table:
    """n two-object scenes; the true caption states their relation, the negative swaps subject and object.
    Every relation of the world is asymmetric ('left of', 'above'...), so the swap is always false (ARO leaves
    its symmetric relations, 'next to' or 'near', out of the score)."""
    rows = []
    for i in range(n):
        truth, rng = _pair_scene(cfg, VG_RELATION_SEED_OFFSET, i)
        rel = truth["relations"][0]
        subject, obj = truth["objects"][rel["subject"]]["shape"], truth["objects"][rel["object"]]["shape"]
        rows.append((truth, rng, relation_caption(subject, rel["relation"], obj),
                     [relation_caption(obj, rel["relation"], subject)]))
    return _choice_table("vgr", cfg, rows)


Perturbation = Callable[[list[str], np.random.Generator], list[str]]


def _shuffle_at(words: list[str], positions: list[int], rng: np.random.Generator) -> list[str]:
    """The words with those at `positions` permuted among themselves; every other word stays in place."""
    out = list(words)
    for p, q in zip(positions, rng.permutation(positions), strict=True):
        out[p] = words[q]
    return out


def shuffle_nouns_and_adj(words: list[str], rng: np.random.Generator) -> list[str]:
    """ARO's `shuffle_nouns_and_adj`: nouns permuted among the nouns' places, then adjectives among theirs."""
    nouns = [i for i, w in enumerate(words) if w in NOUNS]
    adjectives = [i for i, w in enumerate(words) if w in ADJECTIVES]
    return _shuffle_at(_shuffle_at(words, nouns, rng), adjectives, rng)


def shuffle_allbut_nouns_and_adj(words: list[str], rng: np.random.Generator) -> list[str]:
    """ARO's `shuffle_allbut_nouns_and_adj`: every word that is neither noun nor adjective permuted among
    those places."""
    return _shuffle_at(words, [i for i, w in enumerate(words) if w not in NOUNS | ADJECTIVES], rng)


def trigrams(words: list[str]) -> list[list[str]]:
    """Consecutive groups of three words, the last one shorter when the length is not a multiple of three
    (ARO's `get_trigrams`)."""
    return [words[i:i + 3] for i in range(0, len(words), 3)]


def shuffle_within_trigrams(words: list[str], rng: np.random.Generator) -> list[str]:
    """ARO's `shuffle_within_trigrams`: each trigram's words permuted, the trigrams kept in order."""
    return [tri[k] for tri in trigrams(words) for k in rng.permutation(len(tri))]


def shuffle_trigrams(words: list[str], rng: np.random.Generator) -> list[str]:
    """ARO's `shuffle_trigrams`: the trigrams permuted, each one's words kept in order."""
    tris = trigrams(words)
    return [w for k in rng.permutation(len(tris)) for w in tris[k]]


ORDER_PERTURBATIONS: dict[str, Perturbation] = {
    "shuffle_nouns_and_adj": shuffle_nouns_and_adj,
    "shuffle_allbut_nouns_and_adj": shuffle_allbut_nouns_and_adj,
    "shuffle_within_trigrams": shuffle_within_trigrams,
    "shuffle_trigrams": shuffle_trigrams,
}
"""The Order set's negatives, in this order after the true caption (ARO's `perturb_functions` of COCO_Order)."""

ARTICLES = frozenset({"a", "an", "the"})
"""Words a perturbation must change more than (a caption with only 'a' and 'the' exchanged is still true)."""
ORDER_MAX_DRAWS = 20
"""Draws of one perturbation before a caption counts as one it cannot perturb (a real one gets through in one
or two: every caption has two nouns, two other words and more than one trigram)."""
ORDER_MAX_SCENES = 8
"""Scenes tried for one Order row before giving up (a row moves on when its caption cannot be perturbed)."""


def _article_blind(words: list[str]) -> list[str]:
    return ["a" if w in ARTICLES else w for w in words]


def perturb(words: list[str], rule: Perturbation, rng: np.random.Generator,
            max_draws: int = ORDER_MAX_DRAWS) -> list[str] | None:
    """rule(words), redrawn until it differs from the words by more than its articles ('a' and 'the'
    exchanged is no false caption); None if max_draws draws never did."""
    for _ in range(max_draws):
        out = rule(words, rng)
        if _article_blind(out) != _article_blind(words):
            return out
    return None


def order_words(truth: dict, rng: np.random.Generator) -> list[str]:
    """The Order set's true caption as words: describe()'s one-sentence style with its commas dropped. (ARO
    lower-cases captions and strips most punctuation, `pre_caption`, but keeps commas, which its tokenizers
    make words of their own to shuffle; here a perturbation moves words only.)"""
    return describe(truth, rng, "full").replace(",", "").split()


def _order_row(cfg: WorldConfig, i: int) -> tuple[dict, np.random.Generator, str, list[str]]:
    """Row i of the Order set: the first scene of row i's seeds (attempt 0, 1, ...) whose caption every
    perturbation can change, so the row is the same whatever else the set holds."""
    for attempt in range(ORDER_MAX_SCENES):
        truth, rng = _eval_scene(cfg, ORDER_SEED_OFFSET, i, cfg.object_count_probs, attempt=attempt)
        words = order_words(truth, rng)
        negatives = [perturb(words, rule, rng) for rule in ORDER_PERTURBATIONS.values()]
        if all(neg is not None for neg in negatives):
            return truth, rng, " ".join(words), [" ".join(neg) for neg in negatives if neg is not None]
    raise RuntimeError(f"order set: no perturbable caption for row {i} in {ORDER_MAX_SCENES} scenes")


def order_set(cfg: WorldConfig, n: int) -> pa.Table:
    """n scenes of one to three objects, each with its faithful caption and ARO's four word-order perturbations
    of it (negatives, in ORDER_PERTURBATIONS order)."""
    return _choice_table("ord", cfg, [_order_row(cfg, i) for i in range(n)])
