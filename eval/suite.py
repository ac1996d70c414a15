"""The evaluation suite: each task of each dataset, one CLIP_benchmark-shaped result per (dataset, task).

Model-agnostic: a model enters as an :class:`eval.encoders.Encoder`, so the same suite scores an open_clip
checkpoint, a baseline, or a fake in tests. Data-agnostic too: it scores the dataset protocol's objects
(:mod:`eval.datasets`), whoever built them. Image features are computed once per dataset and model
(:mod:`eval.features`) and shared by every task on that dataset.

Tasks and what they report (CLIP_benchmark's metric names where it has the task):

- ``zeroshot_classification``: prompt-ensembled zero-shot (CLIP Sec. 3.1.4) with CLIP_benchmark's
  ``acc1``, ``acc5``, ``mean_per_class_recall``, over the rows the set's ``zeroshot_split`` names;
- ``zeroshot_retrieval``: ``image_retrieval_recall@k`` (text -> image) and ``text_retrieval_recall@k``
  (image -> texts), a hit when any positive is in the top k; positives are the pairs of the set (an image's
  own captions), as in CLIP_benchmark's zeroshot_retrieval.evaluate;
- ``linear_probe``: logistic regression on frozen, normalised features fitted on 'train', its penalty chosen
  on 'validation' (or a seeded quarter of 'train'), scored on 'test': ``lp_acc1``, ``lp_acc5``,
  ``lp_mean_per_class_recall`` (CLIP_benchmark's names; its optimiser differs: full-batch L-BFGS here);
- ``knn``: cosine kNN on the same split (DINO's weighted vote): ``knn_acc1``, ``knn_mean_per_class_recall``;
- ``compositional``: ARO-style caption choice, ``acc`` and ``acc_<kind>`` per subset;
- ``fewshot_gda``: training-free GDA few-shot adaptation ensembled with zero-shot (:mod:`eval.fewshot`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from eval import fewshot, metrics
from eval.config import TASKS, EvalConfig
from eval.datasets import ClassificationSet, CompositionalSet, EvalDataset, RetrievalSet
from eval.encoders import Encoder
from eval.features import FeatureCache, encode_batched

TASKS_OF_KIND: dict[type, tuple[str, ...]] = {
    ClassificationSet: ("zeroshot_classification", "linear_probe", "knn", "fewshot_gda"),
    RetrievalSet: ("zeroshot_retrieval",),
    CompositionalSet: ("compositional",),
}
"""Dataset kind -> the tasks it supports, in report order."""


def tasks_for(ds: EvalDataset, requested: Sequence[str], explicit: bool) -> tuple[str, ...]:
    """The tasks to run on `ds`: `requested` (every task its kind supports when empty), in report order.

    A task the kind cannot run is an error when it was asked of this dataset by name (`explicit`), and
    skipped when it came from a run-wide list."""
    supported = TASKS_OF_KIND[type(ds)]
    if unknown := sorted(set(requested) - set(TASKS)):
        raise ValueError(f"unknown eval task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    if not requested:
        return supported
    if explicit and (unfit := [t for t in requested if t not in supported]):
        raise ValueError(f"dataset {ds.name!r} ({type(ds).__name__}) cannot run {unfit[0]!r}; it runs "
                         f"{', '.join(supported)}")
    return tuple(t for t in supported if t in requested)


@dataclass
class Scoring:
    """One dataset being scored: its features, computed when a task first needs them."""

    encoder: Encoder
    ds: EvalDataset
    cfg: EvalConfig
    cache: FeatureCache = field(default_factory=lambda: FeatureCache(None))

    @cached_property
    def images(self) -> np.ndarray:
        """(N, D) unit rows of every image of the set."""
        return self.cache.image_features(self.encoder, self.ds.fingerprint, self.ds.images, self.cfg.batch_size)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return encode_batched(self.encoder.texts, list(texts), self.cfg.batch_size)

    @cached_property
    def class_weights(self) -> np.ndarray:
        """(C, D) prompt-ensembled class embeddings of a classification set."""
        return metrics.class_embeddings(self.encode_texts, self.ds.classnames, self.ds.templates)

    @cached_property
    def fit_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, validation) row indices: the set's own validation split, else a seeded quarter of 'train'
        held out per class, at least one row of a class with two or more (one always stays in 'train')."""
        train = np.asarray(self.ds.splits["train"])
        if (validation := self.ds.splits.get("validation")) is not None and len(validation):
            return train, np.asarray(validation)
        rng = np.random.default_rng([self.cfg.seed, 1])
        held = []
        for c in np.unique(self.ds.labels[train]):
            rows = rng.permutation(train[self.ds.labels[train] == c])
            held.append(rows[:max(1, len(rows) // 4) if len(rows) > 1 else 0])
        held_rows = np.sort(np.concatenate(held))
        return np.setdiff1d(train, held_rows), held_rows


def zeroshot_classification(s: Scoring) -> dict:
    rows = s.ds.zeroshot_rows()
    logits = s.images[rows] @ s.class_weights.T  # (N, C)
    return {**metrics.classification_scores(logits, s.ds.labels[rows]),
            "num_classes": len(s.ds.classnames), "num_images": len(rows)}


def linear_probe(s: Scoring) -> dict:
    (train, validation), test = s.fit_rows, s.ds.splits["test"]
    logits, wd = metrics.linear_probe_logits(
        s.images[train], s.ds.labels[train], s.images[test], len(s.ds.classnames), seed=s.cfg.seed,
        weight_decays=s.cfg.probe.weight_decays, validation=(s.images[validation], s.ds.labels[validation]),
        max_iter=s.cfg.probe.max_iter)
    scores = metrics.classification_scores(logits, s.ds.labels[test])
    return {**{f"lp_{name}": value for name, value in scores.items()}, "lp_weight_decay": wd,
            "num_train": len(train), "num_validation": len(validation), "num_test": len(test)}


def knn(s: Scoring) -> dict:
    train, test = s.ds.splits["train"], s.ds.splits["test"]
    predicted = metrics.knn_predict(s.images[train], s.ds.labels[train], s.images[test], k=s.cfg.knn_k)
    labels = s.ds.labels[test]
    return {"knn_acc1": float(np.mean(predicted == labels)),
            "knn_mean_per_class_recall": metrics.mean_per_class_recall(predicted, labels),
            "knn_k": min(s.cfg.knn_k, len(train)), "num_train": len(train), "num_test": len(test)}


def fewshot_gda(s: Scoring) -> dict:
    (train, validation), test = s.fit_rows, s.ds.splits["test"]
    if len(validation) == 0:
        raise ValueError(f"{s.ds.name}: fewshot_gda needs validation rows to choose alpha (give the set a "
                         "'validation' split or more than three training images per class)")
    views = None
    if (n_views := s.cfg.fewshot.augment_views) > 0:
        lookup = s.cache.view_features(s.encoder, s.ds.fingerprint, s.ds.images, n_views, s.cfg.seed)

        def views(rows: np.ndarray) -> np.ndarray:  # fewshot indexes the train rows; the cache, the set's rows
            return lookup(train[rows])
    out = fewshot.fewshot_gda(
        s.images[train], s.ds.labels[train], s.images[validation], s.ds.labels[validation],
        s.images[test], s.ds.labels[test], s.class_weights, shots=s.cfg.fewshot.shots,
        draws=s.cfg.fewshot.draws, seed=s.cfg.seed, train_views=views)
    return {**out, "fewshot_augment_views": n_views, "num_train": len(train), "num_validation": len(validation),
            "num_test": len(test)}


def zeroshot_retrieval(s: Scoring) -> dict:
    texts = [caption for captions in s.ds.captions for caption in captions]
    owner = np.repeat(np.arange(len(s.ds.captions)), [len(c) for c in s.ds.captions])  # (T,) image of each text
    correct = owner[None, :] == np.arange(len(s.ds.images))[:, None]  # (N images, T texts)
    recalls = metrics.recall_at_k(s.images, s.encode_texts(texts), correct, s.cfg.retrieval_ks)
    out = {}
    for k in s.cfg.retrieval_ks:
        out[f"image_retrieval_recall@{k}"] = recalls[f"t2i_r{k}"]
        out[f"text_retrieval_recall@{k}"] = recalls[f"i2t_r{k}"]
    return {**out, "num_images": len(s.ds.images), "num_texts": len(texts)}


def compositional(s: Scoring) -> dict:
    # one choice position at a time: the true and the false columns batch alike
    choices = [s.encode_texts([c[j] for c in s.ds.choices]) for j in range(len(s.ds.choices[0]))]
    answers = np.asarray(s.ds.answers, dtype=np.int64)
    out = {"acc": metrics.choice_accuracy(s.images, choices, answers)}
    kinds = np.asarray(s.ds.kinds or ("all",) * len(s.ds.images), dtype=object)
    if len(set(kinds.tolist())) > 1:
        for kind in sorted(set(kinds.tolist())):
            rows = kinds == kind
            out[f"acc_{kind}"] = metrics.choice_accuracy(s.images[rows], [c[rows] for c in choices], answers[rows])
    return {**out, "num_images": len(s.ds.images), "num_choices": len(choices), "chance": 1.0 / len(choices)}


TASK_FUNCTIONS: dict[str, Callable[[Scoring], dict]] = {
    "zeroshot_classification": zeroshot_classification, "zeroshot_retrieval": zeroshot_retrieval,
    "linear_probe": linear_probe, "knn": knn, "compositional": compositional, "fewshot_gda": fewshot_gda,
}
"""Task name -> the function that scores it on a dataset being scored."""


def evaluate_dataset(encoder: Encoder, ds: EvalDataset, tasks: Sequence[str], cfg: EvalConfig,
                     cache: FeatureCache | None = None) -> list[dict]:
    """One result per task, {"dataset", "task", "metrics"}, every task sharing the set's image features."""
    scoring = Scoring(encoder, ds, cfg, cache or FeatureCache(None))
    results = []
    for task in tasks:
        out = TASK_FUNCTIONS[task](scoring)
        if ds.rejected:
            out["num_rejected"] = len(ds.rejected)
        results.append({"dataset": ds.name, "task": task, "metrics": out})
    return results


def run_suite(encoder: Encoder, datasets: Sequence[tuple[EvalDataset, tuple[str, ...]]], cfg: EvalConfig,
              cache: FeatureCache | None = None) -> list[dict]:
    """Every (dataset, tasks) pair scored, in order. Two datasets of one name would write one result file."""
    names = [ds.name for ds, _ in datasets]
    if duplicated := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"two eval datasets are named {duplicated[0]!r}: give one a name of its own")
    cache = cache or FeatureCache(None)
    return [result for ds, tasks in datasets for result in evaluate_dataset(encoder, ds, tasks, cfg, cache)]


def headline(result: dict) -> dict[str, float | None]:
    """The metrics a summary shows of one result: accuracy and recall figures, no counts or spreads."""
    m, task = result["metrics"], result["task"]
    if task == "fewshot_gda":
        keys = [k for k in m if k.startswith("fewshot_gda_") and k.endswith("_acc1_mean") and "val" not in k]
        keys.append("fewshot_zeroshot_acc1")
    elif task == "zeroshot_retrieval":
        keys = [k for k in m if "recall@" in k]
    else:
        keys = [k for k in m if k.startswith(("acc", "lp_acc", "knn_acc")) or "mean_per_class_recall" in k]
    return {k: m[k] for k in keys}
