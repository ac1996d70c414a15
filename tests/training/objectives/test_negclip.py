"""NegCLIP's loss against vinid/neg_clip's ClipLoss (references/aro_reference.py), and its objective module."""

import pytest
import torch

from tests.training.objectives.helpers import features, random_unit
from tests.training.references import aro_reference
from training.distributed import DistContext
from training.objectives.negclip import NegCLIPObjective, negclip_loss


def test_negclip_loss_equals_the_authors_loss():
    """negclip_loss against vinid/neg_clip's `ClipLoss.forward` on one GPU (references/aro_reference.py,
    `negclip_loss_reference`): the negative captions join the image->text softmax only. Our loss has no hard
    negative *images* yet (they need the embed stage's neighbours), so the reference runs without them."""
    img, txt, neg = random_unit(4, 6, seed=10), random_unit(4, 6, seed=11), random_unit(4, 6, seed=12)
    got = negclip_loss(img, txt, neg, torch.tensor(8.0, dtype=torch.float64))
    assert got.item() == pytest.approx(aro_reference.negclip_loss_reference(img, txt, neg, 8.0), rel=1e-9)
    assert got > negclip_loss(img, txt, neg[:0], torch.tensor(8.0, dtype=torch.float64))


def test_negclip_gradient_reaches_hard_negatives():
    neg = random_unit(2, 6, seed=13).float().requires_grad_()
    img, txt = random_unit(3, 6, seed=14).float(), random_unit(3, 6, seed=15).float()
    negclip_loss(img, txt, neg, torch.tensor(5.0)).backward()
    assert neg.grad is not None and neg.grad.abs().sum() > 0


def test_negclip_objective_adds_only_the_real_negatives():
    img, txt, neg = features(3, 4, seed=7), features(3, 4, seed=8), features(3, 2, 4, seed=9)
    mask = torch.tensor([[True, False], [True, True], [False, False]])
    out = {"image_features": img, "text_features": txt, "negative_features": neg,
           "logit_scale": torch.tensor(6.0, dtype=torch.float64)}
    # vinid/neg_clip's ClipLoss (references/aro_reference.py) over the real negatives: image->text only
    expected = aro_reference.negclip_loss_reference(img, txt, neg[mask], 6.0)
    got = NegCLIPObjective()(out, {"negative_mask": mask}, DistContext())
    assert got.item() == pytest.approx(expected, rel=1e-9)
