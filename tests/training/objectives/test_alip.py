"""ALIP against deepglint/ALIP's train.py and src/open_alip/loss.py (references/alip_reference.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from tests.training.objectives.helpers import dot, features, lse, normalise, random_unit
from tests.training.references import alip_reference
from training.distributed import DistContext
from training.objectives.alip import ALIPConfig, ALIPObjective, alip_gates, weighted_clip_loss


def test_alip_gates_equal_the_authors_gates():
    """alip_gates against deepglint/ALIP train.py `main()` as transcribed in references/alip_reference.py:
    means updated first; pair weights only where the language gate is below 1, else 1 (both paths)."""
    g = torch.Generator().manual_seed(0)
    img, raw, cap = (F.normalize(torch.randn(16, 8, generator=g), dim=-1) for _ in range(3))
    cap = F.normalize(cap + raw * torch.linspace(0, 3, 16)[:, None], dim=-1)  # some captions agree, some don't
    means = {"text_caption": 0.3, "image_raw": 0.1, "image_caption": -0.2}
    want_sample, want_raw, want_cap, want_means, diag = alip_reference.alip_reference_gates(img, raw, cap, means)
    mu = torch.tensor([means["image_raw"], means["image_caption"], means["text_caption"]])
    sample_w, raw_w, cap_w, new_mu = alip_gates((img * raw).sum(1), (img * cap).sum(1), (raw * cap).sum(1), mu)
    torch.testing.assert_close(sample_w, want_sample)
    torch.testing.assert_close(raw_w, want_raw)
    torch.testing.assert_close(cap_w, want_cap)
    torch.testing.assert_close(new_mu, torch.stack([want_means["image_raw"], want_means["image_caption"],
                                                    want_means["text_caption"]]).float())
    below = diag["weight_sample_unclamped"] < 1
    assert below.any() and (~below).any()
    assert (raw_w[~below] == 1).all() and (raw_w[below] != 1).all() and (raw_w > 1).any()  # unclamped where gated


def test_alip_gates_carry_no_gradient():
    s = torch.tensor([0.3, 0.6], requires_grad=True)
    weights = alip_gates(s * 1, s * 2, s * 0.5, torch.full((3,), 0.4))[:3]
    assert all(not w.requires_grad for w in weights)


def test_weighted_clip_loss_matches_weighted_rows_and_backpropagates():
    img, txt = random_unit(4, 5, seed=16), random_unit(4, 5, seed=17)
    sample_w, pair_w = torch.tensor([1.0, 0.5, 0.2, 0.0]), torch.tensor([1.3, 0.7, 1.0, 2.0])
    t = 6.0
    expected = 0.0
    for i in range(4):
        row = -t * dot(img[i], txt[i]) + lse([t * dot(img[i], y) for y in txt])
        col = -t * dot(txt[i], img[i]) + lse([t * dot(txt[i], x) for x in img])
        expected += float(sample_w[i] * pair_w[i]) * (row + col) / 2
    img_g = img.clone().requires_grad_()
    got = weighted_clip_loss(img_g, txt, torch.tensor(t, dtype=torch.float64), sample_w, pair_w)
    assert_close(got, torch.tensor(expected / 4, dtype=torch.float64))
    got.backward()
    assert img_g.grad.abs().sum() > 0


def test_alip_objective_matches_the_authors_step_over_several_steps():
    """ALIPObjective against tests/training/references/alip_reference.py, a transcription of deepglint/ALIP's
    train.py `main()` (gates and running means) and src/open_alip/loss.py `Adaptive_loss.forward`: several
    steps, so the means drift and both sides of `torch.where(weight_sample < 1, weight_pair, 1)` occur."""
    objective = ALIPObjective(ALIPConfig(init_mean=0.2)).double()
    means = {key: 0.2 for key in alip_reference.alip_initial_means()}  # the authors start at 1; lower, so the
    # text/caption similarities fall on both sides of the means within a few steps
    g = torch.Generator().manual_seed(3)
    gated_and_not = set()
    for step in range(5):
        img, txt = normalise(torch.randn(8, 6, generator=g, dtype=torch.float64)), \
            normalise(torch.randn(8, 6, generator=g, dtype=torch.float64))
        cap = normalise(torch.randn(8, 6, generator=g, dtype=torch.float64) + (step % 3) * txt)
        out = {"image_features": img, "text_features": txt, "synthetic_features": cap,
               "logit_scale": torch.tensor(7.0, dtype=torch.float64)}
        expected, means, diag = alip_reference.alip_reference_step(img, txt, cap, 7.0, means)
        got = objective(out, {}, DistContext())
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)  # our gates run in fp32, as under autocast
        assert float(objective.metrics["alip_loss_raw"]) == pytest.approx(diag["loss_laion"].item(), rel=1e-6)
        assert float(objective.metrics["alip_loss_caption"]) == pytest.approx(diag["loss_caption"].item(), rel=1e-6)
        gated_and_not |= set((diag["weight_sample_unclamped"] < 1).tolist())
        objective.end_step()
        assert objective.mu.tolist() == pytest.approx(
            [float(means["image_raw"]), float(means["image_caption"]), float(means["text_caption"])], rel=1e-6)
    assert gated_and_not == {True, False}


def test_alip_objective_commits_means_once_per_step():
    img, txt, cap = features(6, 5, seed=10), features(6, 5, seed=11), features(6, 5, seed=12)
    objective = ALIPObjective(ALIPConfig(momentum=0.9, init_mean=0.5)).double()
    out = {"image_features": img, "text_features": txt, "synthetic_features": cap,
           "logit_scale": torch.tensor(5.0, dtype=torch.float64)}
    first = objective(out, {}, DistContext()).item()
    assert objective(out, {}, DistContext()).item() == first  # same step (accumulation): same gates
    assert objective.mu.tolist() == [0.5] * 3
    pending = float(objective.metrics["alip_mu_raw"])
    objective.end_step()
    assert objective.mu[0].item() == pytest.approx(pending) and pending != 0.5
    assert "mu" in objective.state_dict()
