"""CLIP (open_clip ClipLoss) as loops over pairs, single process and gathered across ranks."""




import math

import pytest
import torch

from tests.training.objectives.helpers import normalise, random_outputs
from training.distributed import DistContext
from training.objectives.clip import ClipObjective, clip_loss, clip_loss_gathered


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
    img, txt = normalise(torch.randn(7, 5, generator=g, dtype=torch.float64)), normalise(torch.randn(7, 5, generator=g,
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
    img, txt = normalise(torch.randn(8, 6, generator=g)), normalise(torch.randn(8, 6, generator=g))
    scale = torch.tensor(7.0)
    halves = [clip_loss_gathered(img[r * 4:(r + 1) * 4], txt[r * 4:(r + 1) * 4], img, txt, scale, r * 4)
              for r in range(2)]
    assert (sum(halves) / 2).item() == pytest.approx(clip_loss(img, txt, scale).item(), rel=1e-6)


def test_clip_objective_single_process_is_clip_loss():
    out = random_outputs(2)
    expected = clip_loss(out["image_features"], out["text_features"], out["logit_scale"])
    assert ClipObjective()(out, {}, DistContext()).item() == pytest.approx(expected.item())
