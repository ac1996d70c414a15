"""Training-free few-shot adaptation of CLIP by Gaussian discriminant analysis (GDA).

Wang, Liang, Sheng, He, Wang and Tan, "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation",
ICLR 2024. Written from the authors' code, mrflogs/ICLR24 (commit c83409b, the only commit touching these
files) ``main_few_shots.py`` ``run()`` lines 38-83 and ``main()`` lines 104-142, ``utils.py`` ``cls_acc``
(lines 10-15), ``clip_classifier`` (18-35) and ``pre_load_features`` (37-), and ``datasets/*.py`` for the splits.

What they compute, and what this module computes the same way (paper notation: mu_c, Sigma, P = Sigma^-1):

* Features: every image embedding L2-normalised (``run`` line 49; val/test by ``pre_load_features``);
  class text embeddings prompt-ensembled (normalise each prompt, mean, renormalise: ``clip_classifier``,
  i.e. :func:`eval.metrics.class_embeddings`). Class means are not renormalised.
* ``mu_c`` = mean of class c's normalised rows (line 56). The pooled centred rows ``X`` (N, D) are each row
  minus its class mean (line 59).
* Their "KS estimator" (line 60), with ``S = torch.cov(X.T)`` (the unbiased covariance, N - 1 divisor):
  ``P = D * pinv((N - 1) * S + trace(S) * I)`` = ``D * pinv(X^T X + trace(X^T X) / (N - 1) * I)``.
* Uniform prior ``p_c = 1 / C``; linear classifier ``w_c = P mu_c``, ``b_c = log p_c - mu_c^T P mu_c / 2``
  (lines 62-64).
* Ensemble logits ``100 * x @ T^T + alpha * (x @ W^T + b)``: CLIP's logit scale 100 on the cosine logits,
  alpha on the GDA logits only (lines 71, 80).
* alpha from the grid (1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100) by top-1 on the validation rows, the first alpha
  with the strictly highest accuracy winning; 0.1 when none scores above 0 (lines 68-76).
* Shots (1, 2, 4, 8, 16), seeds (1, 2, 3), the mean over seeds reported (``main`` lines 104-109, 147-152).

Where we differ, on purpose:

* **Augmented views, when the caller has images.** They encode the k-shot images 10 times (``augment_epoch:
  10`` in every configs/few_shots/*.yaml) under random crops and flips and fit on all 10k views (only the
  views: no un-augmented row). :func:`fewshot_gda` does the same when given ``train_views`` (the suite passes
  ``eval.fewshot.augment_views`` views per drawn row, default 10, from :mod:`eval.features`); without it,
  it fits on the k fixed embeddings once. Consequence at 1 shot without views: every centred row is
  exactly zero, so ``S = 0``, their formula gives ``pinv(0) = 0`` and ``P = 0``: W = 0, b = log(1/C), the
  GDA logits are constant and the 1-shot result is the zero-shot result. We keep that (it is their
  estimator on those inputs) rather than invent a prior covariance.
* **A disjoint validation split, always.** For ImageNet they pick alpha on the test set itself
  (``main`` line 137: ``val_features, val_labels = test_features, test_labels``); for the ten other
  datasets on the dataset's full validation split (``datasets/*.py`` subsample only ``train``). We pick
  alpha on the caller's ``val`` rows, which must be non-empty; we never look at ``test`` to choose.
* **Short classes.** CoOp's ``generate_fewshot_dataset`` (``datasets/utils.py`` lines 210-242) fills a
  class with fewer than k images by drawing k with replacement; we use every row the class has, once
  (duplicates would only reweight the same points). A class with no training row is a ValueError (their
  mean would be NaN).
* **Degenerate scatter.** When N = 1 (one class, one shot) ``torch.cov`` divides 0 by 0; and rows equal up
  to float32 rounding give a scatter of pure rounding noise, whose shrunk inverse (it scales as 1 / trace)
  explodes. In both cases we take ``P = 0``, what their ``pinv`` gives for the exact zero scatter (trace at
  most ``N * D * eps_float32**2``: below one float32 step per coordinate, finer than any unit-row input holds).
* **Precision and tie-breaking.** Float64 throughout (they ran float32 on a GPU); ties in argmax go to the
  lowest class index (``torch.topk``'s tie order is unspecified).
* **Seeding and spread.** Draw ``d`` of k shots uses ``np.random.default_rng([seed, k, draw])``; the k-shot
  sets of one seed are independent draws, as in their loop (one ``random.seed`` per seed, then every k in
  turn). We report the standard deviation over draws (ddof 0) beside the mean, which they do not print.
* Accuracies are fractions in [0, 1] (theirs are percentages), like every other curaclip metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from eval import metrics

ALPHAS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
"""Their grid for the GDA logits' weight (main_few_shots.py line 70)."""
FALLBACK_ALPHA = 0.1
"""Their ``best_alpha`` before the search (line 69): kept when no alpha scores above 0 on validation."""
CLIP_LOGIT_SCALE = 100.0
"""Scale of the zero-shot cosine logits in the ensemble (lines 71, 80): CLIP's learned temperature, capped."""
_ROUNDING_SCATTER = float(np.finfo(np.float32).eps) ** 2
"""Per row and coordinate, the largest squared spread taken as float32 rounding, not data (see docstring)."""


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """mu_c: the mean of each class's rows, (C, D). Every class needs at least one row."""
    counts = np.bincount(labels, minlength=num_classes)  # (C,)
    if np.any(counts == 0):
        raise ValueError(f"classes without a training row: {np.flatnonzero(counts == 0).tolist()}")
    sums = np.zeros((num_classes, features.shape[1]))
    np.add.at(sums, labels, features)
    return sums / counts[:, None]  # (C, D)


def ks_precision(centred: np.ndarray) -> np.ndarray:
    """Their shrunk precision: D * pinv(X^T X + trace(X^T X) / (N - 1) * I) for class-centred rows X (N, D).

    X^T X is (N - 1) * torch.cov(X.T): torch.cov re-centres by the pooled mean, which is zero here (each class's
    centred rows sum to zero). Zero when the scatter is zero or rounding (module docstring), as pinv(0) is.
    """
    n, d = centred.shape
    scatter = centred.T @ centred  # (D, D)
    trace = float(np.trace(scatter))
    if n < 2 or trace <= n * d * _ROUNDING_SCATTER:
        return np.zeros((d, d))
    # trace > 0 makes the shrunk matrix positive definite with condition number at most N, so pinv is the inverse
    return d * np.linalg.pinv(scatter + trace / (n - 1) * np.eye(d))


def gda_classifier(features: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """GDA's linear classifier (W (C, D), b (C,)) from training rows, with a shared covariance and uniform prior.

    Rows are L2-normalised first, as their image features are; labels are integers in [0, num_classes).
    """
    x = _as_unit_rows(features, "features")  # (N, D)
    return _fit_gda(x, _as_labels(labels, len(x), num_classes, "labels"), num_classes)


def _fit_gda(x: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    # gda_classifier on rows already unit and labels already checked (fewshot_gda checks each split once)
    mus = class_means(x, y, num_classes)  # (C, D)
    precision = ks_precision(x - mus[y])  # (D, D)
    weights = mus @ precision  # (C, D), row c = P mu_c (P symmetric)
    bias = np.log(1.0 / num_classes) - 0.5 * np.einsum("cd,cd->c", weights, mus)  # (C,)
    return weights, bias


def ensemble_logits(features: np.ndarray, zeroshot_weights: np.ndarray, weights: np.ndarray, bias: np.ndarray,
                    alpha: float) -> np.ndarray:
    """100 * cosine zero-shot logits + alpha * GDA logits, (N, C); features and zero-shot rows are unit rows."""
    return CLIP_LOGIT_SCALE * features @ zeroshot_weights.T + alpha * (features @ weights.T + bias)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose highest logit is their label (ties to the lowest class index)."""
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def search_alpha(val_features: np.ndarray, val_labels: np.ndarray, zeroshot_weights: np.ndarray,
                 weights: np.ndarray, bias: np.ndarray, alphas: Sequence[float] = ALPHAS) -> tuple[float, float]:
    """(alpha, its validation top-1): the first alpha of the grid with the strictly best accuracy, as their loop
    picks it; FALLBACK_ALPHA (and 0.0) when every alpha scores 0."""
    best_alpha, best_acc = FALLBACK_ALPHA, 0.0
    for alpha in alphas:
        acc = top1(ensemble_logits(val_features, zeroshot_weights, weights, bias, alpha), val_labels)
        if acc > best_acc:
            best_alpha, best_acc = alpha, acc
    return best_alpha, best_acc


def sample_shots(labels: np.ndarray, num_classes: int, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of `shots` rows per class drawn without replacement (all of a class's rows when it has fewer)."""
    picked = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        picked.append(rows if len(rows) <= shots else rng.choice(rows, size=shots, replace=False))
    return np.sort(np.concatenate(picked))


def fewshot_gda(
    train_emb: np.ndarray, train_labels: np.ndarray,
    val_emb: np.ndarray, val_labels: np.ndarray,
    test_emb: np.ndarray, test_labels: np.ndarray,
    zeroshot_weights: np.ndarray,
    *, shots: Sequence[int] = (1, 2, 4, 8, 16), draws: int = 3, seed: int = 0,
    train_views: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float | int]:
    """Few-shot GDA + zero-shot ensemble: per k in `shots` and per draw, fit on k rows per class of `train`, pick
    alpha on `val`, score top-1 on `test`. zeroshot_weights is (C, D), the prompt-ensembled class text rows.
    `train_views`, given train row indices (R,), returns their augmented views' embeddings (V, R, D): the fit
    then uses those V * k views per class, as the authors' augment_epoch loop does, instead of the rows.

    Keys (fractions in [0, 1]; mean and std, ddof 0, over the draws):
    ``fewshot_gda_{k}shot_acc1_mean``, ``fewshot_gda_{k}shot_acc1_std``, ``fewshot_gda_{k}shot_alpha_mean``
    (the chosen alpha), ``fewshot_gda_{k}shot_val_acc1_mean`` (top-1 on val at that alpha), for every k;
    ``fewshot_zeroshot_acc1`` (the text classifier alone on `test`) and ``fewshot_draws``.
    """
    if draws < 1 or not shots or min(shots) < 1:
        raise ValueError(f"need draws >= 1 and shots >= 1, got draws={draws}, shots={tuple(shots)}")
    text = _as_unit_rows(zeroshot_weights, "zeroshot_weights")  # (C, D)
    num_classes = len(text)
    splits = {}
    for name, emb, labels in (("train", train_emb, train_labels), ("val", val_emb, val_labels),
                              ("test", test_emb, test_labels)):
        x = _as_unit_rows(emb, f"{name}_emb", text.shape[1])
        splits[name] = (x, _as_labels(labels, len(x), num_classes, f"{name}_labels"))
    out: dict[str, float | int] = {
        "fewshot_zeroshot_acc1": top1(splits["test"][0] @ text.T, splits["test"][1]), "fewshot_draws": draws}
    for k in shots:
        runs = np.array([_one_draw(splits, text, k, np.random.default_rng([seed, k, d]), train_views)
                         for d in range(draws)])
        out[f"fewshot_gda_{k}shot_acc1_mean"] = float(runs[:, 0].mean())
        out[f"fewshot_gda_{k}shot_acc1_std"] = float(runs[:, 0].std())
        out[f"fewshot_gda_{k}shot_alpha_mean"] = float(runs[:, 1].mean())
        out[f"fewshot_gda_{k}shot_val_acc1_mean"] = float(runs[:, 2].mean())
    return out


def _one_draw(splits: dict[str, tuple[np.ndarray, np.ndarray]], text: np.ndarray, shots: int,
              rng: np.random.Generator, train_views: Callable[[np.ndarray], np.ndarray] | None
              ) -> tuple[float, float, float]:
    # (test top-1, alpha, val top-1) of one k-shot draw
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits["train"], splits["val"], splits["test"]
    rows = sample_shots(train_y, len(text), shots, rng)
    fit_x, fit_y = train_x[rows], train_y[rows]
    if train_views is not None:
        views = np.asarray(train_views(rows))  # (V, R, D)
        fit_x = _as_unit_rows(views.reshape(-1, views.shape[-1]), "train_views", text.shape[1])
        fit_y = np.tile(fit_y, len(views))  # view v of every row, then view v + 1: labels repeat per view
    weights, bias = _fit_gda(fit_x, fit_y, len(text))
    alpha, val_acc = search_alpha(val_x, val_y, text, weights, bias)
    return top1(ensemble_logits(test_x, text, weights, bias, alpha), test_y), alpha, val_acc


def _as_unit_rows(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    # metrics.normalize gives float32 unit rows (the suite's convention); the GDA algebra then runs in float64
    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0 or (dim is not None and x.shape[1] != dim):
        want = "(N >= 1, D)" if dim is None else f"(N >= 1, {dim})"
        raise ValueError(f"{name} must be {want}, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds NaN or inf")
    return metrics.normalize(x).astype(np.float64)


def _as_labels(labels: np.ndarray, n: int, num_classes: int, name: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be ({n},) integers, got {y.shape} {y.dtype}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    return y.astype(np.int64)
