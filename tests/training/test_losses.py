import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.training.references import alip_reference, aro_reference, dreamlip_reference
from training.config import ALIPConfig, DreamLIPConfig, MLCDConfig, TrainConfig
from training.distributed import DistContext, init_rows, shard_range
from training.objectives import LOSSES, WeightedObjectives, objective_weights
from training.objectives.alip import ALIPObjective
from training.objectives.clip import ClipObjective, clip_loss, clip_loss_gathered
from training.objectives.dcl import DCLObjective
from training.objectives.dreamlip import DreamLIPObjective
from training.objectives.mlcd import MLCDObjective
from training.objectives.negclip import NegCLIPObjective
from training.objectives.siglip import SigLIPObjective, siglip_loss


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


# --- the objective modules against their papers' formulas written as loops ---------------------------------



def lse(values) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a @ b).detach())


def features(*shape: int, seed: int) -> torch.Tensor:
    return unit(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))


def test_registry_holds_every_objective():
    assert set(LOSSES) >= {"clip", "siglip", "dcl", "negclip", "alip", "dreamlip", "mlcd"}


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


def test_dcl_objective_leaves_the_positive_out():
    img, txt = features(5, 4, seed=5), features(5, 4, seed=6)
    out = {"image_features": img, "text_features": txt, "logit_scale": torch.tensor(9.0, dtype=torch.float64)}
    expected = sum(-9 * dot(a[i], b[i]) + lse([9 * dot(a[i], b[j]) for j in range(5) if j != i])
                   for i in range(5) for a, b in ((img, txt), (txt, img))) / 10
    assert DCLObjective()(out, {}, DistContext()).item() == pytest.approx(expected, rel=1e-9)


def test_negclip_objective_adds_only_the_real_negatives():
    img, txt, neg = features(3, 4, seed=7), features(3, 4, seed=8), features(3, 2, 4, seed=9)
    mask = torch.tensor([[True, False], [True, True], [False, False]])
    out = {"image_features": img, "text_features": txt, "negative_features": neg,
           "logit_scale": torch.tensor(6.0, dtype=torch.float64)}
    # vinid/neg_clip's ClipLoss (references/aro_reference.py) over the real negatives: image->text only
    expected = aro_reference.negclip_loss_reference(img, txt, neg[mask], 6.0)
    got = NegCLIPObjective()(out, {"negative_mask": mask}, DistContext())
    assert got.item() == pytest.approx(expected, rel=1e-9)


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
        img, txt = unit(torch.randn(8, 6, generator=g, dtype=torch.float64)), \
            unit(torch.randn(8, 6, generator=g, dtype=torch.float64))
        cap = unit(torch.randn(8, 6, generator=g, dtype=torch.float64) + (step % 3) * txt)
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


def test_dreamlip_and_clip_together_are_refused():
    for pair in (("clip", "dreamlip"), ("alip", "clip"), ("alip", "dreamlip"), ("negclip", "clip")):
        with pytest.raises(ValueError, match="count it 2 times"):
            objective_weights(TrainConfig(objectives=pair))
    assert objective_weights(TrainConfig(objectives=("dreamlip", "mlcd"))) == {"dreamlip": 1.0, "mlcd": 1.0}


def test_dreamlip_without_grouping_reads_no_patch_tokens():
    objective = DreamLIPObjective(DreamLIPConfig(grouping_weight=0.0), 8)
    objective.attach(SimpleNamespace())  # any tower: no projection is built
    assert "patch_tokens" not in objective.reads and list(objective.parameters()) == []


def mlcd_by_rows(x, centers, labels, scale: float, margin: float) -> float:
    total = 0.0
    for i in range(x.shape[0]):
        pos = {int(c) for c in labels[i] if c >= 0}
        cos = [dot(unit(x[i]), unit(c)) for c in centers]
        total += math.log1p(sum(math.exp(scale * cos[j]) for j in range(len(cos)) if j not in pos))
        total += math.log1p(sum(math.exp(-scale * (cos[j] - margin)) for j in pos))
    return total / x.shape[0]


def test_mlcd_objective_is_the_multi_label_loss_over_its_classifier():
    cfg = MLCDConfig(num_centers=7, scale=6.0, margin=0.25, negative_ratio=1.0)
    objective = MLCDObjective(cfg, 5, seed=0).double()
    assert objective.weight.shape == (7, 5) and objective.reads == {"image_features"}
    x = features(4, 5, seed=16)
    labels = torch.tensor([[0, 3], [6, -1], [-1, -1], [2, 1]])  # a sample without labels has only negatives
    got = objective({"image_features": x}, {"cluster_label_ids": labels}, DistContext())
    assert got.item() == pytest.approx(mlcd_by_rows(x, objective.weight.detach(), labels, 6.0, 0.25), rel=1e-9)
    got.backward()
    assert torch.isfinite(objective.weight.grad).all() and objective.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="num_centers=7"):
        objective({"image_features": x}, {"cluster_label_ids": torch.tensor([[7]] * 4)}, DistContext())


def test_mlcd_samples_negatives_per_step_and_checkpoints_the_step():
    cfg = MLCDConfig(num_centers=50, negative_ratio=0.2)
    objective = MLCDObjective(cfg, 4, seed=0)
    out = {"image_features": features(3, 4, seed=17).float()}
    batch = {"cluster_label_ids": torch.tensor([[1], [2], [3]])}
    first = objective(out, batch, DistContext())
    assert objective(out, batch, DistContext()).item() == first.item()  # micro-batches of one step: same draw
    objective.end_step()
    assert objective(out, batch, DistContext()).item() != first.item()
    state = objective.state_dict()
    fresh = MLCDObjective(cfg, 4, seed=0)
    fresh.load_state_dict(state)
    assert fresh.steps_done == 1 and torch.equal(fresh.weight, objective.weight)


def test_mlcd_needs_the_number_of_centers():
    with pytest.raises(ValueError, match="mlcd.num_centers"):
        WeightedObjectives(TrainConfig(objectives=("mlcd",)), 8)


def test_classifier_rows_do_not_depend_on_the_number_of_ranks():
    whole = init_rows(shard_range(10_000, 0, 1), 3, seed=4)
    parts = [init_rows(shard_range(10_000, r, 3), 3, seed=4) for r in range(3)]
    assert [p.shape[0] for p in parts] == [3333, 3333, 3334]
    assert torch.equal(torch.cat(parts), whole)
    assert whole.std().item() == pytest.approx(0.01, rel=0.05)
    assert not torch.equal(init_rows(shard_range(10, 0, 1), 3, seed=5), whole[:10])


def test_weighted_objectives_collect_reads_metrics_and_shards():
    cfg = TrainConfig(objectives=("dcl", "alip", "mlcd"), mlcd=MLCDConfig(num_centers=3))
    objectives = WeightedObjectives(cfg, 4)
    assert objectives.reads == {"image_features", "text_features", "logit_scale", "synthetic_features"}
    assert set(objectives.sharded()) == {"terms.mlcd.weight"}
    g = torch.Generator().manual_seed(0)
    out = {k: unit(torch.randn(5, 4, generator=g)) for k in ("image_features", "text_features", "synthetic_features")}
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
