"""The objectives registry (training.objectives): weights, the refused combinations, the monitor, and every
gathered loss averaged over ranks equal to the global one."""


import numpy as np
import pytest
import torch
from torch.testing import assert_close

from tests.training.objectives.helpers import normalise, random_outputs, random_unit
from training.config import TrainConfig
from training.distributed import DistContext
from training.objectives import LOSS_FUNCTIONS, LOSSES, WeightedObjectives, objective_weights
from training.objectives.alip import weighted_clip_loss
from training.objectives.clip import clip_loss
from training.objectives.dcl import dcl_loss
from training.objectives.dreamlip import (
    dreamlip_multi_positive_gathered,
)
from training.objectives.mlcd import MLCDConfig, mlcd_loss
from training.objectives.negclip import negclip_loss
from training.objectives.siglip import siglip_loss


def test_registry_names_the_plain_functions():
    assert LOSS_FUNCTIONS == {"siglip": siglip_loss, "dcl": dcl_loss, "negclip": negclip_loss,
                              "alip": weighted_clip_loss, "dreamlip": dreamlip_multi_positive_gathered,
                              "mlcd": mlcd_loss}


def test_gathered_forms_averaged_over_ranks_equal_the_global_loss():
    from training.objectives.alip import weighted_clip_loss_gathered
    from training.objectives.dcl import dcl_loss_gathered
    from training.objectives.negclip import negclip_loss_gathered
    from training.objectives.siglip import siglip_loss_gathered

    img, txt, neg = random_unit(8, 5, seed=30), random_unit(8, 5, seed=31), random_unit(3, 5, seed=32)
    groups = random_unit(8, 3, 5, seed=33)
    t, b = torch.tensor(6.0, dtype=torch.float64), torch.tensor(-4.0, dtype=torch.float64)
    sw, pw = torch.rand(8, dtype=torch.float64), torch.rand(8, dtype=torch.float64)
    flat = groups.reshape(24, 5)
    cases = {
        "siglip": (siglip_loss(img, txt, t, b),
                   lambda r, s: siglip_loss_gathered(img[s], txt, t, b, 4 * r)),
        "dcl": (dcl_loss(img, txt, t), lambda r, s: dcl_loss_gathered(img[s], txt[s], img, txt, t, 4 * r)),
        "negclip": (negclip_loss(img, txt, neg, t),
                    lambda r, s: negclip_loss_gathered(img[s], txt[s], img, txt, neg, t, 4 * r)),
        "alip": (weighted_clip_loss(img, txt, t, sw, pw),
                 lambda r, s: weighted_clip_loss_gathered(img[s], txt[s], img, txt, t, 4 * r, sw[s], pw[s])),
        "dreamlip": (dreamlip_multi_positive_gathered(img, flat, 3, 0),
                     lambda r, s: dreamlip_multi_positive_gathered(img[s], flat, 3, 4 * r)),
    }
    for name, (whole, by_rank) in cases.items():
        halves = [by_rank(r, slice(4 * r, 4 * r + 4)) for r in range(2)]
        assert_close(sum(halves) / 2, whole, msg=name)


def test_weighted_objectives_sum_weight_times_term():
    cfg = TrainConfig(objectives={"clip": 0.25})
    out = random_outputs(3)
    total, terms = WeightedObjectives(cfg, 4)(out, {}, DistContext())
    assert set(terms) == {"clip"}
    assert total.item() == pytest.approx(0.25 * terms["clip"].item())


def test_objective_weights_validate_names():
    assert objective_weights(TrainConfig()) == {"clip": 1.0}
    assert objective_weights(TrainConfig(objectives={"dcl": 2, "mlcd": 0.5})) == {"dcl": 2.0, "mlcd": 0.5}
    with pytest.raises(ValueError, match="unknown"):
        objective_weights(TrainConfig(objectives={"nope": 1.0}))
    with pytest.raises(ValueError, match="no objectives"):
        objective_weights(TrainConfig(objectives={}))
    assert "clip" in LOSSES


def test_registry_holds_every_objective():
    assert set(LOSSES) >= {"clip", "siglip", "dcl", "negclip", "alip", "dreamlip", "mlcd"}


def test_dreamlip_and_clip_together_are_refused():
    for pair in (("clip", "dreamlip"), ("alip", "clip"), ("alip", "dreamlip"), ("negclip", "clip")):
        with pytest.raises(ValueError, match="count it 2 times"):
            objective_weights(TrainConfig(objectives=dict.fromkeys(pair, 1.0)))
    assert objective_weights(TrainConfig(objectives={"dreamlip": 1.0, "mlcd": 1.0})) == {"dreamlip": 1.0, "mlcd": 1.0}


def test_weighted_objectives_collect_reads_metrics_and_shards():
    cfg = TrainConfig(objectives={"dcl": 1.0, "alip": 1.0, "mlcd": 1.0}, mlcd=MLCDConfig(num_centers=3))
    objectives = WeightedObjectives(cfg, 4)
    assert objectives.reads == {"image_features", "text_features", "logit_scale", "synthetic_features"}
    assert set(objectives.sharded()) == {"terms.mlcd.weight"}
    g = torch.Generator().manual_seed(0)
    out = {k: normalise(torch.randn(5, 4, generator=g))
           for k in ("image_features", "text_features", "synthetic_features")}
    out["logit_scale"] = torch.tensor(3.0)
    total, terms = objectives(out, {"cluster_label_ids": torch.zeros(5, 1, dtype=torch.long)}, DistContext())
    assert set(terms) == {"dcl", "alip", "mlcd"}
    assert total.item() == pytest.approx(sum(t.item() for t in terms.values()))
    assert {"alip_gate_sample", "alip_mu_raw", "alip_ungated_raw"} <= set(objectives.metrics())
    # the plain CLIP loss on the raw caption is logged whatever the objectives, and carries no gradient
    monitor = objectives.metrics()["clip_raw_unweighted"]
    assert monitor.item() == pytest.approx(clip_loss(out["image_features"], out["text_features"], 3.0).item())
    assert not monitor.requires_grad
    np.testing.assert_allclose(objectives.terms["alip"].mu.numpy(), 1.0)
    objectives.end_step()
    assert objectives.terms["mlcd"].steps_done == 1 and objectives.terms["alip"].mu[0] < 1.0
