"""Model-agnostic evaluation metrics over L2-normalised embeddings.

Zero-shot classification with prompt ensembling (Radford et al., "Learning Transferable Visual
Models From Natural Language Supervision", 2021, Sec. 3.1.4), image-text retrieval recall@k
(as CLIP_benchmark reports it), ARO-style two-way compositional accuracy (Yuksekgonul et al.,
"When and Why Vision-Language Models Behave Like Bags-of-Words", ICLR 2023), a weighted
cosine kNN classifier (Wu et al. 2018; Caron et al., DINO, 2021) and a logistic-regression
linear probe (CLIP's protocol, with its weight-decay sweep on a held-out split).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from eval.datasets import fill_template


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_embeddings(
    encode_text: Callable[[list[str]], np.ndarray], classnames: Sequence[str], templates: Sequence[str]
) -> np.ndarray:
    """CLIP prompt ensembling: per class, the renormalised mean of its normalised template embeddings.

    Returns (C, D) float32 with unit rows.
    """
    if not templates:
        raise ValueError("prompt ensembling needs at least one template")
    rows = []
    for name in classnames:
        prompts = [fill_template(template, name) for template in templates]
        rows.append(normalize(encode_text(prompts)).mean(axis=0))  # (D,)
    return normalize(np.stack(rows))  # (C, D)


def zeroshot_top1(image_emb: np.ndarray, labels: np.ndarray, class_text_emb: np.ndarray) -> float:
    """Fraction of images whose most similar class text embedding is their label."""
    logits = normalize(image_emb) @ normalize(class_text_emb).T  # (N, C)
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest logits (ties rank the lower class index first, as
    argmax does)."""
    order = np.argsort(-np.asarray(logits), axis=1, kind="stable")[:, :k]  # (N, k)
    return float(np.mean(np.any(order == np.asarray(labels)[:, None], axis=1)))


def mean_per_class_recall(predicted: np.ndarray, labels: np.ndarray) -> float:
    """The mean over the classes present in `labels` of the share of their rows predicted right (sklearn's
    balanced_accuracy_score, which CLIP_benchmark reports as mean_per_class_recall)."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)]))


def classification_scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """CLIP_benchmark's classification metrics of (N, C) logits: acc1, acc5 (None below five classes, where
    CLIP_benchmark writes NaN: JSON has no NaN) and mean_per_class_recall."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("no rows to score")
    return {"acc1": topk_accuracy(logits, labels, 1),
            "acc5": topk_accuracy(logits, labels, 5) if logits.shape[1] >= 5 else None,
            "mean_per_class_recall": mean_per_class_recall(np.argmax(logits, axis=1), labels)}


def _ranks(sims: np.ndarray, correct: np.ndarray) -> np.ndarray:
    # Pessimistic rank of each row's best correct candidate: every wrong candidate scoring at least
    # as high counts as ahead, so a constant (collapsed) encoder gets chance-level recall, not 1.0.
    best = np.where(correct, sims, -np.inf).max(axis=1, keepdims=True)  # (N, 1)
    return np.sum((sims >= best) & ~correct, axis=1)  # (N,), 0 = a correct match retrieved first


def recall_at_k(image_emb: np.ndarray, text_emb: np.ndarray, correct: np.ndarray,
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways over an (N images, T texts) `correct` matrix: {"i2t_r1", "t2i_r1", "i2t_r5", ...}.

    An image is a hit at k when any of its correct texts ranks in its top k, and a text when any of its images does.
    """
    correct = np.asarray(correct, dtype=bool)
    if correct.shape != (len(image_emb), len(text_emb)):
        raise ValueError(f"correct must be (images, texts) = ({len(image_emb)}, {len(text_emb)}), got {correct.shape}")
    sims = normalize(image_emb) @ normalize(text_emb).T  # (N, T), row i = image i
    i2t, t2i = _ranks(sims, correct), _ranks(sims.T, correct.T)
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = float(np.mean(i2t < k))
        out[f"t2i_r{k}"] = float(np.mean(t2i < k))
    return out


def choice_accuracy(image_emb: np.ndarray, choice_embs: Sequence[np.ndarray], answers: np.ndarray) -> float:
    """Fraction of images more similar to their true caption (choice `answers[i]`) than to every other choice.

    choice_embs[j] is (N, D), the j-th choice of every image. Ties count as failures, as in ARO's two-way case.
    """
    image_emb = normalize(image_emb)
    scores = np.stack([np.sum(image_emb * normalize(e), axis=1) for e in choice_embs])  # (K, N)
    rows = np.arange(scores.shape[1])
    right = scores[answers, rows]  # (N,)
    others = np.where(np.arange(len(scores))[:, None] == answers[None, :], -np.inf, scores).max(axis=0)  # (N,)
    return float(np.mean(right > others))


def knn_predict(
    train_emb: np.ndarray,
    train_labels: np.ndarray,
    test_emb: np.ndarray,
    k: int = 10,
    temperature: float = 0.07,
    batch_size: int = 1024,
) -> np.ndarray:
    """Cosine kNN labels of the test rows: the k nearest training rows vote with weight exp(sim / temperature)
    (DINO); a tied vote goes to the smallest label."""
    classes, train_idx = np.unique(np.asarray(train_labels), return_inverse=True)
    k = min(k, len(train_emb))
    train_emb, test_emb = normalize(train_emb), normalize(test_emb)
    predicted = np.empty(len(test_emb), dtype=classes.dtype)
    for start in range(0, len(test_emb), batch_size):
        sims = test_emb[start:start + batch_size] @ train_emb.T  # (B, Ntrain)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (B, k), unordered
        weights = np.exp(np.take_along_axis(sims, top, axis=1) / temperature)  # (B, k)
        votes = np.zeros((len(sims), len(classes)))
        np.add.at(votes, (np.arange(len(sims))[:, None], train_idx[top]), weights)
        predicted[start:start + len(sims)] = classes[np.argmax(votes, axis=1)]
    return predicted


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    # The probe's matrices are tiny: on a busy 2-core machine, intra-op threads made one L-BFGS fit
    # 20-40x slower (4.7 s vs 0.12 s for 60x16, measured), so fit single-threaded and restore after.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


Linear = tuple[torch.Tensor, torch.Tensor]  # (weight (C, D), bias (C,))


def _fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int) -> Linear:
    # Full-batch L-BFGS on a convex loss from a zero start: no seed needed, no global RNG touched.
    weight = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = x @ weight.T + bias  # (N, C)
        loss = torch.nn.functional.cross_entropy(logits, y) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def _probe_accuracy(model: Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    weight, bias = model
    return float(((x @ weight.T + bias).argmax(dim=1) == y).double().mean())


def linear_probe_logits(
    train_emb: np.ndarray,
    train_labels: np.ndarray,
    test_emb: np.ndarray,
    num_classes: int,
    seed: int,
    weight_decays: Sequence[float] = (1e-4, 1e-3, 1e-2),
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    max_iter: int = 100,
) -> tuple[np.ndarray, float]:
    """Logistic-regression probe on normalised features: (test logits (N, num_classes), the chosen penalty).

    The penalty is picked by top-1 on `validation` (embeddings, labels) or, without one, on a seeded held-out
    quarter of the training rows, never on the test rows; the probe then refits on every training (and
    validation) row with it. Labels are class indices in [0, num_classes).
    """
    if validation is None:
        order = np.random.default_rng(seed).permutation(len(train_emb))
        held = order[:max(1, len(train_emb) // 4)] if len(train_emb) > 1 else order[:0]
        fit = np.setdiff1d(np.arange(len(train_emb)), held)
        validation = (np.asarray(train_emb)[held], np.asarray(train_labels)[held])
        fit_emb, fit_labels = np.asarray(train_emb)[fit], np.asarray(train_labels)[fit]
    else:
        fit_emb, fit_labels = train_emb, train_labels
    with _one_torch_thread():
        x, y = _tensors(fit_emb, fit_labels)
        val_x, val_y = _tensors(*validation)
        if len(weight_decays) == 1 or len(val_y) == 0:
            wd = weight_decays[0]
        else:
            scores = [_probe_accuracy(_fit_logreg(x, y, num_classes, wd, max_iter), val_x, val_y)
                      for wd in weight_decays]
            wd = weight_decays[int(np.argmax(scores))]  # ties go to the first (smallest) penalty listed
        weight, bias = _fit_logreg(torch.cat([x, val_x]), torch.cat([y, val_y]), num_classes, wd, max_iter)
        logits = _tensors(test_emb, np.zeros(len(test_emb), dtype=np.int64))[0] @ weight.T + bias
    return logits.numpy(), wd


def _tensors(emb: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(normalize(emb).astype(np.float64)),
            torch.from_numpy(np.asarray(labels).astype(np.int64)))
