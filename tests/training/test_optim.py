import math

import pytest
import torch

from training.config import OptimConfig
from training.models import create_model
from training.optim import MAX_LOGIT_SCALE, clamp_logit_scales, cosine_lr, make_optimizer, param_groups

from .conftest import train_config


def test_no_decay_on_biases_norms_embeddings_vectors_and_temperature(micro_model):
    model, _, _ = create_model(micro_model)
    no_decay, decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert "logit_scale" in skipped
    assert all(n.endswith("bias") or "ln" in n or model.get_parameter(n).ndim < 2 for n in skipped)
    assert any(n.endswith(".bias") for n in skipped) and any("ln_" in n for n in skipped)
    assert not any(n.endswith("bias") or "ln_" in n or "logit_scale" in n for n in decayed)
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in decayed
    assert skipped | decayed == {n for n, _ in model.named_parameters()}


def test_optimizer_uses_the_config(micro_model):
    model, _, _ = create_model(micro_model)
    cfg = OptimConfig(lr=3e-4, weight_decay=0.05, beta2=0.95)
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.05]
    assert opt.param_groups[0]["lr"] == 3e-4 and opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_cosine_schedule_warms_up_then_decays():
    lrs = [cosine_lr(s, 1.0, 10, 110, 0.1) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert cosine_lr(110, 1.0, 10, 110, 0.1) == pytest.approx(0.1)


def test_logit_scale_is_clamped_at_ln_100(micro_model):
    model, _, _ = create_model(micro_model)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    clamp_logit_scales(model)
    assert model.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE) == pytest.approx(math.log(100))
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    clamp_logit_scales(model)
    assert model.logit_scale.item() == 0.0


def test_unknown_optimizer_is_refused(micro_model):
    model, _, _ = create_model(micro_model)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(model, OptimConfig(optimizer="sgd"))


def test_lion_step_is_the_papers_update():
    from training.optim import Lion

    theta = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    opt = Lion([{"params": [theta], "weight_decay": 0.1}], lr=0.01, betas=(0.9, 0.99))
    momentum = torch.tensor([0.0, 0.0, 0.0, 0.0])
    expected = theta.detach().clone()
    for grad in ([0.3, -0.1, 0.0, 2.0], [-0.5, -0.2, 0.4, 1.0]):
        g = torch.tensor(grad)
        theta.grad = g.clone()
        opt.step()
        c = 0.9 * momentum + 0.1 * g
        expected = expected - 0.01 * (torch.sign(c) + 0.1 * expected)
        momentum = 0.99 * momentum + 0.01 * g
        assert torch.allclose(theta.detach(), expected, atol=1e-7)
        assert torch.allclose(opt.state[theta]["exp_avg"], momentum, atol=1e-7)
    assert theta.detach()[2] != 0.5  # sign(0) = 0 on the first step, then the momentum moves it


def test_lion_keeps_the_no_decay_groups(micro_model):
    model, _, _ = create_model(micro_model)
    opt = make_optimizer(model, OptimConfig(optimizer="lion", lr=2e-4, weight_decay=1.0, beta2=0.99))
    assert type(opt).__name__ == "Lion" and [g["weight_decay"] for g in opt.param_groups] == [0.0, 1.0]
    assert opt.param_groups[0]["betas"] == (0.9, 0.99) and opt.param_groups[1]["lr"] == 2e-4


def test_lion_takes_its_papers_defaults_when_lr_and_decay_are_unset(micro_model):
    """Chen et al. 2023 ("Symbolic Discovery of Optimization Algorithms"): betas (0.9, 0.99), and an lr 3-10x
    smaller and a weight decay 3-10x larger than AdamW's; unset values take AdamW's / 5 and x 5."""
    from training.optim import ADAMW_DEFAULTS, optimizer_settings

    model, _, _ = create_model(micro_model)
    opt = make_optimizer(model, OptimConfig(optimizer="lion"))
    assert opt.param_groups[1]["betas"] == (0.9, 0.99)
    assert opt.param_groups[1]["lr"] == pytest.approx(ADAMW_DEFAULTS["lr"] / 5)
    assert opt.param_groups[1]["weight_decay"] == pytest.approx(ADAMW_DEFAULTS["weight_decay"] * 5)
    adamw = optimizer_settings(OptimConfig())
    lion = optimizer_settings(OptimConfig(optimizer="lion"))
    assert 3 <= adamw.lr / lion.lr <= 10 and 3 <= lion.weight_decay / adamw.weight_decay <= 10
    assert (adamw.beta1, adamw.beta2) == (0.9, 0.98)
    # a value the user sets is kept as set, whatever the optimiser
    assert optimizer_settings(OptimConfig(optimizer="lion", lr=1e-5)).lr == 1e-5
    assert optimizer_settings(OptimConfig(optimizer="lion", weight_decay=0.0)).weight_decay == 0.0


def test_the_train_result_records_the_optimiser_settings_used(micro_model, colour_table, tmp_path):
    from training.loop import train

    cfg = train_config(model=micro_model, epochs=1, batch_size=16, warmup_steps=1, optimizer="lion", workers=0)
    result = train(cfg, colour_table.slice(0, 32), str(tmp_path))
    assert result.optimizer == {"name": "lion", "lr": pytest.approx(2e-4), "weight_decay": pytest.approx(0.5),
                                "beta1": 0.9, "beta2": 0.99, "eps": 1e-6}
