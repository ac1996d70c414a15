"""Image features computed once per (model, preprocessing, dataset) and kept on disk.

Several tasks on one dataset share one encoding; a second `curaclip eval` (or the eval stage rerun with other
task settings) of the same checkpoint on the same files reads them back. The key is the encoder's identity
(checkpoint bytes, model config, preprocessing, precision) and the dataset's fingerprint (its files' names,
sizes and times, or the seeds of a synthetic set); a set without a fingerprint is never cached. Few-shot
augmented views are kept per row, so later draws encode only the rows no earlier draw used.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from eval import metrics
from eval.encoders import Encoder

FEATURES_VERSION = 1
"""Bumped when what a cached file holds changes."""


class FeatureCache:
    """Unit-row features under `root` (None: in memory only, for this process)."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = None if root is None else Path(root)
        self._memory: dict[str, np.ndarray] = {}

    def _path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        if key in self._memory:
            return self._memory[key]
        path = self._path(key)
        if path is None or not path.exists():
            return None
        self._memory[key] = np.load(path, allow_pickle=False)
        return self._memory[key]

    def store(self, key: str, value: np.ndarray) -> np.ndarray:
        self._memory[key] = value
        if (path := self._path(key)) is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, value, allow_pickle=False)
            os.replace(tmp, path)  # a reader sees the old file or the whole new one
        return value

    def image_features(self, encoder: Encoder, fingerprint: str, images: Sequence[bytes],
                       batch_size: int) -> np.ndarray:
        """(N, D) unit rows of every image of a set, from the cache when its fingerprint is known."""
        key = feature_key(encoder.identity, fingerprint, "images") if fingerprint else None
        if key is not None and (cached := self.load(key)) is not None and len(cached) == len(images):
            return cached
        features = encode_batched(encoder.images, images, batch_size)
        return self.store(key, features) if key is not None else features

    def view_features(self, encoder: Encoder, fingerprint: str, images: Sequence[bytes], views: int,
                      seed: int) -> Callable[[np.ndarray], np.ndarray]:
        """A function of row indices into `images` -> (views, R, D) unit rows of their augmented views; view v
        of row r is seeded by (seed, r, v), so a row's views are the same whichever draw asks first."""
        key = feature_key(encoder.identity, fingerprint, f"views-{views}-{seed}") if fingerprint else None
        bank: dict[int, np.ndarray] = {}  # row -> (views, D)
        if key is not None and (rows := self.load(f"{key}-rows")) is not None:
            if (cached := self.load(f"{key}-views")) is not None and len(cached) == len(rows):
                bank = dict(zip(rows.tolist(), cached, strict=True))

        def lookup(rows: np.ndarray) -> np.ndarray:
            missing = [int(r) for r in rows if int(r) not in bank]
            if missing:
                picked = [images[r] for r in missing for _ in range(views)]
                seeds = [view_seed(seed, r, v) for r in missing for v in range(views)]
                out = metrics.normalize(encoder.views(picked, seeds)).reshape(len(missing), views, -1)
                bank.update(zip(missing, out, strict=True))
                if key is not None:  # views first: a reader pairs rows with views only when the lengths agree
                    done = sorted(bank)
                    self.store(f"{key}-views", np.stack([bank[row] for row in done]))
                    self.store(f"{key}-rows", np.asarray(done, dtype=np.int64))
            return np.stack([bank[int(r)] for r in rows], axis=1)  # (views, R, D)

        return lookup


def feature_key(identity: str, fingerprint: str, what: str) -> str:
    return hashlib.sha256(f"{FEATURES_VERSION}|{identity}|{fingerprint}|{what}".encode()).hexdigest()[:24]


def view_seed(seed: int, row: int, view: int) -> int:
    """A 63-bit seed of view `view` of row `row`."""
    return int(np.random.default_rng([seed, row, view]).integers(2**63 - 1))


def encode_batched(encode: Callable[[Sequence], np.ndarray], items: Sequence, batch_size: int) -> np.ndarray:
    """Run an encoder over items in batches; returns (N, D) float32 with unit rows."""
    if len(items) == 0:
        raise ValueError("nothing to encode")
    parts = [np.asarray(encode(items[i:i + batch_size])) for i in range(0, len(items), batch_size)]
    return metrics.normalize(np.concatenate(parts))
