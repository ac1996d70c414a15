"""MLCD against the paper's multi-label loss written out as loops (the authors released no loss code), its
Partial-FC sampling, and its sharded objective module."""


import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from tests.training.objectives.helpers import dot, features, random_unit
from training.config import TrainConfig
from training.distributed import DistContext, init_rows, shard_range
from training.objectives import WeightedObjectives
from training.objectives.mlcd import MLCDConfig, MLCDObjective, mlcd_loss


def mlcd_by_rows(x, centers, labels, scale: float, margin: float) -> float:
    total = 0.0
    for i in range(x.shape[0]):
        pos = {int(c) for c in labels[i] if c >= 0}
        cos = [dot(F.normalize(x[i], dim=0), F.normalize(c, dim=0)) for c in centers]
        neg_sum = sum(math.exp(scale * cos[j]) for j in range(len(cos)) if j not in pos)
        pos_sum = sum(math.exp(-scale * (cos[j] - margin)) for j in pos)
        total += math.log1p(neg_sum) + math.log1p(pos_sum)
    return total / x.shape[0]


def test_mlcd_matches_formula_with_all_negatives():
    g = torch.Generator().manual_seed(22)
    x, centers = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(9, 5, generator=g,
                                                                                   dtype=torch.float64)
    labels = torch.tensor([[0, 3], [1, -1], [8, 2], [5, 4]])
    got = mlcd_loss(x, centers, labels, scale=4.0, margin=0.2, negative_ratio=1.0)
    assert_close(got, torch.tensor(mlcd_by_rows(x, centers, labels, 4.0, 0.2), dtype=torch.float64))


def test_mlcd_negative_sampling_keeps_positives_and_drops_others():
    g = torch.Generator().manual_seed(23)
    x, centers = torch.randn(2, 4, generator=g, dtype=torch.float64), torch.randn(50, 4, generator=g,
                                                                                   dtype=torch.float64)
    labels = torch.tensor([[0, 1], [2, 3]])
    full = mlcd_loss(x, centers, labels, 3.0, 0.1, 1.0)
    # Ratio 0: only the batch's own positives are scored, so sample 0's negatives are centers 2 and 3.
    none = mlcd_loss(x, centers, labels, 3.0, 0.1, 0.0)
    assert_close(none, torch.tensor(mlcd_by_rows(x, centers[:4], labels, 3.0, 0.1), dtype=torch.float64))
    half = mlcd_loss(x, centers, labels, 3.0, 0.1, 0.5, torch.Generator().manual_seed(0))
    assert none < half < full  # fewer negatives, smaller negative term
    again = mlcd_loss(x, centers, labels, 3.0, 0.1, 0.5, torch.Generator().manual_seed(0))
    assert_close(half, again)


def test_mlcd_gradient_reaches_embeddings_and_centers():
    x = random_unit(3, 4, seed=24).float().requires_grad_()
    centers = random_unit(10, 4, seed=25).float().requires_grad_()
    mlcd_loss(x, centers, torch.tensor([[1], [2], [9]]), 8.0, 0.3, 0.5, torch.Generator().manual_seed(1)).backward()
    assert x.grad.abs().sum() > 0 and centers.grad.abs().sum() > 0 and torch.isfinite(centers.grad).all()


def test_mlcd_reads_only_the_sampled_centers_and_survives_samples_without_labels():
    from training.objectives.mlcd import mlcd_logits

    centers = torch.randn(1000, 4, dtype=torch.float64, requires_grad=True)
    x = random_unit(3, 4, seed=36).requires_grad_()
    labels = torch.tensor([[5, 7], [-1, -1], [999, -1]])
    s, positive = mlcd_logits(x, centers, labels, 4.0, 0.1, 0.01, torch.Generator().manual_seed(0))
    assert s.shape == (3, 3 + 10) and positive.sum().item() == 3  # the 3 positives + 1% of the other 997
    loss = mlcd_loss(x, centers, labels, 4.0, 0.1, 0.01, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(centers.grad).all()
    assert (centers.grad.abs().sum(1) > 0).sum().item() == 13  # only the scored rows get a gradient


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
        WeightedObjectives(TrainConfig(objectives={"mlcd": 1.0}), 8)


def test_classifier_rows_do_not_depend_on_the_number_of_ranks():
    whole = init_rows(shard_range(10_000, 0, 1), 3, seed=4)
    parts = [init_rows(shard_range(10_000, r, 3), 3, seed=4) for r in range(3)]
    assert [p.shape[0] for p in parts] == [3333, 3333, 3334]
    assert torch.equal(torch.cat(parts), whole)
    assert whole.std().item() == pytest.approx(0.01, rel=0.05)
    assert not torch.equal(init_rows(shard_range(10, 0, 1), 3, seed=5), whole[:10])


@pytest.mark.parametrize(("scale", "margin"), [(32.0, 0.2), (1.0, 0.0), (10.0, 0.5)])
def test_mlcd_loss_equals_the_papers_multi_label_loss(scale, margin):
    """mlcd_loss with every negative scored against references/mlcd_reference.py. The authors released no loss code
    (deepglint/unicom at ae71411: `mlcd/` holds the ViT and checkpoint converters only; `partial_fc.py` is UNICOM's
    single-label margin softmax), so the reference transcribes the paper's multi-label loss (An et al. 2024,
    Sec. 3): log(1 + sum_neg exp(s cos)) + log(1 + sum_pos exp(-s (cos - m))), mean over samples."""
    from tests.training.references.mlcd_reference import mlcd_loss_reference

    g = torch.Generator().manual_seed(7)
    x, centers = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(11, 8, generator=g,
                                                                                   dtype=torch.float64)
    labels = torch.randint(0, 11, (6, 3), generator=g)
    labels[0, 2], labels[1, 1:] = -1, -1  # fewer positives than k: -1 pads
    got = mlcd_loss(x, centers, labels, scale, margin, negative_ratio=1.0)
    assert_close(got, mlcd_loss_reference(x, centers, labels, scale, margin))
