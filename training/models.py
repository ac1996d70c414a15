"""open_clip models: our small configs registered beside open_clip's, the factory, and transforms.

Everything goes through open_clip itself (its configs, transforms and tokenizer), so a checkpoint we
write loads in plain open_clip and our preprocessing is exactly its `preprocess_val`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import AugmentationCfg, PreprocessCfg, image_transform_v2
from torch import nn

CONFIG_DIR = Path(__file__).parent / "model_configs"
"""Our open_clip model configs (JSON), e.g. curaclip-vit-tiny for 64x64 images on a CPU."""

_registered: set[str] = set()


def register_configs(path: str | Path = CONFIG_DIR) -> None:
    """Add a folder (or one JSON file) of model configs to open_clip's registry, once per path."""
    key = str(Path(path).resolve())
    if key not in _registered:
        open_clip.add_model_config(key)
        _registered.add(key)


def resolve_model_name(model: str) -> str:
    """An open_clip model name, registering `model` first when it is the path of a JSON config."""
    register_configs()
    if model.endswith(".json") and Path(model).is_file():
        register_configs(model)
        return Path(model).stem
    if model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model!r}: not a registered name nor a JSON config path")
    return model


def model_context_length(name: str) -> int:
    """The text context length in the model's config."""
    return int(open_clip.get_model_config(resolve_model_name(name))["text_cfg"].get("context_length", 77))


def embed_dim(name: str) -> int:
    """Width of the shared image-text embedding space."""
    return int(open_clip.get_model_config(resolve_model_name(name))["embed_dim"])


def create_model(
    name: str,
    checkpoint: str | None = None,
    context_length: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, Callable, Callable]:
    """(model, preprocess_val, tokenizer) from open_clip; `checkpoint` loads with weights_only=True.

    `context_length` rebuilds the text tower at that length when it differs from the config (open_clip's
    force_context_length); plain open_clip then needs the same override to load the checkpoint.
    """
    name = resolve_model_name(name)
    force = context_length if context_length and context_length != model_context_length(name) else None
    model, _, preprocess_val = open_clip.create_model_and_transforms(
        name,
        pretrained=checkpoint,
        force_context_length=force,
        device=device,
        weights_only=True,
        output_dict=True,
    )
    tokenizer = open_clip.get_tokenizer(name, context_length=force or model_context_length(name))
    return model, preprocess_val, tokenizer


def image_transform(model: nn.Module, train: bool, crop_scale_min: float = 0.8) -> Callable:
    """open_clip's own transform for this model: RandomResizedCrop(scale=(crop_scale_min, 1)) when training,
    otherwise exactly open_clip's preprocess_val."""
    cfg = PreprocessCfg(**unwrap(model).visual.preprocess_cfg)
    aug = AugmentationCfg(scale=(crop_scale_min, 1.0)) if train else None
    return image_transform_v2(cfg, is_train=train, aug_cfg=aug)


@functools.lru_cache(maxsize=8)
def _preprocess_cfg(name: str) -> tuple[tuple[str, Any], ...]:
    model = open_clip.create_model(resolve_model_name(name))
    return tuple(sorted(model.visual.preprocess_cfg.items()))


def transform_for(name: str, train: bool, crop_scale_min: float = 0.8) -> Callable:
    """`image_transform` of a model known by name (the preprocessing config is looked up once)."""
    cfg = PreprocessCfg(**dict(_preprocess_cfg(name)))
    aug = AugmentationCfg(scale=(crop_scale_min, 1.0)) if train else None
    return image_transform_v2(cfg, is_train=train, aug_cfg=aug)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under a DistributedDataParallel (or similar `.module`) wrapper."""
    return model.module if hasattr(model, "module") else model


def _causal_mask(mask: torch.Tensor | None) -> bool:
    """True when `mask` is open_clip's causal text mask: -inf above the diagonal, 0 on and below it."""
    if mask is None or mask.dim() != 2:
        return False
    above = torch.ones_like(mask, dtype=torch.bool).triu(1)
    return bool(torch.isneginf(mask[above]).all() and (mask[~above] == 0).all())


def trims_text(model: nn.Module) -> bool:
    """Whether `encode_text_trimmed` may cut `model`'s text padding: an open_clip `CLIP` whose text tower is
    causal and pools the EOT token (argmax or eos), so no position reads the padding after it."""
    return (isinstance(model, open_clip.CLIP) and getattr(model, "text_pool_type", None) in ("argmax", "eos")
            and _causal_mask(getattr(model, "attn_mask", None)))


def encode_text_trimmed(model: nn.Module, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """open_clip's `CLIP.encode_text` run over the first L positions only, L the batch's longest caption
    (through its last non-padding token).

    Exact, not an approximation: the text tower is causal, so the EOT position it pools never attends to the
    padding after it, and the padding itself is never read. On the synthetic world's captions (at most ~12
    tokens in a 32-token context) this cuts the ALIP caption path's text tower to about a third. Models
    that `trims_text` rejects (other pooling, no causal mask, custom text towers) go to `encode_text`."""
    used = (tokens != 0).int()  # open_clip's tokenizers pad with 0
    length = int(used.shape[1] - used.flip(1).argmax(dim=1).min()) if used.any() else 1
    if length >= tokens.shape[1] or not trims_text(model):
        return model.encode_text(tokens, normalize=normalize)
    text = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = open_clip.transformer.text_global_pool(x, text, model.text_pool_type,
                                               eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection
    return torch.nn.functional.normalize(x, dim=-1) if normalize else x
