"""The evaluation suite: zero-shot classification, retrieval, compositionality, kNN and linear probe.

Model-agnostic: a model enters only as two batch encoders (image bytes -> embeddings, strings ->
embeddings), so the same suite scores an open_clip checkpoint, a baseline, or a fake in tests.
Protocols follow CLIP (prompt-ensembled zero-shot, logistic-regression probe), CLIP_benchmark
(retrieval recall@k) and ARO (two-way caption choice); see eval/metrics.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from eval import metrics

ImageEncoder = Callable[[Sequence[bytes]], np.ndarray]
TextEncoder = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class EvalConfig:
    """Configuration of the `eval` stage."""

    per_class: int = 20
    """classification images kept per class (first rows of each label), for zero-shot, kNN and probe."""
    retrieval_pairs: int = 500
    """image-caption pairs used for retrieval (first rows of the set); recall is over this gallery."""
    compositional_pairs: int = 400
    """two-way caption choices scored (first rows of the set)."""
    templates: tuple[str, ...] = (
        "a photo of a {}.",
        "a {}.",
        "a drawing of a {}.",
        "a picture of a {} on a background.",
    )
    """zero-shot prompt templates, ensembled per class (CLIP Sec. 3.1.4)."""
    batch_size: int = 256
    """images or texts per encoder call."""
    retrieval_ks: tuple[int, ...] = (1, 5, 10)
    """k of the reported recall@k, both directions."""
    knn_k: int = 10
    """neighbours voting in the kNN classifier (weighted by exp(cos / 0.07), as in DINO)."""
    probe_train_fraction: float = 0.5
    """share of each class's kept images that trains kNN and the linear probe; the rest tests them."""
    seed: int = 0
    """seed of the train/test split and the probe's validation split."""


def encode_batched(encode: Callable[[Sequence], np.ndarray], items: Sequence, batch_size: int) -> np.ndarray:
    """Run an encoder over items in batches; returns (N, D) float32 with unit rows."""
    if len(items) == 0:
        raise ValueError("nothing to encode")
    parts = [np.asarray(encode(items[i:i + batch_size])) for i in range(0, len(items), batch_size)]
    return metrics.normalize(np.concatenate(parts))


def take_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Row indices of the first per_class rows of each label, in table order."""
    seen: dict[int, int] = {}
    keep = []
    for i, label in enumerate(labels.tolist()):
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def stratified_split(labels: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded shuffle puts round(fraction * n) rows (at least one) in train, the rest test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_train = min(len(rows), max(1, round(train_fraction * len(rows))))
        train.append(rows[:n_train])
        test.append(rows[n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def classification_metrics(
    encode_image: ImageEncoder, encode_text: TextEncoder, table: pa.Table, classnames: Sequence[str],
    cfg: EvalConfig,
) -> dict:
    """Zero-shot top-1 over the kept images, then kNN and linear probe on a stratified split of them."""
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    if labels.min() < 0 or labels.max() >= len(classnames):
        raise ValueError(f"labels must index the {len(classnames)} classnames")
    keep = take_per_class(labels, cfg.per_class)
    labels = labels[keep]
    images = encode_batched(encode_image, table.column("image").take(keep).to_pylist(), cfg.batch_size)
    text_encoder = lambda prompts: encode_batched(encode_text, prompts, cfg.batch_size)  # noqa: E731
    class_emb = metrics.class_embeddings(text_encoder, classnames, cfg.templates)  # (C, D)
    out = {
        "zeroshot_top1": metrics.zeroshot_top1(images, labels, class_emb),
        "num_classes": len(classnames),
        "chance": 1.0 / len(classnames),
        "num_zeroshot_images": len(keep),
    }
    train, test = stratified_split(labels, cfg.probe_train_fraction, cfg.seed)
    if len(test) == 0:
        raise ValueError("the classification set leaves no test images for kNN / linear probe")
    out["knn_top1"] = metrics.knn_top1(images[train], labels[train], images[test], labels[test], k=cfg.knn_k)
    out["linear_probe_top1"] = metrics.linear_probe_top1(
        images[train], labels[train], images[test], labels[test], seed=cfg.seed)
    return out


def retrieval_metrics(encode_image: ImageEncoder, encode_text: TextEncoder, table: pa.Table,
                      cfg: EvalConfig) -> dict:
    """Recall@k both ways over the first retrieval_pairs pairs; identical captions count as one group."""
    table = table.slice(0, cfg.retrieval_pairs)
    captions = table.column("caption").to_pylist()
    images = encode_batched(encode_image, table.column("image").to_pylist(), cfg.batch_size)
    texts = encode_batched(encode_text, captions, cfg.batch_size)
    _, groups = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    recalls = metrics.retrieval_recall(images, texts, cfg.retrieval_ks, groups=groups)
    out = {f"retrieval_{name}": value for name, value in recalls.items()}
    out["num_retrieval_pairs"] = table.num_rows
    return out


def compositional_metrics(encode_image: ImageEncoder, encode_text: TextEncoder, table: pa.Table,
                          cfg: EvalConfig) -> dict:
    """ARO-style accuracy over the first compositional_pairs choices, overall and per `kind`."""
    table = table.slice(0, cfg.compositional_pairs)
    images = encode_batched(encode_image, table.column("image").to_pylist(), cfg.batch_size)
    pos = encode_batched(encode_text, table.column("positive").to_pylist(), cfg.batch_size)
    neg = encode_batched(encode_text, table.column("negative").to_pylist(), cfg.batch_size)
    kinds = np.asarray(table.column("kind").to_pylist(), dtype=object)
    by_kind = {}
    for kind in sorted(set(kinds.tolist())):
        rows = kinds == kind
        by_kind[str(kind)] = metrics.compositional_accuracy(images[rows], pos[rows], neg[rows])
    return {
        "compositional_acc": metrics.compositional_accuracy(images, pos, neg),
        "compositional_by_kind": by_kind,
        "num_compositional_pairs": table.num_rows,
    }


def run_suite(
    encode_image: ImageEncoder,
    encode_text: TextEncoder,
    sets: dict[str, pa.Table],
    classnames: Sequence[str],
    cfg: EvalConfig,
) -> dict:
    """Every metric the sets allow; "compositional" is optional (its keys are absent without it).

    sets: "classification" (image, label, classname), "retrieval" (image, caption),
    "compositional" (image, positive, negative, kind). Labels index `classnames`.
    """
    missing = {"classification", "retrieval"} - set(sets)
    if missing:
        raise ValueError(f"run_suite needs the sets {sorted(missing)}")
    out = classification_metrics(encode_image, encode_text, sets["classification"], classnames, cfg)
    out.update(retrieval_metrics(encode_image, encode_text, sets["retrieval"], cfg))
    if "compositional" in sets:
        out.update(compositional_metrics(encode_image, encode_text, sets["compositional"], cfg))
    return out
