"""Caption backends for the `rewrite` and `longcap` stages: one protocol, a registry, and the
embedded `simulated` backend.

- `rewrite` follows LaCLIP ("Improving CLIP Training with Language Rewrites", Fan et al. 2023):
  an LLM rewrites each caption k times; the rewrites keep the caption's concepts and change its
  wording, and training samples one of them per step as text augmentation.
- `longcap` follows DreamLIP ("DreamLIP: Language-Image Pre-training with Long Captions",
  Zheng et al. 2024): a multimodal model writes a detailed multi-sentence caption; and ALIP
  ("ALIP: Adaptive Language-Image Pre-training with Synthetic Caption", Yang et al. 2023): a
  short synthetic caption beside the raw alt-text.

The simulated backend sees only what the model it stands in for would see. As LaCLIP's rewriter it is a
text-only LLM: it reads the caption alone and may reorder, paraphrase, drop or (at its error rate) distort
what the caption says, never correct it, so a wrong alt-text stays wrong. As the `longcap` captioner it
stands in for a vision-language model, so it reads the scene's ground truth (with its error rate), and
writes in phrasings of its own that share nothing with the evaluation's texts. The two halves live apart: the
rewriter in :mod:`curation.rewriter` (text only, no import of the world), the captioner in
:mod:`curation.world.captioner` (the world's truth).
Without a scene (real data) the simulated captioner can only paraphrase the alt-text, and says so. Its
randomness comes from (seed, uid) alone, so its output does not depend on batching or partitioning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa

from curation import rewriter
from curation.world import captioner


class CaptionBackend(Protocol):
    """Writes captions for a batch of samples. Every method returns one result per input, in order;
    a sample the backend fails on (timeout, refusal, bad output) gets its original caption back."""

    name: str
    """Stated in manifests and reports ('simulated', 'openai', 'transformers')."""

    def describe(self, stage: str) -> dict:
        """What manifests and reports say of this backend in `stage`: its name, whether it is simulated, and
        what it could see."""

    def rewrite(self, uids: list[str], texts: list[str], k: int, seed: int) -> list[list[str]]:
        """k rewrites of each caption (LaCLIP), from the caption alone: a text-only model gets no image."""

    def long_captions(self, uids: list[str], images: list[bytes], texts: list[str],
                      truths: list[dict | None], seed: int) -> list[str]:
        """A detailed caption of several sentences per image (DreamLIP)."""

    def short_captions(self, uids: list[str], images: list[bytes], texts: list[str],
                       truths: list[dict | None], seed: int) -> list[str]:
        """One short faithful sentence per image (ALIP's synthetic caption)."""


BackendName = Literal["simulated"]
"""Caption backends a config may name (the keys of BACKENDS; a test keeps the two equal)."""


@dataclass(frozen=True)
class RewriteConfig:
    """Configuration of the `rewrite` stage (LaCLIP)."""

    backend: BackendName = "simulated"
    """caption backend, a key of BACKENDS."""
    k: int = 3
    """rewrites per sample (LaCLIP rewrites with 4 sources: ChatGPT, Bard, MSCOCO, human)."""
    error_rate: float = 0.05
    """simulated backend: probability that a rewrite carries a wrong attribute (hallucination)."""
    batch_size: int = 256
    """samples per backend call."""


@dataclass(frozen=True)
class LongcapConfig:
    """Configuration of the `longcap` stage (DreamLIP long captions, ALIP short synthetic captions)."""

    backend: BackendName = "simulated"
    """caption backend, a key of BACKENDS."""
    error_rate: float = 0.05
    """simulated backend: probability that a caption carries a wrong attribute."""
    batch_size: int = 256
    """samples per backend call."""


STAGE_SEEDS: dict[str, int] = {"rewrite": 1, "longcap": 2}
"""The seed each caption stage draws its per-sample randomness from (with the uid), so the two stages'
outputs are independent."""


def sample_rng(seed: int, uid: str, stream: int) -> np.random.Generator:
    """A generator that depends only on (seed, uid, stream): independent of batches and workers."""
    digest = int.from_bytes(hashlib.blake2b(uid.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, digest, stream])


@dataclass(frozen=True)
class SimulatedBackend:
    """The embedded caption backend. As a rewriter it reads the caption alone (a text-only LLM); as a
    captioner it reads the synthetic world's ground truth (a VLM looking at the image), with errors injected,
    and paraphrases the alt-text where no truth exists. Empty captions come back unchanged."""

    error_rate: float = 0.05
    """probability that a caption (or each rewrite) carries one wrong attribute."""
    name: str = "simulated"
    """what manifests and reports call this backend."""

    def describe(self, stage: str) -> dict:
        sees = {"rewrite": "the caption text only (stand-in for a text-only LLM)",
                "longcap": "the synthetic scene's ground truth where the source has one (stand-in for a "
                           "vision-language model looking at the image), else the alt-text only"}[stage]
        return {"name": self.name, "simulated": True, "sees": sees, "error_rate": self.error_rate}

    def rewrite(self, uids: list[str], texts: list[str], k: int, seed: int) -> list[list[str]]:
        out = []
        for uid, text in zip(uids, texts, strict=True):
            rng = sample_rng(seed, uid, 0)
            frames = rng.permutation(len(rewriter.PARAPHRASE_FRAMES))
            out.append([rewriter.rewrite_caption(text, rng, int(frames[j % len(frames)]), self.error_rate)
                        if text.strip() else text for j in range(k)])
        return out

    def long_captions(self, uids: list[str], images: list[bytes], texts: list[str],
                      truths: list[dict | None], seed: int) -> list[str]:
        return [self._caption(uid, text, truth, seed, 1, "long")
                for uid, text, truth in zip(uids, texts, truths, strict=True)]

    def short_captions(self, uids: list[str], images: list[bytes], texts: list[str],
                       truths: list[dict | None], seed: int) -> list[str]:
        return [self._caption(uid, text, truth, seed, 2, "short")
                for uid, text, truth in zip(uids, texts, truths, strict=True)]

    def _caption(self, uid: str, text: str, truth: dict | None, seed: int, stream: int, style: str) -> str:
        rng = sample_rng(seed, uid, stream)
        if truth is None:
            if not text.strip():
                return text
            frame = int(rng.integers(len(rewriter.PARAPHRASE_FRAMES)))
            return rewriter.long_paraphrase(text, rng) if style == "long" else rewriter.paraphrase(text, rng, frame)
        return captioner.caption_scene(truth, rng, style, self.error_rate)


BACKENDS: dict[str, Callable[..., CaptionBackend]] = {"simulated": SimulatedBackend}
"""Caption backends by name; each is called with error_rate=..."""


def make_backend(name: str, error_rate: float) -> CaptionBackend:
    """The backend registered under `name`."""
    if name not in BACKENDS:
        raise ValueError(f"unknown caption backend {name!r}; choose from {sorted(BACKENDS)}")
    return BACKENDS[name](error_rate=error_rate)


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, max(batch_size, 1))]


def rewrite_table(table: pa.Table, cfg: RewriteConfig, seed: int) -> pa.Table:
    """`table` (uid, text, ...) with a `rewrites` list<string> column: cfg.k rewrites per row, from the text
    alone (LaCLIP's rewriter is a text-only LLM; no scene truth is passed)."""
    backend = make_backend(cfg.backend, cfg.error_rate)
    uids, texts = table.column("uid").to_pylist(), table.column("text").to_pylist()
    rewrites: list[list[str]] = []
    for part in _batches(table.num_rows, cfg.batch_size):
        got = backend.rewrite(uids[part], texts[part], cfg.k, seed)
        if len(got) != len(uids[part]) or any(len(r) != cfg.k for r in got):
            raise RuntimeError(f"backend {backend.name!r} broke the protocol: wrong number of rewrites")
        rewrites += got
    return table.append_column("rewrites", pa.array(rewrites, type=pa.list_(pa.string())))


def longcap_table(table: pa.Table, truths: list[dict | None], cfg: LongcapConfig, seed: int) -> pa.Table:
    """`table` (uid, text, image, ...) with `long_caption` (DreamLIP) and `synthetic_caption` (ALIP)."""
    backend = make_backend(cfg.backend, cfg.error_rate)
    uids, texts = table.column("uid").to_pylist(), table.column("text").to_pylist()
    images = table.column("image").to_pylist()
    long, short = [], []
    for part in _batches(table.num_rows, cfg.batch_size):
        args = (uids[part], images[part], texts[part], truths[part], seed)
        long += backend.long_captions(*args)
        short += backend.short_captions(*args)
    if len(long) != table.num_rows or len(short) != table.num_rows:
        raise RuntimeError(f"backend {backend.name!r} broke the protocol: wrong number of captions")
    return (table.append_column("long_caption", pa.array(long, type=pa.string()))
            .append_column("synthetic_caption", pa.array(short, type=pa.string())))
