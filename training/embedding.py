"""Image and text embeddings from an open_clip model, for the `embed` stage (MLCD clusters image embeddings; the
CLIP-score filter compares image and text embeddings) and for evaluation. Without a checkpoint, the embed stage
first bootstrap-trains a small model on the curated data itself, since no pretrained weights are ever downloaded.

On a GPU the towers run under autocast (bf16 by default: the dtype CLIP models are trained in, with fp32's
range); the embeddings are L2-normalised in fp32 and stored as float16 (halving the artifact; a cosine between
float16 unit vectors of width 512 is within ~1e-3 of the fp32 one, far below the k-means' cluster margins)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

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
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """where each embedding actor runs its model: "auto" is its GPU when Ray gave it one (resources.embed.gpus),
    else the CPU."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """autocast dtype of the towers: "auto" is bf16 on a GPU and fp32 on the CPU (CPU autocast is slower there)."""


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""EmbedConfig.precision -> the autocast dtype ("fp32" runs without autocast)."""


def embed_autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The context the towers run in: autocast at `precision` ("auto": bf16 on a GPU, none on the CPU)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_images(model: nn.Module, preprocess: Callable, images: Sequence[bytes | Image.Image],
                  batch_size: int, precision: str = "fp32") -> np.ndarray:
    """(N, D) float32 L2-normalised image embeddings of encoded image bytes (or PIL images), in eval mode."""
    model.eval()
    device, parts = model_device(model), []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pixels = torch.stack([preprocess(x if isinstance(x, Image.Image) else decode_image(x)) for x in chunk])
        with embed_autocast(precision, device):
            features = model.encode_image(pixels.to(device))  # (B, D)
        parts.append(F.normalize(features.float(), dim=-1).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, embedding_width(model)), np.float32)


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer: Callable, texts: Sequence[str], batch_size: int,
                 precision: str = "fp32") -> np.ndarray:
    """(N, D) float32 L2-normalised text embeddings, in eval mode."""
    model.eval()
    device, parts = model_device(model), []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start:start + batch_size])).to(device)  # (B, L)
        with embed_autocast(precision, device):
            features = encode_text_trimmed(model, tokens)  # (B, D)
        parts.append(F.normalize(features.float(), dim=-1).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, embedding_width(model)), np.float32)


def embedding_width(model: nn.Module) -> int:
    """D of the shared embedding space (the width of the visual tower's output)."""
    return int(model.visual.output_dim)
