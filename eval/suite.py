"""The evaluation suite: zero-shot classification, retrieval, compositionality, kNN and linear probe.

Model-agnostic: a model enters only as two batch encoders (image bytes -> embeddings, strings ->
embeddings), so the same suite scores an open_clip checkpoint, a baseline, or a fake in tests.
Data-agnostic too: it scores the dataset protocol's objects (:mod:`eval.datasets`), whoever built them.
Protocols follow CLIP (prompt-ensembled zero-shot, logistic-regression probe), CLIP_benchmark
(retrieval recall@k) and ARO (caption choice); see eval/metrics.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from eval import metrics
from eval.config import EvalConfig
from eval.datasets import ClassificationSet, CompositionalSet, EvalDataset, RetrievalSet

ImageEncoder = Callable[[Sequence[bytes]], np.ndarray]
TextEncoder = Callable[[Sequence[str]], np.ndarray]


def encode_batched(encode: Callable[[Sequence], np.ndarray], items: Sequence, batch_size: int) -> np.ndarray:
    """Run an encoder over items in batches; returns (N, D) float32 with unit rows."""
    if len(items) == 0:
        raise ValueError("nothing to encode")
    parts = [np.asarray(encode(items[i:i + batch_size])) for i in range(0, len(items), batch_size)]
    return metrics.normalize(np.concatenate(parts))


def classification_metrics(encode_image: ImageEncoder, encode_text: TextEncoder, ds: ClassificationSet,
                           cfg: EvalConfig) -> dict:
    """Zero-shot top-1 over every image, then kNN and linear probe fitted on 'train' and scored on 'test'."""
    labels = np.asarray(ds.labels, dtype=np.int64)
    images = encode_batched(encode_image, list(ds.images), cfg.batch_size)
    text_encoder = lambda prompts: encode_batched(encode_text, prompts, cfg.batch_size)  # noqa: E731
    class_emb = metrics.class_embeddings(text_encoder, ds.classnames, ds.templates)  # (C, D)
    out = {
        "zeroshot_top1": metrics.zeroshot_top1(images, labels, class_emb),
        "num_classes": len(ds.classnames),
        "chance": 1.0 / len(ds.classnames),
        "num_zeroshot_images": len(labels),
    }
    train, test = ds.splits["train"], ds.splits["test"]
    out["knn_top1"] = metrics.knn_top1(images[train], labels[train], images[test], labels[test], k=cfg.knn_k)
    validation = ds.splits.get("validation")
    held_out = None if validation is None else (images[validation], labels[validation])
    out["linear_probe_top1"] = metrics.linear_probe_top1(
        images[train], labels[train], images[test], labels[test], seed=cfg.seed, validation=held_out)
    return out


def retrieval_metrics(encode_image: ImageEncoder, encode_text: TextEncoder, ds: RetrievalSet,
                      cfg: EvalConfig) -> dict:
    """Recall@k both ways; a text is a hit for every image it captions (identical captions count as one)."""
    texts = [caption for captions in ds.captions for caption in captions]
    images = encode_batched(encode_image, list(ds.images), cfg.batch_size)
    text_emb = encode_batched(encode_text, texts, cfg.batch_size)
    distinct = {text: k for k, text in enumerate(dict.fromkeys(texts))}
    owned = np.zeros((len(ds.images), len(distinct)), dtype=bool)  # (N images, distinct texts)
    for i, captions in enumerate(ds.captions):
        owned[i, [distinct[c] for c in captions]] = True
    correct = owned[:, [distinct[t] for t in texts]]  # (N images, T texts)
    recalls = metrics.recall_at_k(images, text_emb, correct, cfg.retrieval_ks)
    out = {f"retrieval_{name}": value for name, value in recalls.items()}
    out["num_retrieval_pairs"] = len(ds.images)
    return out


def compositional_metrics(encode_image: ImageEncoder, encode_text: TextEncoder, ds: CompositionalSet,
                          cfg: EvalConfig) -> dict:
    """ARO-style accuracy (the true caption beats every other choice), overall and per kind."""
    images = encode_batched(encode_image, list(ds.images), cfg.batch_size)
    # one choice position at a time: the batches are those of the true and the false column before
    choices = [encode_batched(encode_text, [c[j] for c in ds.choices], cfg.batch_size)
               for j in range(len(ds.choices[0]))]
    answers = np.asarray(ds.answers, dtype=np.int64)
    kinds = np.asarray(ds.kinds or ("all",) * len(ds.images), dtype=object)
    by_kind = {}
    for kind in sorted(set(kinds.tolist())):
        rows = kinds == kind
        by_kind[str(kind)] = metrics.choice_accuracy(images[rows], [c[rows] for c in choices], answers[rows])
    return {
        "compositional_acc": metrics.choice_accuracy(images, choices, answers),
        "compositional_by_kind": by_kind,
        "num_compositional_pairs": len(ds.images),
    }


SCORERS = {ClassificationSet: classification_metrics, RetrievalSet: retrieval_metrics,
           CompositionalSet: compositional_metrics}
"""Dataset kind -> the function that scores it."""


def run_suite(encode_image: ImageEncoder, encode_text: TextEncoder, datasets: Sequence[EvalDataset],
              cfg: EvalConfig) -> dict:
    """Every metric of every dataset, in one flat dict (CLIP_benchmark-shaped keys).

    One dataset per kind for now: two sets of a kind would report the same keys (a later issue that adds
    file and folder datasets namespaces them)."""
    if not datasets:
        raise ValueError("run_suite needs at least one dataset")
    kinds = [type(ds) for ds in datasets]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"one dataset per kind, got {[k.__name__ for k in kinds]}")
    out: dict = {}
    for ds in datasets:
        out.update(SCORERS[type(ds)](encode_image, encode_text, ds, cfg))
    return out
