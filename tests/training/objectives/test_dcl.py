"""DCL against the paper's formula written out as loops, and its objective module."""


import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from tests.training.objectives.helpers import dot, features, lse, random_unit
from training.distributed import DistContext
from training.objectives.dcl import DCLObjective, dcl_loss


def dcl_by_rows(img, txt, t: float) -> float:
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        for a, b in ((img, txt), (txt, img)):
            positive = t * dot(a[i], b[i])
            total += -positive + lse([t * dot(a[i], b[j]) for j in range(n) if j != i])
    return total / (2 * n)


def test_dcl_matches_paper_formula():
    img, txt = random_unit(7, 4, seed=6), random_unit(7, 4, seed=7)
    got = dcl_loss(img, txt, torch.tensor(20.0, dtype=torch.float64))
    assert_close(got, torch.tensor(dcl_by_rows(img, txt, 20.0), dtype=torch.float64))


def test_dcl_differs_from_infonce_by_the_positive_term():
    img, txt = random_unit(5, 4, seed=8), random_unit(5, 4, seed=9)
    t = torch.tensor(3.0, dtype=torch.float64)
    logits = t * img @ txt.T
    labels = torch.arange(5)
    infonce = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    # InfoNCE's denominator includes the positive, so it is strictly larger than DCL's.
    assert dcl_loss(img, txt, t) < infonce


def test_dcl_objective_leaves_the_positive_out():
    img, txt = features(5, 4, seed=5), features(5, 4, seed=6)
    out = {"image_features": img, "text_features": txt, "logit_scale": torch.tensor(9.0, dtype=torch.float64)}
    expected = sum(-9 * dot(a[i], b[i]) + lse([9 * dot(a[i], b[j]) for j in range(5) if j != i])
                   for i in range(5) for a, b in ((img, txt), (txt, img))) / 10
    assert DCLObjective()(out, {}, DistContext()).item() == pytest.approx(expected, rel=1e-9)
