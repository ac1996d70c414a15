"""The eval stage's dataset protocol: what the suite scores, whoever provides it.

Three kinds of set, one per task family (CLIP_benchmark's split of the work):

- ``ClassificationSet``: images, integer labels indexing class names, the zero-shot prompt templates, and
  row splits (``train``/``test``, optionally ``validation``) for the kNN classifier, the linear probe and
  few-shot methods; zero-shot fits nothing, so it scores every row;
- ``RetrievalSet``: images with one or more captions each (any caption of an image, or an identical
  caption of another image, is a hit);
- ``CompositionalSet``: images with caption choices and the index of the true one (ARO-style; `kinds`
  names each row's perturbation for per-kind accuracy).

A provider turns some source into these objects: the synthetic world (:mod:`eval.synthetic_world`), image
folders, CSV/TSV files and WebDataset shards (:mod:`eval.loaders`). :mod:`eval.suite` reads nothing else, so
it never knows where a set came from.

Every set carries a ``fingerprint`` (what its rows are: file names, sizes and times, or the seeds that drew
them), which keys the feature cache, and ``rejected`` (source, reason) pairs for the rows its provider could
not use, so a report's counts reconcile with the files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ClassificationSet:
    """Images with one label each, scored by zero-shot, kNN and linear probe."""

    images: Sequence[bytes]
    """encoded images (PNG/JPEG bytes), one per row."""
    labels: np.ndarray
    """(N,) int: each row's class, an index into `classnames`."""
    classnames: tuple[str, ...]
    """class names as prompts spell them."""
    templates: tuple[str, ...]
    """zero-shot prompt templates with '{c}' (or one '{}') for the class name, ensembled per class (CLIP Sec.
    3.1.4)."""
    splits: Mapping[str, np.ndarray]
    """row indices: 'train' fits kNN, the probe and few-shot methods, 'test' scores them; an optional
    'validation' picks the probe's penalty and GDA's alpha (without it they hold out a seeded quarter of
    'train')."""
    name: str = "classification"
    """how manifests and reports name the set."""
    zeroshot_split: str | None = None
    """the split zero-shot scores: None scores every row (a folder with no split of its own, as CLIP_benchmark
    scores the whole folder); 'test' when the dataset came with its own train/test split."""
    fingerprint: str = ""
    """what the rows are, for the feature cache; empty: never cached."""
    rejected: tuple[tuple[str, str], ...] = ()
    """(source, reason) of each row the provider could not use."""

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if len(labels) != len(self.images):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classnames)):
            raise ValueError(f"{self.name}: labels must index the {len(self.classnames)} classnames")
        if missing := {"train", "test"} - set(self.splits):
            raise ValueError(f"{self.name}: splits need {sorted(missing)}")
        if len(self.splits["test"]) == 0:
            raise ValueError(f"{self.name}: the test split is empty (no rows to score kNN / linear probe)")
        if self.zeroshot_split is not None and self.zeroshot_split not in self.splits:
            raise ValueError(f"{self.name}: zeroshot_split {self.zeroshot_split!r} is not one of its splits")

    def zeroshot_rows(self) -> np.ndarray:
        """Row indices zero-shot classification scores."""
        if self.zeroshot_split is None:
            return np.arange(len(self.images))
        return np.asarray(self.splits[self.zeroshot_split])


@dataclass(frozen=True)
class RetrievalSet:
    """Images with one or more captions each, scored by recall@k both ways."""

    images: Sequence[bytes]
    """encoded images, one per row."""
    captions: tuple[tuple[str, ...], ...]
    """each image's captions (at least one)."""
    name: str = "retrieval"
    """how manifests and reports name the set."""
    fingerprint: str = ""
    """what the rows are, for the feature cache; empty: never cached."""
    rejected: tuple[tuple[str, str], ...] = ()
    """(source, reason) of each row the provider could not use."""

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.images) or any(len(c) == 0 for c in self.captions):
            raise ValueError(f"{self.name}: every image needs at least one caption")


@dataclass(frozen=True)
class CompositionalSet:
    """Images with K caption choices each, one of them true: scored by how often the true one wins."""

    images: Sequence[bytes]
    """encoded images, one per row."""
    choices: tuple[tuple[str, ...], ...]
    """each image's candidate captions, the same number K >= 2 for every row."""
    answers: np.ndarray
    """(N,) int: the index of the true caption among each row's choices."""
    kinds: tuple[str, ...] = field(default=())
    """each row's subset ('vg_attribution', 'vg_relation', 'order'), for per-subset accuracy; empty: one."""
    name: str = "compositional"
    """how manifests and reports name the set."""
    fingerprint: str = ""
    """what the rows are, for the feature cache; empty: never cached."""
    rejected: tuple[tuple[str, str], ...] = ()
    """(source, reason) of each row the provider could not use."""

    def __post_init__(self) -> None:
        widths = {len(c) for c in self.choices}
        if len(self.choices) != len(self.images) or len(widths) > 1 or min(widths, default=2) < 2:
            raise ValueError(f"{self.name}: every image needs the same number (>= 2) of caption choices")
        if len(self.kinds) not in (0, len(self.images)):
            raise ValueError(f"{self.name}: kinds must be empty or one per image")
        answers = np.asarray(self.answers)
        if len(answers) != len(self.images) or (len(answers) and not 0 <= answers.min() <= answers.max() < min(widths)):
            raise ValueError(f"{self.name}: answers must give, per image, the index of its true caption among its "
                             f"{min(widths)} choices")


EvalDataset = ClassificationSet | RetrievalSet | CompositionalSet


def fill_template(template: str, classname: str) -> str:
    """A prompt: CLIP_benchmark's '{c}' placeholder, or open_clip's / CLIP's positional '{}'."""
    return template.replace("{c}", classname) if "{c}" in template else template.format(classname)


def stratified_splits(labels: np.ndarray, train_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Per class, a seeded shuffle puts round(fraction * n) rows (at least one) in 'train', the rest in 'test'."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_train = min(len(rows), max(1, round(train_fraction * len(rows))))
        train.append(rows[:n_train])
        test.append(rows[n_train:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}
