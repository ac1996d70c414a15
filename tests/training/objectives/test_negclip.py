"""NegCLIP's loss against vinid/neg_clip's ClipLoss (references/aro_reference.py, references/negclip_reference.py),
its objective module, and its hard negative images from the loaders to a training step."""

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from tests.training.conftest import tiny_cfg
from tests.training.objectives.helpers import features, random_unit
from tests.training.references import aro_reference, negclip_reference
from tests.training.test_data import neighbour_rows, write_shards
from training.data import batch_fields, table_loader
from training.distributed import DistContext
from training.loop import train
from training.models import create_model, image_transform
from training.module import TrainModule
from training.objectives import WeightedObjectives
from training.objectives.clip import clip_loss
from training.objectives.negclip import NegCLIPConfig, NegCLIPObjective, negclip_loss, own_rows


def test_negclip_loss_equals_the_authors_loss():
    """negclip_loss against vinid/neg_clip's `ClipLoss.forward` on one GPU (references/aro_reference.py,
    `negclip_loss_reference`): the negative captions join the image->text softmax only (no hard negative
    images here: the tests below add them)."""
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


# --- hard negative images -------------------------------------------------------------------------------


def test_a_batch_grown_by_neighbour_pairs_has_the_loss_of_negclips_training_step(micro_model):
    """The loaders' batch of B samples + B neighbour pairs through TrainModule gives the loss of vinid/neg_clip's
    step on the same inputs: `CsvDataset.__getitem__`'s six tensors concatenated as `train_one_epoch` does, encoded
    and scored by `ClipLoss.forward` (references/negclip_reference.py, `negclip_step_loss_reference`)."""
    cfg = tiny_cfg(micro_model, objectives=("negclip",), batch_size=8)
    model, _, tokenizer = create_model(micro_model)
    rows = neighbour_rows(16)
    batch = next(table_loader(pa.Table.from_pylist(rows), 8, tokenizer, False, 0,
                              transform=image_transform(model, True), fields=batch_fields(cfg)))
    assert batch["image"].shape[0] == 16 and bool(batch["negative_mask"].all())  # u0..u7 each find u(i+4)
    module = TrainModule(model, WeightedObjectives(cfg, 32), DistContext())
    _, terms = module(batch)
    b = 8
    expected = negclip_reference.negclip_step_loss_reference(
        model, batch["image"][:b], batch["image"][b:], batch["text"][:b], batch["text"][b:],
        batch["negative_text"][:b], batch["negative_text"][b:])
    assert terms["negclip"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert module.objectives.metrics()["negclip_image_pairs"].item() == 8
    without = negclip_reference.negclip_step_loss_reference(  # the pairs change the loss: this test can fail
        model, batch["image"][:b], batch["image"][:0], batch["text"][:b], batch["text"][:0],
        batch["negative_text"][:b], batch["negative_text"][:0])
    assert abs(without.item() - expected.item()) > 1e-3


def test_fewer_pairs_than_samples_and_missing_negatives_follow_negclips_loss():
    """M = 2 pairs for B = 4 samples, two captions without a negative: vinid/neg_clip's `ClipLoss` over
    [images; pair images] and [captions; pair captions; real negatives] (references/aro_reference.py,
    `negclip_loss_reference` with hard_image)."""
    img, txt, neg = features(6, 5, seed=20), features(6, 5, seed=21), features(6, 1, 5, seed=22)
    mask = torch.tensor([[True], [False], [True], [True], [False], [True]])
    pairs = torch.tensor([False] * 4 + [True] * 2)
    out = {"image_features": img, "text_features": txt, "negative_features": neg,
           "logit_scale": torch.tensor(7.0, dtype=torch.float64)}
    objective = NegCLIPObjective()
    got = objective(out, {"negative_mask": mask, "neighbour_pair": pairs}, DistContext())
    expected = aro_reference.negclip_loss_reference(
        img[:4], txt[:4], neg[:4][mask[:4]], 7.0, hard_image=img[4:], hard_image_text=txt[4:],
        hard_image_neg_text=neg[4:][mask[4:]])
    assert got.item() == pytest.approx(expected, rel=1e-9) and objective.metrics["negclip_image_pairs"] == 2


def test_other_objectives_and_the_logged_clip_loss_see_only_the_batchs_own_rows():
    img, txt, neg = features(5, 4, seed=30), features(5, 4, seed=31), features(5, 1, 4, seed=32)
    batch = {"negative_mask": torch.ones(5, 1, dtype=torch.bool), "uid": list("abcde"),
             "neighbour_pair": torch.tensor([False, False, False, True, True])}
    out = {"image_features": img, "text_features": txt, "negative_features": neg,
           "logit_scale": torch.tensor(6.0, dtype=torch.float64)}
    own_out, own_batch = own_rows(out, batch)
    assert own_batch["uid"] == ["a", "b", "c"] and own_out["negative_features"].shape == (3, 1, 4)
    assert own_out["logit_scale"] is out["logit_scale"] and "neighbour_pair" not in own_batch
    cfg = tiny_cfg("unused", objectives=("negclip",))
    objectives = WeightedObjectives(cfg, 4)
    total, terms = objectives(out, batch, DistContext())
    assert objectives.metrics()["clip_raw_unweighted"].item() == pytest.approx(
        clip_loss(img[:3], txt[:3], torch.tensor(6.0, dtype=torch.float64)).item(), rel=1e-9)
    assert terms["negclip"].item() == pytest.approx(aro_reference.negclip_loss_reference(
        img[:3], txt[:3], neg[:3, 0], 6.0, img[3:], txt[3:], neg[3:, 0]), rel=1e-9)
    assert own_rows(out, {**batch, "neighbour_pair": torch.zeros(5, dtype=torch.bool)})[0] is out


def test_accumulated_micro_batches_with_different_numbers_of_pairs_give_the_merged_batchs_gradient(micro_model):
    """Feature-cached accumulation (training.step) over micro-batches of 8 + 8 and 8 + 4 rows equals one step on
    their 28 rows: NegCLIP's loss does not depend on where the pair rows sit."""
    import copy

    from training.step import forward_backward

    cfg = tiny_cfg(micro_model, objectives=("negclip",), batch_size=8, accum_freq=2)
    model, _, tokenizer = create_model(micro_model)
    micro = list(table_loader(pa.Table.from_pylist(neighbour_rows(16)), 8, tokenizer, False, 0,
                              transform=image_transform(model, True), fields=batch_fields(cfg)))
    assert [len(b["uid"]) for b in micro] == [16, 12]
    merged = {k: torch.cat([b[k] for b in micro]) if isinstance(v, torch.Tensor) else [x for b in micro for x in b[k]]
              for k, v in micro[0].items()}
    big = TrainModule(model, WeightedObjectives(cfg, 32), DistContext())
    accumulated = copy.deepcopy(big)
    total, _ = forward_backward(big, [merged], cfg, DistContext())
    total_acc, _ = forward_backward(accumulated, micro, cfg, DistContext())
    assert total_acc.item() == pytest.approx(total.item(), rel=1e-5)
    assert accumulated.objectives.metrics()["negclip_image_pairs"].item() == 12
    grads = dict(big.named_parameters())
    for name, p in accumulated.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6), name


RAGGED_SCRIPT = r"""
import json, os, sys
import torch, torch.distributed as dist
import torch.nn.functional as F
from training.config import TrainConfig
from training.distributed import DistContext
from training.objectives import WeightedObjectives
rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
g = torch.Generator().manual_seed(0)
img, txt, neg = torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g), torch.randn(9, 1, 5, generator=g)
mask = torch.rand(9, 1, generator=g) > 0.3
rows = slice(0, 5) if rank == 0 else slice(5, 9)  # rank 0: 3 samples + 2 pairs; rank 1: 3 samples + 1 pair
pairs = torch.tensor([False, False, False, True, True] if rank == 0 else [False, False, False, True])
local = [x[rows].clone().requires_grad_() for x in (img, txt, neg)]
ctx = DistContext.current()
objectives = WeightedObjectives(TrainConfig(objectives={"negclip": 1.0}), 5)
feats = {"image_features": F.normalize(local[0], dim=-1), "text_features": F.normalize(local[1], dim=-1),
         "negative_features": F.normalize(local[2], dim=-1), "logit_scale": torch.tensor(9.0)}
total, terms = objectives(feats, {"negative_mask": mask[rows], "neighbour_pair": pairs}, ctx)
total.backward()
metrics = objectives.metrics()
json.dump({"loss": total.item(), "grads": [x.grad.tolist() for x in local],
           "pairs": metrics["negclip_image_pairs"].item(), "clip_raw": metrics["clip_raw_unweighted"].item()},
          open(out, "w"))
dist.barrier()
dist.destroy_process_group()
os._exit(0)  # skip interpreter teardown (see conftest.two_gloo_ranks)
"""


def test_two_ranks_with_different_numbers_of_pairs_give_the_single_process_loss(two_gloo_ranks, monkeypatch):
    """Ranks holding 5 and 4 rows: the mean of their losses, and of their gradients (DDP's average), equal the
    single-process NegCLIP loss over the 9 rows, rank-major; the logged CLIP loss covers the 3 + 3 own rows."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[3]))  # the ranks import this checkout
    ranks = two_gloo_ranks(RAGGED_SCRIPT)
    g = torch.Generator().manual_seed(0)
    img, txt, neg = (torch.randn(9, 5, generator=g).requires_grad_(), torch.randn(9, 5, generator=g).requires_grad_(),
                     torch.randn(9, 1, 5, generator=g).requires_grad_())
    mask = torch.rand(9, 1, generator=g) > 0.3
    norm = [torch.nn.functional.normalize(x, dim=-1) for x in (img, txt, neg)]
    whole = NegCLIPObjective()(dict(zip(("image_features", "text_features", "negative_features"), norm),
                                    logit_scale=torch.tensor(9.0)), {"negative_mask": mask}, DistContext())
    whole.backward()
    assert sum(r["loss"] for r in ranks) / 2 == pytest.approx(whole.item(), rel=1e-5)
    for k, x in enumerate((img, txt, neg)):
        grad = torch.cat([torch.tensor(r["grads"][k]) for r in ranks]) / 2
        assert torch.allclose(grad, x.grad, atol=1e-6), k
    own = [0, 1, 2, 5, 6, 7]
    plain = clip_loss(norm[0][own], norm[1][own], torch.tensor(9.0)).item()
    assert [r["pairs"] for r in ranks] == [2, 1]
    assert sum(r["clip_raw"] for r in ranks) / 2 == pytest.approx(plain, rel=1e-5)


def test_a_training_run_on_shards_with_neighbours_logs_the_pairs_it_found(micro_model, tmp_path):
    """End to end: shards whose json lists `neighbours` (u0..u11 each the sample 4 later, the rest a filtered-out
    uid only), negclip with hard negative images, a metrics line per 2 steps with the pairs found per step."""
    (tmp_path / "shards").mkdir()
    data = write_shards(tmp_path / "shards", neighbour_rows(32), 16)
    assert json.loads(next(_jsons(data.urls[0])))["neighbours"] == ["gone", "u0004"]
    # a one-sample shuffle buffer: the epoch's 4 steps of 8 are exactly the first pass over both shards
    cfg = tiny_cfg(micro_model, objectives=("negclip",), batch_size=8, epochs=1, log_every=2, shuffle_buffer=1,
                   negclip=NegCLIPConfig(neighbour_window=16))
    result = train(cfg, data, str(tmp_path / "run"))
    assert result.steps == 4 and all(math.isfinite(m["loss"]) for m in result.history)
    pairs = [m["negclip_image_pairs"] for m in result.history]  # mean pairs per step over each line's 2 steps
    # 12 of the 32 samples have a neighbour present in the shards: 12 pairs over the epoch's 4 steps
    assert len(pairs) == 2 and sum(pairs) * 2 == pytest.approx(12) and all(0 <= p <= 8 for p in pairs)
    off = tiny_cfg(micro_model, objectives=("negclip",), batch_size=8, epochs=1, log_every=2,
                   negclip=NegCLIPConfig(hard_negative_images=False))
    assert "negclip_image_pairs" not in train(off, data, str(tmp_path / "off")).history[-1]


def _jsons(url):
    import webdataset as wds

    for sample in wds.WebDataset(url, shardshuffle=False):
        yield sample["json"]
