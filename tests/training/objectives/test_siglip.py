"""SigLIP against the paper's formula written out as loops over pairs, and its objective module."""


import math
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from tests.training.objectives.helpers import dot, features, log_sigmoid, random_unit
from training.distributed import DistContext
from training.objectives.siglip import SigLIPObjective, siglip_loss


def siglip_by_pairs(img, txt, t: float, b: float) -> float:
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += log_sigmoid(z * (t * dot(img[i], txt[j]) + b))
    return -total / n


def test_siglip_matches_paper_formula():
    img, txt = random_unit(6, 5, seed=0), random_unit(6, 5, seed=1)
    got = siglip_loss(img, txt, torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64))
    assert_close(got, torch.tensor(siglip_by_pairs(img, txt, 10.0, -10.0), dtype=torch.float64))


def test_siglip_gradients_reach_features_scale_and_bias():
    img, txt = random_unit(4, 3, seed=2).requires_grad_(), random_unit(4, 3, seed=3).requires_grad_()
    scale, bias = torch.tensor(5.0, requires_grad=True), torch.tensor(-2.0, requires_grad=True)
    siglip_loss(img.float(), txt.float(), scale, bias).backward()
    for tensor in (img, txt, scale, bias):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_siglip_rewards_aligned_pairs():
    txt = random_unit(5, 8, seed=4)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-5.0, dtype=torch.float64)
    assert siglip_loss(txt, txt, scale, bias) < siglip_loss(random_unit(5, 8, seed=5), txt, scale, bias)


def test_siglip_objective_learns_its_own_temperature_and_bias_on_a_clip_model():
    img, txt = features(5, 4, seed=1), features(5, 4, seed=2)
    objective = SigLIPObjective().double()
    objective.attach(SimpleNamespace(logit_bias=None))
    assert objective.logit_scale.item() == pytest.approx(math.log(10)) and objective.logit_bias.item() == -10
    got = objective({"image_features": img, "text_features": txt}, {}, DistContext())
    t = math.exp(objective.logit_scale.item())  # 10, up to the fp32 rounding of log 10
    expected = -sum(math.log(1 / (1 + math.exp(-(1 if i == j else -1) * (t * dot(img[i], txt[j]) - 10))))
                    for i in range(5) for j in range(5)) / 5
    assert got.item() == pytest.approx(expected, rel=1e-9)
    got.backward()
    assert objective.logit_scale.grad is not None and objective.logit_bias.grad is not None


def test_siglip_objective_uses_a_siglip_models_scale_and_bias():
    objective = SigLIPObjective()
    objective.attach(SimpleNamespace(logit_bias=torch.nn.Parameter(torch.tensor([-3.0]))))
    assert list(objective.parameters()) == [] and "logit_bias" in objective.reads
    img, txt = features(4, 3, seed=3).float(), features(4, 3, seed=4).float()
    out = {"image_features": img, "text_features": txt, "logit_scale": torch.tensor(7.0),
           "logit_bias": torch.tensor(-3.0)}
    assert objective(out, {}, DistContext()).item() == pytest.approx(siglip_loss(img, txt, 7.0, -3.0).item())
