"""Independent reference transcription of the training-free GDA baseline's computation, for tests only.

Source (read directly from the authors' code):
    repository  mrflogs/ICLR24 ("A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation", ICLR 2024)
    commit      c83409b5e3c29d2f49dc44fb8b361add2b49fbba ("first commit", the only commit touching these files;
                HEAD 560fe21 when read only changed the README)
    files       main_few_shots.py  run(), lines 38-83:
                    * line 49   each image feature divided by its L2 norm (10 augmented views per image);
                    * line 56   ``mus``: per-class mean of the normalised features;
                    * line 59   ``center_vecs``: each class's features minus its mean, concatenated;
                    * line 60   ``cov_inv = D * pinv((N - 1) * center_vecs.T.cov() + center_vecs.T.cov().trace() * I)``;
                    * line 62   uniform prior ``ps = 1 / C``;
                    * line 63   ``W = einsum('nd, dc -> cn', mus, cov_inv)``, a (D, C) matrix;
                    * line 64   ``b = ps.log() - einsum('nd, dc, nc -> n', mus, cov_inv, mus) / 2``;
                    * lines 68-76  alpha over [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0] on the validation
                      features, ``val_logits = 100. * val @ clip_weights + alpha * (val @ W + b)``, strict ``>``
                      against ``best_val_acc = 0`` and ``best_alpha = 0.1``;
                    * lines 79-81  the same logits on the test features at the best alpha, scored by cls_acc.
                utils.py  cls_acc, lines 10-15 (top-1 through ``topk``, as a percentage).

Written line for line as their code reads, in torch, with three changes that do not alter the arithmetic:
``.cuda()`` dropped, ``[0]`` before cls_acc's ``float()`` (today's NumPy needs it), and their ``.float()`` casts
made a ``dtype`` argument (float32 is theirs; the tests pass
float64 so a parity check can be tight). Their data loading and augmentation are not transcribed: the tests
hand in feature tensors. Nothing here imports curaclip.
"""

from __future__ import annotations

import torch

ALPHA_GRID = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
"""main_few_shots.py line 70, verbatim."""


def cls_acc(output: torch.Tensor, target: torch.Tensor, topk: int = 1) -> float:
    """utils.py lines 10-15: percentage of rows whose top-`topk` logits hold the target."""
    pred = output.topk(topk, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    # theirs ends ``.cpu().numpy())``: float() of a 1-element 1-D array, deprecated in NumPy 1.25, fails in 2.4
    acc = float(correct[:topk].reshape(-1).float().sum(0, keepdim=True).cpu().numpy()[0])
    acc = 100 * acc / target.shape[0]
    return acc


def normalise(image_features: torch.Tensor) -> torch.Tensor:
    """main_few_shots.py line 49 (and utils.py pre_load_features line 45, norm=True)."""
    return image_features / image_features.norm(dim=-1, keepdim=True)


def estimate(vecs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """main_few_shots.py lines 55-64: (W (D, C), b (C,)) from normalised features `vecs` (N, D).

    ``clip_weights.shape[1]`` in their code is the number of classes, here `num_classes`.
    """
    # normal distribution (line 56)
    mus = torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(num_classes)])

    # KS Estimator. (lines 59-60)
    center_vecs = torch.cat([vecs[labels == i] - mus[i].unsqueeze(0) for i in range(num_classes)])
    cov_inv = center_vecs.shape[1] * torch.linalg.pinv(
        (center_vecs.shape[0] - 1) * center_vecs.T.cov()
        + center_vecs.T.cov().trace() * torch.eye(center_vecs.shape[1], dtype=vecs.dtype))

    # lines 62-64
    ps = torch.ones(num_classes, dtype=vecs.dtype) * 1. / num_classes
    W = torch.einsum('nd, dc -> cn', mus, cov_inv)
    b = ps.log() - torch.einsum('nd, dc, nc -> n', mus, cov_inv, mus) / 2
    return W, b


def logits(features: torch.Tensor, clip_weights: torch.Tensor, W: torch.Tensor, b: torch.Tensor, alpha: float,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """main_few_shots.py line 71 / line 80; clip_weights is their (D, C) layout."""
    return 100. * features.to(dtype) @ clip_weights.to(dtype) + alpha * (features.to(dtype) @ W + b)


def search_and_test(val_features: torch.Tensor, val_labels: torch.Tensor, test_features: torch.Tensor,
                    test_labels: torch.Tensor, clip_weights: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
                    dtype: torch.dtype = torch.float32) -> tuple[float, float, float]:
    """main_few_shots.py lines 66-81: (best_alpha, best_val_acc, notune_acc), accuracies in percent."""
    # Grid search for hyper-parameter alpha (lines 68-76)
    best_val_acc = 0
    best_alpha = 0.1
    for alpha in ALPHA_GRID:
        val_logits = logits(val_features, clip_weights, W, b, alpha, dtype)

        acc = cls_acc(val_logits, val_labels)
        if acc > best_val_acc:
            best_val_acc = acc
            best_alpha = alpha

    # lines 79-81
    alpha = best_alpha
    test_logits = logits(test_features, clip_weights, W, b, alpha, dtype)
    notune_acc = cls_acc(test_logits, test_labels)
    return best_alpha, best_val_acc, notune_acc
