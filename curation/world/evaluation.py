"""The synthetic world's evaluation sets: balanced, and drawn from seeds apart from the pool's.

Single-object images for zero-shot classification, kNN and the linear probe; images with a faithful
caption for retrieval; two-object scenes with a true and a false caption (ARO-style) for
compositionality. These are tables; :mod:`eval.synthetic_world` turns them into the eval stage's
dataset protocol.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.world.alttext import describe
from curation.world.png import encode_png
from curation.world.pool import WorldConfig
from curation.world.rendering import render
from curation.world.scenes import sample_scene
from curation.world.shapes import SHAPES
from curation.world.vocabulary import COLOURS

CLASSIFICATION_SEED_OFFSET = 1_000_003
RETRIEVAL_SEED_OFFSET = 2_000_003
COMPOSITIONAL_SEED_OFFSET = 3_000_003
"""Eval sets draw from seeds apart from the pool's (POOL_SEED_OFFSET = 0), so no eval image is a pool image."""


def _uniform(n: int) -> tuple[float, ...]:
    return (1.0 / n,) * n


def _eval_scene(cfg: WorldConfig, offset: int, i: int, count_p: tuple[float, ...],
                shape_p: tuple[float, ...] | None = None, distinct_colours: bool = False,
                texture_p: tuple[float, ...] | None = None) -> tuple[dict, np.random.Generator]:
    """Scene i of an eval set: uniform shapes and colours, from the seed cfg.seed + offset."""
    rng = np.random.default_rng([cfg.seed + offset, i])
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


def _pair_caption(truth: dict, colours: tuple[str, str], order: tuple[int, int]) -> str:
    """'a red star left of a blue circle' with the given colours and subject/object order."""
    objs, rel = truth["objects"], truth["relations"][0]
    subject, obj = (rel["subject"], rel["object"])[order[0]], (rel["subject"], rel["object"])[order[1]]
    return (f"a {colours[subject]} {objs[subject]['shape']} {rel['relation']} "
            f"a {colours[obj]} {objs[obj]['shape']}")


def compositional_set(cfg: WorldConfig, n: int) -> pa.Table:
    """Two-object scenes (distinct shapes and colours) with a true and a false caption (ARO-style).

    colour_swap: the negative swaps the two objects' colours; relation_swap: it swaps subject and
    object of the relation. Kinds alternate, so any prefix is balanced.
    """
    rows: dict[str, list] = {"uid": [], "image": [], "positive": [], "negative": [], "kind": []}
    for i in range(n):
        truth, rng = _eval_scene(cfg, COMPOSITIONAL_SEED_OFFSET, i, (0.0, 1.0), distinct_colours=True,
                                 texture_p=(1.0, 0.0, 0.0, 0.0))
        colours = tuple(o["colour"] for o in truth["objects"])
        kind = ("colour_swap", "relation_swap")[i % 2]
        rows["positive"].append(_pair_caption(truth, colours, (0, 1)))
        swapped = (colours[::-1], (0, 1)) if kind == "colour_swap" else (colours, (1, 0))
        rows["negative"].append(_pair_caption(truth, *swapped))
        rows["kind"].append(kind)
        rows["uid"].append(f"cmp{cfg.seed}-{i:08d}")
        rows["image"].append(_png(cfg, truth, rng))
    schema = pa.schema([("uid", pa.string()), ("image", pa.binary()), ("positive", pa.string()),
                        ("negative", pa.string()), ("kind", pa.string())])
    return pa.Table.from_pydict(rows, schema=schema)

