"""The embedded `simulated` caption backend: what `make run` uses offline.

It sees only what the model it stands in for would see. As LaCLIP's rewriter it is a text-only LLM: it reads the
caption alone and may reorder, paraphrase, drop or (at its error rate) distort what the caption says, never
correct it, so a wrong alt-text stays wrong. As the `longcap` captioner it stands in for a vision-language model,
so it reads the scene's ground truth (with its error rate), and writes in phrasings of its own that share
nothing with the evaluation's texts. The two halves live apart: the rewriter in :mod:`curation.rewriter` (text
only, no import of the world), the captioner in :mod:`curation.world.captioner` (the world's truth). Without a
scene (real data) the simulated captioner can only paraphrase the alt-text, and says so. Its randomness comes
from (seed, uid) alone, so its output does not depend on batching or partitioning.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from curation import rewriter
from curation.world import captioner


def sample_rng(seed: int, uid: str, stream: int) -> np.random.Generator:
    """A generator that depends only on (seed, uid, stream): independent of batches and workers."""
    digest = int.from_bytes(hashlib.blake2b(uid.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, digest, stream])


@dataclass(frozen=True)
class SimulatedBackend:
    """As a rewriter it reads the caption alone; as a captioner the synthetic world's ground truth, with errors
    injected, and it paraphrases the alt-text where no truth exists. Empty captions come back unchanged."""

    error_rate: float = 0.05
    """probability that a caption (or each rewrite) carries one wrong attribute."""
    name: str = "simulated"

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
                        for j in range(k)] if text.strip() else [])
        return out

    def long_captions(self, uids: list[str], texts: list[str], truths: list[dict | None], seed: int) -> list[str]:
        return [self._caption(uid, text, truth, seed, 1, "long") for uid, text, truth in zip(uids, texts, truths)]

    def short_captions(self, uids: list[str], texts: list[str], truths: list[dict | None], seed: int) -> list[str]:
        return [self._caption(uid, text, truth, seed, 2, "short") for uid, text, truth in zip(uids, texts, truths)]

    def _caption(self, uid: str, text: str, truth: dict | None, seed: int, stream: int, style: str) -> str:
        rng = sample_rng(seed, uid, stream)
        if truth is None:
            if not text.strip():
                return text
            frame = int(rng.integers(len(rewriter.PARAPHRASE_FRAMES)))
            return rewriter.long_paraphrase(text, rng) if style == "long" else rewriter.paraphrase(text, rng, frame)
        return captioner.caption_scene(truth, rng, style, self.error_rate)
