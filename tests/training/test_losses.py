import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.config import ALIPConfig, DreamLIPConfig, MLCDConfig, TrainConfig
from training.losses import (
    LOSSES,
    ALIPObjective,
    ClipObjective,
    DCLObjective,
    DistContext,
    DreamLIPObjective,
    MLCDObjective,
    NegCLIPObjective,
    SigLIPObjective,
    WeightedObjectives,
    clip_loss,
    clip_loss_gathered,
    init_rows,
    objective_weights,
    shard_range,
)
from training.objectives import siglip_loss


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
    real = neg[mask]
    expected = sum(-6 * dot(img[i], txt[i]) + lse([6 * dot(img[i], y) for y in torch.cat([txt, real])])
                   - 6 * dot(txt[i], img[i]) + lse([6 * dot(txt[i], x) for x in img]) for i in range(3)) / 6
    got = NegCLIPObjective()(out, {"negative_mask": mask}, DistContext())
    assert got.item() == pytest.approx(expected, rel=1e-9)


def alip_by_rows(img, txt, cap, t: float, mu0: float, momentum: float) -> tuple[float, list[float]]:
    """ALIP written out: running means first, then gates, then gated per-sample CLIP losses of both paths."""
    n = img.shape[0]
    sims = {"raw": [dot(img[i], txt[i]) for i in range(n)], "cap": [dot(img[i], cap[i]) for i in range(n)],
            "tc": [dot(txt[i], cap[i]) for i in range(n)]}
    mu = {k: momentum * mu0 + (1 - momentum) * sum(v) / n for k, v in sims.items()}
    total = 0.0
    for i in range(n):
        sample_gate = min(math.exp(2 * (sims["tc"][i] - mu["tc"])), 1.0)
        for texts, key in ((txt, "raw"), (cap, "cap")):
            row = -t * dot(img[i], texts[i]) + lse([t * dot(img[i], y) for y in texts])
            col = -t * dot(texts[i], img[i]) + lse([t * dot(texts[i], x) for x in img])
            total += sample_gate * math.exp(2 * (sims[key][i] - mu[key])) * (row + col) / 2
    return total / n, [mu["raw"], mu["cap"], mu["tc"]]


def test_alip_objective_matches_the_gated_formula_and_commits_means_once_per_step():
    img, txt, cap = features(6, 5, seed=10), features(6, 5, seed=11), features(6, 5, seed=12)
    cap = unit(cap + 2 * txt)  # captions that agree with the raw text a little
    objective = ALIPObjective(TrainConfig(alip=ALIPConfig(momentum=0.9, init_mean=0.5))).double()
    out = {"image_features": img, "text_features": txt, "synthetic_features": cap,
           "logit_scale": torch.tensor(5.0, dtype=torch.float64)}
    expected, mu = alip_by_rows(img, txt, cap, 5.0, 0.5, 0.9)
    # The gates are computed in fp32 (as under autocast), hence rel=1e-6.
    assert objective(out, {}, DistContext()).item() == pytest.approx(expected, rel=1e-6)
    assert objective(out, {}, DistContext()).item() == pytest.approx(expected, rel=1e-6)  # same step: same gates
    assert objective.mu.tolist() == [0.5] * 3
    assert float(objective.metrics["alip_mu_raw"]) == pytest.approx(mu[0])
    objective.end_step()
    assert objective.mu.tolist() == pytest.approx(mu)
    assert "mu" in objective.state_dict()


def grouping_by_loops(patches, subs, ids, t: float) -> float:
    b, k = ids.shape
    total = 0.0
    for i in range(b):
        z = [unit(p) for p in patches[i]]
        regions = []
        for a in range(k):
            w = [math.exp(t * dot(subs[i, a], zp)) for zp in z]
            regions.append(unit(sum(wp / sum(w) * zp for wp, zp in zip(w, z, strict=True))))
        for a in range(k):
            same = [c for c in range(k) if ids[i, c] == ids[i, a]]
            to_text = [t * dot(regions[a], subs[i, c]) for c in range(k)]
            to_region = [t * dot(subs[i, a], regions[c]) for c in range(k)]
            total += lse(to_text) - lse([to_text[c] for c in same])
            total += lse(to_region) - lse([to_region[c] for c in same])
    return total / (2 * b * k)


def multi_positive_by_rows(img, groups, t: float) -> float:
    b, k, _ = groups.shape
    texts = [(o, groups[o, s]) for o in range(b) for s in range(k)]
    i2t = sum(lse([t * dot(img[i], y) for _, y in texts]) - lse([t * dot(img[i], y) for o, y in texts if o == i])
              for i in range(b)) / b
    t2i = sum(-t * dot(y, img[o]) + lse([t * dot(y, x) for x in img]) for o, y in texts) / len(texts)
    return (i2t + t2i) / 2


def test_dreamlip_objective_is_multi_positive_plus_weighted_grouping(micro_model):
    from training.models import create_model

    model, _, _ = create_model(micro_model)
    cfg = TrainConfig(dreamlip=DreamLIPConfig(num_text=3, grouping_weight=0.5, grouping_temperature=0.25))
    objective = DreamLIPObjective(cfg, 32)
    objective.attach(model)
    objective.double()
    assert torch.equal(objective.token_proj.weight, model.visual.proj.T.double())
    assert objective.reads >= {"patch_tokens", "subcaption_features"}
    img, subs = features(3, 32, seed=13), features(3, 3, 32, seed=14)
    tokens = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    ids = torch.tensor([[0, 1, 2], [0, 0, 1], [2, 2, 2]])
    out = {"image_features": img, "subcaption_features": subs, "patch_tokens": tokens,
           "logit_scale": torch.tensor(8.0, dtype=torch.float64)}
    got = objective(out, {"subcaption_ids": ids}, DistContext())
    projected = tokens @ objective.token_proj.weight.T
    expected = multi_positive_by_rows(img, subs, 8.0) + 0.5 * grouping_by_loops(projected, subs, ids, 4.0)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    got.backward()
    assert objective.group_logit_scale.grad is not None and objective.token_proj.weight.grad.abs().sum() > 0


def test_dreamlip_without_grouping_reads_no_patch_tokens():
    objective = DreamLIPObjective(TrainConfig(dreamlip=DreamLIPConfig(grouping_weight=0.0)), 8)
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
    cfg = TrainConfig(mlcd=MLCDConfig(num_centers=7, scale=6.0, margin=0.25, negative_ratio=1.0))
    objective = MLCDObjective(cfg, 5).double()
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
    cfg = TrainConfig(mlcd=MLCDConfig(num_centers=50, negative_ratio=0.2))
    objective = MLCDObjective(cfg, 4)
    out = {"image_features": features(3, 4, seed=17).float()}
    batch = {"cluster_label_ids": torch.tensor([[1], [2], [3]])}
    first = objective(out, batch, DistContext())
    assert objective(out, batch, DistContext()).item() == first.item()  # micro-batches of one step: same draw
    objective.end_step()
    assert objective(out, batch, DistContext()).item() != first.item()
    state = objective.state_dict()
    fresh = MLCDObjective(cfg, 4)
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
    cfg = TrainConfig(objectives=("clip", "alip", "mlcd"), mlcd=MLCDConfig(num_centers=3))
    objectives = WeightedObjectives(cfg, 4)
    assert objectives.reads == {"image_features", "text_features", "logit_scale", "synthetic_features"}
    assert set(objectives.sharded()) == {"terms.mlcd.weight"}
    g = torch.Generator().manual_seed(0)
    out = {k: unit(torch.randn(5, 4, generator=g)) for k in ("image_features", "text_features", "synthetic_features")}
    out["logit_scale"] = torch.tensor(3.0)
    total, terms = objectives(out, {"cluster_label_ids": torch.zeros(5, 1, dtype=torch.long)}, DistContext())
    assert set(terms) == {"clip", "alip", "mlcd"}
    assert total.item() == pytest.approx(sum(t.item() for t in terms.values()))
    assert {"alip_gate_sample", "alip_mu_raw", "alip_ungated_raw"} <= set(objectives.metrics())
    np.testing.assert_allclose(objectives.terms["alip"].mu.numpy(), 1.0)
    objectives.end_step()
    assert objectives.terms["mlcd"].steps_done == 1 and objectives.terms["alip"].mu[0] < 1.0
