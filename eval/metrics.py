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


def knn_top1(
    train_emb: np.ndarray,
    train_labels: np.ndarray,
    test_emb: np.ndarray,
    test_labels: np.ndarray,
    k: int = 10,
    temperature: float = 0.07,
    batch_size: int = 1024,
) -> float:
    """Cosine kNN: the k nearest training rows vote with weight exp(sim / temperature) (DINO)."""
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
    return float(np.mean(predicted == np.asarray(test_labels)))


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


def _fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float) -> Linear:
    # Full-batch L-BFGS on a convex loss from a zero start: no seed needed, no global RNG touched.
    weight = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = x @ weight.T + bias  # (N, C)
        loss = torch.nn.functional.cross_entropy(logits, y) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def _predict(model: Linear, x: torch.Tensor) -> torch.Tensor:
    weight, bias = model
    return (x @ weight.T + bias).argmax(dim=1)  # (N,)


def _probe_accuracy(model: Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((_predict(model, x) == y).double().mean())


def _select_weight_decay(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decays: Sequence[float], seed: int
) -> float:
    # CLIP sweeps the L2 penalty on a validation split of the training set; we hold out a quarter.
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, len(x) // 4)
    val, fit = torch.from_numpy(order[:n_val]), torch.from_numpy(order[n_val:])
    scores = [
        _probe_accuracy(_fit_logreg(x[fit], y[fit], num_classes, wd), x[val], y[val]) for wd in weight_decays
    ]
    return weight_decays[int(np.argmax(scores))]  # ties go to the first (smallest) penalty listed


def linear_probe_top1(
    train_emb: np.ndarray,
    train_labels: np.ndarray,
    test_emb: np.ndarray,
    test_labels: np.ndarray,
    seed: int,
    weight_decays: Sequence[float] = (1e-4, 1e-3, 1e-2),
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Logistic-regression probe: penalty picked on `validation` (embeddings, labels) or, without one, on a
    seeded held-out quarter of the training rows; then refit on all training (and validation) rows."""
    with _one_torch_thread():
        if validation is None:
            return _linear_probe(train_emb, train_labels, test_emb, test_labels, seed, weight_decays)
        return _linear_probe_validated(train_emb, train_labels, validation, test_emb, test_labels, weight_decays)


def _linear_probe(
    train_emb: np.ndarray, train_labels: np.ndarray, test_emb: np.ndarray, test_labels: np.ndarray,
    seed: int, weight_decays: Sequence[float],
) -> float:
    classes, y_idx = np.unique(np.asarray(train_labels), return_inverse=True)
    x = torch.from_numpy(normalize(train_emb).astype(np.float64))
    y = torch.from_numpy(y_idx.astype(np.int64))
    wd = weight_decays[0] if len(weight_decays) == 1 else _select_weight_decay(
        x, y, len(classes), weight_decays, seed)
    return _refit_and_score(x, y, classes, wd, test_emb, test_labels)


def _linear_probe_validated(
    train_emb: np.ndarray, train_labels: np.ndarray, validation: tuple[np.ndarray, np.ndarray],
    test_emb: np.ndarray, test_labels: np.ndarray, weight_decays: Sequence[float],
) -> float:
    val_emb, val_labels = validation
    emb = np.concatenate([train_emb, val_emb])
    classes, y_idx = np.unique(np.concatenate([np.asarray(train_labels), np.asarray(val_labels)]), return_inverse=True)
    x = torch.from_numpy(normalize(emb).astype(np.float64))
    y = torch.from_numpy(y_idx.astype(np.int64))
    fit, val = slice(0, len(train_emb)), slice(len(train_emb), len(emb))
    scores = [_probe_accuracy(_fit_logreg(x[fit], y[fit], len(classes), wd), x[val], y[val]) for wd in weight_decays]
    wd = weight_decays[int(np.argmax(scores))]  # ties go to the first (smallest) penalty listed
    return _refit_and_score(x, y, classes, wd, test_emb, test_labels)


def _refit_and_score(x: torch.Tensor, y: torch.Tensor, classes: np.ndarray, weight_decay: float,
                     test_emb: np.ndarray, test_labels: np.ndarray) -> float:
    model = _fit_logreg(x, y, len(classes), weight_decay)
    predicted = classes[_predict(model, torch.from_numpy(normalize(test_emb).astype(np.float64))).numpy()]
    return float(np.mean(predicted == np.asarray(test_labels)))
