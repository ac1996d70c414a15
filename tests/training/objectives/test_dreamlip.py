"""DreamLIP against zyf0619sjtu/DreamLIP's open_clip/loss.py and training/data.py (references/dreamlip_reference.py)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from tests.training.objectives.helpers import features, random_unit
from tests.training.references import dreamlip_reference
from training.distributed import DistContext
from training.objectives.dreamlip import (
    DreamLIPConfig,
    DreamLIPObjective,
    dreamlip_grouping_loss,
    dreamlip_multi_positive_gathered,
    sample_subcaption_ids,
    split_sentences,
)


def test_multi_positive_term_equals_the_authors_circle_loss():
    """Raw caption and K sub-captions of an image are its positives; gamma 32, margin 0.25, / 10."""
    img, raw, subs = random_unit(4, 6, seed=18), random_unit(4, 6, seed=40), random_unit(4, 3, 6, seed=19)
    texts = torch.cat([raw[:, None], subs], dim=1).flatten(0, 1)  # image-major (B*T, D)
    got = dreamlip_multi_positive_gathered(img, texts, 4, 0)
    want = dreamlip_reference.dreamlip_multi_positive_reference(img, subs, raw)
    assert_close(got, want)
    assert_close(dreamlip_multi_positive_gathered(img, texts, 4, 0, gamma=64.0, margin=0.1, divisor=1.0),
                 dreamlip_reference.dreamlip_multi_positive_reference(img, subs, raw, gamma=64.0, margin=0.1,
                                                                      divisor=1.0))


def test_grouping_term_equals_the_authors_fine_grained_loss():
    """Min-max normalised patch weights, thresholded and renormalised; InfoNCE over all B*T pairs. The
    reference's default (authors_reshape_quirk=False) groups each image's texts over its own patches: the
    released `.view` pairs texts with other images' patches, which we take for a bug (see DreamLIPObjective)."""
    patches, raw, subs = random_unit(3, 9, 6, seed=34), random_unit(3, 6, seed=41), random_unit(3, 2, 6, seed=35)
    texts = torch.cat([raw[:, None], subs], dim=1)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    for threshold, norm in ((0.0, "minmax"), (0.3, "minmax"), (-1.0, "softmax")):
        got = dreamlip_grouping_loss(patches, texts, scale, threshold, norm)
        want = dreamlip_reference.dreamlip_grouping_reference(patches, subs, raw, scale, sgl_delta=threshold,
                                                              sgl_norm=norm)
        assert_close(got, want, msg=f"{threshold} {norm}")


def test_split_sentences_and_sampling_follow_the_authors_loader():
    caption = "A dog sits. It is brown\nIs it happy</s> Yes."
    assert split_sentences(caption) == dreamlip_reference.dreamlip_split_caption(caption) == \
        ["A dog sits", "It is brown", "Is it happy", "Yes"]
    assert split_sentences("") == [] and split_sentences("   ") == []
    rng = np.random.default_rng(3)
    ids = sample_subcaption_ids(10, 6, rng)
    assert len(ids) == 6 and len(set(ids)) == 6 and all(0 <= k < 10 for k in ids)  # without replacement
    assert sorted(sample_subcaption_ids(6, 6, rng)) == list(range(6))
    assert len(sample_subcaption_ids(2, 6, rng)) == 6 and sample_subcaption_ids(0, 6, rng) == []


def test_dreamlip_objective_is_the_authors_total(micro_model):
    """DreamLIPObjective against references/dreamlip_reference.py `dreamlip_total_reference`, a transcription
    of zyf0619sjtu/DreamLIP open_clip/loss.py `ClipLoss.forward` (raw-caption CLIP / T + circle multi-positive
    / 10 + grouping), with the patch tokens given to it already projected (the authors project none)."""
    from training.models import create_model

    model, _, _ = create_model(micro_model)
    cfg = DreamLIPConfig(num_text=3, grouping_weight=0.5, grouping_temperature=0.25, grouping_threshold=0.2)
    objective = DreamLIPObjective(cfg, 32)
    objective.attach(model)
    objective.double()
    assert torch.equal(objective.token_proj.weight, model.visual.proj.T.double())
    assert objective.reads >= {"patch_tokens", "subcaption_features", "text_features"}
    img, raw, subs = features(3, 32, seed=13), features(3, 32, seed=16), features(3, 3, 32, seed=14)
    tokens = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    out = {"image_features": img, "text_features": raw, "subcaption_features": subs, "patch_tokens": tokens,
           "logit_scale": torch.tensor(8.0, dtype=torch.float64)}
    got = objective(out, {}, DistContext())
    projected = tokens @ objective.token_proj.weight.T
    want = dreamlip_reference.dreamlip_total_reference(img, raw, subs, 8.0, projected, 4.0, sgl_delta=0.2,
                                                       sgl_lossweight=0.5)
    assert got.item() == pytest.approx(want["loss"].item(), rel=1e-9)
    assert float(objective.metrics["dreamlip_loss_clip"]) == pytest.approx(want["CLIP_loss"].item(), rel=1e-9)
    assert float(objective.metrics["dreamlip_loss_multi_positive"]) == pytest.approx(want["I2mT_loss"].item(),
                                                                                    rel=1e-9)
    got.backward()
    assert objective.group_logit_scale.grad is not None and objective.token_proj.weight.grad.abs().sum() > 0


def test_dreamlip_without_grouping_reads_no_patch_tokens():
    objective = DreamLIPObjective(DreamLIPConfig(grouping_weight=0.0), 8)
    objective.attach(SimpleNamespace())  # any tower: no projection is built
    assert "patch_tokens" not in objective.reads and list(objective.parameters()) == []
