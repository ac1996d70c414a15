"""Image and text embeddings from an open_clip model, for the `embed` stage (MLCD clusters image embeddings)
and for evaluation. Without a checkpoint, the embed stage first bootstrap-trains a small model on the
curated data itself, since no pretrained weights are ever downloaded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from training.data import decode_image
from training.models import encode_text_trimmed


@dataclass(frozen=True)
class EmbedConfig:
    """The `embed` stage: which open_clip model embeds the curated samples."""

    model: str = "curaclip-vit-tiny"
    """open_clip model name or JSON model config path."""
    checkpoint: str | None = None
    """open_clip checkpoint to embed with; None bootstrap-trains `model` on the curated data first."""
    bootstrap_epochs: int = 1
    """epochs of the bootstrap training (one pass over ~8-10k curated samples: ~60-70 s on 2 CPU cores)."""
    batch_size: int = 256
    """images or texts per forward pass when embedding."""


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_images(model: nn.Module, preprocess: Callable, images: Sequence[bytes | Image.Image],
                  batch_size: int) -> np.ndarray:
    """(N, D) float32 L2-normalised image embeddings of encoded image bytes (or PIL images), in eval mode."""
    model.eval()
    device, parts = model_device(model), []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pixels = torch.stack([preprocess(x if isinstance(x, Image.Image) else decode_image(x)) for x in chunk])
        parts.append(F.normalize(model.encode_image(pixels.to(device)).float(), dim=-1).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, embedding_width(model)), np.float32)


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer: Callable, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """(N, D) float32 L2-normalised text embeddings, in eval mode."""
    model.eval()
    device, parts = model_device(model), []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start:start + batch_size])).to(device)  # (B, L)
        parts.append(F.normalize(encode_text_trimmed(model, tokens).float(), dim=-1).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, embedding_width(model)), np.float32)


def embedding_width(model: nn.Module) -> int:
    """D of the shared embedding space (the width of the visual tower's output)."""
    return int(model.visual.output_dim)
