"""What the suite needs of a model: image, text and augmented-view embeddings, and a name for its features.

The suite is model-agnostic: a model enters as an :class:`Encoder`. :class:`ClipEncoder` wraps an open_clip
model (ours or any other open_clip checkpoint) with its own preprocessing and tokenizer, batched on the
model's device, optionally under autocast (CLIP_benchmark's ``--amp``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

from training.data import decode_image
from training.models import encode_text_trimmed, image_transform


class Encoder(Protocol):
    """A model as the suite sees it. Embeddings are (N, D) float32; the suite normalises them."""

    identity: str
    """what determines the features (weights, preprocessing, precision): the feature cache's key."""

    def images(self, images: Sequence[bytes]) -> np.ndarray: ...

    def texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def views(self, images: Sequence[bytes], seeds: Sequence[int]) -> np.ndarray:
        """One randomly augmented view of each image, the augmentation seeded by its seed."""
        ...


FEWSHOT_CROP_SCALE = (0.5, 1.0)
"""GDA's training views: RandomResizedCrop(scale=(0.5, 1)) and a horizontal flip (mrflogs/ICLR24
main_few_shots.py ``train_tranform``), at the model's own input size and normalisation."""


class ClipEncoder:
    """An open_clip model with its preprocess and tokenizer; `identity` hashes the checkpoint file's bytes."""

    def __init__(self, model: nn.Module, preprocess: Callable, tokenizer: Callable, *, model_name: str,
                 checkpoint: str | None, batch_size: int = 256, amp: bool = False) -> None:
        self.model, self.preprocess, self.tokenizer = model.eval(), preprocess, tokenizer
        self.batch_size, self.amp = batch_size, amp
        self.device = next(model.parameters()).device
        augment = image_transform(model, train=True, crop_scale_min=FEWSHOT_CROP_SCALE[0])
        self.augment = transforms.Compose([transforms.RandomHorizontalFlip(0.5), augment])
        weights = file_digest(checkpoint) if checkpoint else "random-init"
        self.identity = hashlib.sha256(
            "\n".join([model_name, weights, repr(preprocess), repr(self.augment), f"amp={amp}"]).encode()
        ).hexdigest()[:16]

    def _autocast(self) -> AbstractContextManager:
        if not self.amp:
            return nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.no_grad()
    def _encode_pixels(self, pixels: list[torch.Tensor]) -> np.ndarray:
        with self._autocast():
            out = self.model.encode_image(torch.stack(pixels).to(self.device))  # (B, D)
        return F.normalize(out.float(), dim=-1).cpu().numpy()

    def images(self, images: Sequence[bytes]) -> np.ndarray:
        parts = [self._encode_pixels([self.preprocess(decode_image(x)) for x in images[i:i + self.batch_size]])
                 for i in range(0, len(images), self.batch_size)]
        return np.concatenate(parts)

    def views(self, images: Sequence[bytes], seeds: Sequence[int]) -> np.ndarray:
        parts = []
        for i in range(0, len(images), self.batch_size):
            pixels = []
            for image, seed in zip(images[i:i + self.batch_size], seeds[i:i + self.batch_size], strict=True):
                with torch.random.fork_rng(devices=[]):  # torchvision draws from the global generator
                    torch.manual_seed(int(seed))
                    pixels.append(self.augment(decode_image(image)))
            parts.append(self._encode_pixels(pixels))
        return np.concatenate(parts)

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> np.ndarray:
        parts = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i:i + self.batch_size])).to(self.device)  # (B, L)
            with self._autocast():
                out = encode_text_trimmed(self.model, tokens)
            parts.append(F.normalize(out.float(), dim=-1).cpu().numpy())
        return np.concatenate(parts)


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes (a checkpoint renamed or copied keeps its features; one retrained does not)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
