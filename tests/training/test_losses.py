import math

import pytest
import torch
import torch.nn.functional as F

from training.config import TrainConfig
from training.losses import (
    LOSSES,
    ClipObjective,
    DistContext,
    WeightedObjectives,
    clip_loss,
    clip_loss_gathered,
    objective_weights,
)


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def random_outputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image_features": unit(torch.randn(5, 4, generator=g)),
            "text_features": unit(torch.randn(5, 4, generator=g)), "logit_scale": torch.tensor(10.0)}


def clip_loss_by_rows(img: torch.Tensor, txt: torch.Tensor, scale: float) -> float:
    """CLIP's formula written out: per row, -log softmax of the matching pair, both directions, averaged."""
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        s_it = [scale * float(img[i] @ txt[j]) for j in range(n)]
        s_ti = [scale * float(txt[i] @ img[j]) for j in range(n)]
        total += -(s_it[i] - math.log(sum(math.exp(v) for v in s_it)))
        total += -(s_ti[i] - math.log(sum(math.exp(v) for v in s_ti)))
    return total / (2 * n)


def test_clip_loss_matches_the_formula_row_by_row():
    g = torch.Generator().manual_seed(0)
    img, txt = unit(torch.randn(7, 5, generator=g, dtype=torch.float64)), unit(torch.randn(7, 5, generator=g,
                                                                                         dtype=torch.float64))
    scale = torch.tensor(12.5, dtype=torch.float64)
    assert clip_loss(img, txt, scale).item() == pytest.approx(clip_loss_by_rows(img, txt, 12.5), rel=1e-9)


def test_clip_loss_is_low_for_aligned_pairs_and_log_n_for_uniform_logits():
    img = torch.eye(4)
    assert clip_loss(img, img, torch.tensor(100.0)).item() < 1e-6
    assert clip_loss(img, img, torch.tensor(0.0)).item() == pytest.approx(math.log(4))


def test_gathered_loss_averaged_over_ranks_equals_the_global_loss():
    """Two simulated ranks scoring their rows against the global batch average to the single-process loss."""
    g = torch.Generator().manual_seed(1)
    img, txt = unit(torch.randn(8, 6, generator=g)), unit(torch.randn(8, 6, generator=g))
    scale = torch.tensor(7.0)
    halves = [clip_loss_gathered(img[r * 4:(r + 1) * 4], txt[r * 4:(r + 1) * 4], img, txt, scale, r * 4)
              for r in range(2)]
    assert (sum(halves) / 2).item() == pytest.approx(clip_loss(img, txt, scale).item(), rel=1e-6)


def test_clip_objective_single_process_is_clip_loss():
    out = random_outputs(2)
    expected = clip_loss(out["image_features"], out["text_features"], out["logit_scale"])
    assert ClipObjective()(out, {}, DistContext()).item() == pytest.approx(expected.item())


def test_weighted_objectives_sum_weight_times_term():
    cfg = TrainConfig(objectives=("clip",), objective_weights=(0.25,))
    out = random_outputs(3)
    total, terms = WeightedObjectives(cfg, 4)(out, {}, DistContext())
    assert set(terms) == {"clip"}
    assert total.item() == pytest.approx(0.25 * terms["clip"].item())


def test_objective_weights_validate_names_and_lengths():
    assert objective_weights(TrainConfig()) == {"clip": 1.0}
    with pytest.raises(ValueError, match="objective_weights"):
        objective_weights(TrainConfig(objective_weights=(1.0, 2.0)))
    with pytest.raises(ValueError, match="unknown"):
        objective_weights(TrainConfig(objectives=("nope",)))
    assert "clip" in LOSSES
