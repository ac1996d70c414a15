from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from training.checkpoints import save_atomic, training_state
from training.config import TrainConfig
from training.models import (
    CONFIG_DIR,
    create_model,
    encode_text_trimmed,
    image_transform,
    resolve_model_name,
    trims_text,
)
from training.objectives import WeightedObjectives
from training.optim import make_optimizer


def test_tiny_config_is_the_cpu_model_the_design_asks_for():
    name = resolve_model_name("curaclip-vit-tiny")
    cfg = open_clip.get_model_config(name)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    assert (vision["image_size"], vision["patch_size"], vision["layers"]) == (64, 8, 4)
    assert (text["context_length"], text["vocab_size"], text["layers"]) == (32, 49408, 4)
    assert (CONFIG_DIR / "curaclip-vit-tiny.json").exists()


def test_rn_tiny_is_an_open_clip_modified_resnet_at_64px():
    from open_clip.modified_resnet import ModifiedResNet

    model, preprocess, tokenizer = create_model("curaclip-rn-tiny")
    assert isinstance(model.visual, ModifiedResNet)
    assert preprocess(Image.new("RGB", (80, 70))).shape == (3, 64, 64)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 64), tokenizer(["a red star", "a blue bone"]))
    assert out["image_features"].shape == out["text_features"].shape == (2, 128)


def test_create_model_gives_model_preprocess_and_offline_tokenizer(micro_model):
    model, preprocess, tokenizer = create_model(micro_model)
    tokens = tokenizer(["a red square", "two blue circles"])
    assert tokens.shape == (2, 16) and tokens.dtype == torch.int64
    assert preprocess(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
    with torch.no_grad():
        assert model.encode_text(tokens).shape == (2, 32)


def test_unknown_model_is_an_error():
    with pytest.raises(ValueError, match="unknown open_clip model"):
        resolve_model_name("no-such-model")


def test_checkpoint_loads_in_plain_open_clip(micro_model, tmp_path):
    torch.manual_seed(0)
    model, _, _ = create_model(micro_model)
    with torch.no_grad():
        model.logit_scale.fill_(3.3)
    cfg = TrainConfig(model=micro_model)
    state = training_state(model, WeightedObjectives(cfg, 32), make_optimizer(model, cfg.optim), cfg, 1, 7, 0)
    path = save_atomic(state, tmp_path / "epoch_1.pt")

    open_clip.add_model_config(Path(micro_model))  # what a user of plain open_clip does with our config
    plain, _, _ = open_clip.create_model_and_transforms(Path(micro_model).stem, pretrained=path)
    ours = model.state_dict()
    assert set(plain.state_dict()) == set(ours)
    assert all(torch.equal(v, ours[k]) for k, v in plain.state_dict().items())
    reloaded, _, _ = create_model(micro_model, checkpoint=path)
    assert reloaded.logit_scale.item() == pytest.approx(3.3)


def test_eval_transform_is_open_clips_preprocess_val(micro_model):
    model, preprocess, _ = create_model(micro_model)
    _, _, plain_val = open_clip.create_model_and_transforms(Path(micro_model).stem)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 37, 3), dtype=np.uint8))
    expected = plain_val(img)
    assert torch.equal(preprocess(img), expected)
    assert torch.equal(image_transform(model, train=False)(img), expected)


def test_train_transform_crops_within_the_scale_range(micro_model):
    model, _, _ = create_model(micro_model)
    transform = image_transform(model, train=True, crop_scale_min=0.8)
    crop = next(t for t in transform.transforms if type(t).__name__ == "RandomResizedCrop")
    assert crop.scale == (0.8, 1.0) and crop.size == (32, 32)
    assert transform(Image.new("RGB", (64, 64))).shape == (3, 32, 32)


def test_context_length_override_rebuilds_the_text_tower(micro_model):
    model, _, tokenizer = create_model(micro_model, context_length=24)
    assert tokenizer(["hi"]).shape == (1, 24)
    assert model.positional_embedding.shape[0] == 24


def test_trimmed_text_encoding_equals_open_clips_with_its_gradients():
    torch.manual_seed(0)
    model, _, tokenizer = create_model("curaclip-rn-tiny")
    tokens = tokenizer(["a red circle", "two blue squares left of a green star on a striped background",
                        "x", "a"])
    longest = int((tokens != 0).sum(1).max())
    assert trims_text(model) and longest < tokens.shape[1]

    def features_and_grads(encode):
        model.zero_grad()
        features = encode(model, tokens)
        (features * torch.arange(features.numel()).reshape(features.shape).sin()).sum().backward()
        return features.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, full_grads = features_and_grads(lambda m, t: m.encode_text(t, normalize=True))
    trimmed, trimmed_grads = features_and_grads(lambda m, t: encode_text_trimmed(m, t, normalize=True))
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-6)
    assert full_grads.keys() == trimmed_grads.keys() and "positional_embedding" in full_grads
    for name, grad in full_grads.items():
        scale = float(grad.abs().max())  # float32 sums in another order: compare to the gradient's size
        torch.testing.assert_close(trimmed_grads[name], grad, rtol=1e-4, atol=1e-5 * scale + 1e-8, msg=name)
    assert full_grads["positional_embedding"][longest:].abs().max() == 0  # padding positions: never read


def test_a_text_tower_without_a_causal_mask_is_not_trimmed():
    torch.manual_seed(0)
    model, _, tokenizer = create_model("curaclip-rn-tiny")
    model.attn_mask = None  # bidirectional: the padding would reach the pooled token
    tokens = tokenizer(["a red circle", "a blue square"])
    assert not trims_text(model)
    torch.testing.assert_close(encode_text_trimmed(model, tokens), model.encode_text(tokens), rtol=0, atol=0)
