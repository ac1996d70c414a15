"""training.step: a non-finite step leaves the weights, and feature-cached accumulation gives the big batch's
gradient."""

import pytest
import torch

from training.distributed import DistContext
from training.models import create_model
from training.module import TrainModule
from training.objectives import WeightedObjectives
from training.objectives.mlcd import MLCDConfig
from training.optim import make_optimizer
from training.step import forward_backward, train_step

from .conftest import tiny_cfg


def test_a_non_finite_loss_skips_the_step_and_leaves_the_weights(micro_model, colour_table, reliability):
    from training.data import table_loader
    from training.models import image_transform

    cfg = tiny_cfg(micro_model)
    model, _, tokenizer = create_model(micro_model)
    module = TrainModule(model, WeightedObjectives(cfg, 32), DistContext())
    optimizer = make_optimizer(module, cfg.optim)
    batch = next(iter(table_loader(colour_table, 8, tokenizer, True, 0, transform=image_transform(model, True))))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch["image"][0, 0, 0, 0] = float("nan")
    assert train_step(module, optimizer, batch, cfg, DistContext()) is None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    batch["image"] = torch.nan_to_num(batch["image"])
    assert train_step(module, optimizer, batch, cfg, DistContext()) is not None
    assert not torch.equal(model.visual.conv1.weight, before["visual.conv1.weight"])
    reliability.fault("non-finite loss", "train")  # the one step skipped above


def split_batch(batch: dict, parts: int) -> list[dict]:
    """`parts` micro-batches of a collated batch (per-image token groups split with their images)."""
    rows = batch["image"].shape[0]
    out = [{} for _ in range(parts)]
    for key, value in batch.items():
        size = len(value) // parts
        for j in range(parts):
            out[j][key] = value[j * size:(j + 1) * size]
    assert all(len(b["uid"]) == rows // parts for b in out)
    return out


@pytest.mark.parametrize("objectives", [("siglip", "dcl", "alip", "mlcd"), ("dreamlip", "mlcd"), ("negclip",)])
def test_accumulated_micro_batches_give_the_big_batch_gradient(micro_model, colour_table, objectives):
    """open_clip's feature-cached accumulation with every objective: 2 x 8 samples = one batch of 16."""
    import copy

    from training.data import batch_fields, table_loader
    from training.models import image_transform

    cfg = tiny_cfg(micro_model, objectives=objectives, mlcd=MLCDConfig(num_centers=6, negative_ratio=0.5))
    model, _, tokenizer = create_model(micro_model)
    big = TrainModule(model, WeightedObjectives(cfg, 32), DistContext())
    accumulated = copy.deepcopy(big)
    batch = next(table_loader(colour_table, 16, tokenizer, True, 0, transform=image_transform(model, True),
                              fields=batch_fields(cfg)))
    total, terms = forward_backward(big, [batch], cfg, DistContext())
    total_acc, terms_acc = forward_backward(accumulated, split_batch(batch, 2), cfg, DistContext())
    assert total_acc.item() == pytest.approx(total.item(), rel=1e-5)
    assert all(terms_acc[k].item() == pytest.approx(v.item(), rel=1e-5) for k, v in terms.items())
    grads = dict(big.named_parameters())
    for name, p in accumulated.named_parameters():
        assert (p.grad is None) == (grads[name].grad is None), name
        if p.grad is not None:
            assert torch.allclose(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6), name
