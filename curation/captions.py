"""Caption backends for the `rewrite` and `longcap` stages: one protocol, a registry, and the
embedded `simulated` backend.

- `rewrite` follows LaCLIP ("Improving CLIP Training with Language Rewrites", Fan et al. 2023):
  an LLM rewrites each caption k times; the rewrites keep the caption's concepts and change its
  wording, and training samples one of them per step as text augmentation.
- `longcap` follows DreamLIP ("DreamLIP: Language-Image Pre-training with Long Captions",
  Zheng et al. 2024): a multimodal model writes a detailed multi-sentence caption; and ALIP
  ("ALIP: Adaptive Language-Image Pre-training with Synthetic Caption", Yang et al. 2023): a
  short synthetic caption beside the raw alt-text.

The simulated backend writes from the synthetic world's ground truth with a configurable rate of
wrong attributes, and paraphrases lexically where no truth exists. Its randomness comes from
(seed, uid) alone, so its output does not depend on batching or partitioning.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa

from curation.alttext import BACKGROUND_PHRASES, articles, describe
from curation.synthetic import COLOURS, SHAPES


class CaptionBackend(Protocol):
    """Writes captions for a batch of samples. Every method returns one result per input, in order;
    a sample the backend fails on (timeout, refusal, bad output) gets its original caption back."""

    name: str
    """Stated in manifests and reports ('simulated', 'openai', 'transformers')."""

    def rewrite(self, uids: list[str], texts: list[str], truths: list[dict | None], k: int,
                seed: int) -> list[list[str]]:
        """k rewrites of each caption (LaCLIP)."""

    def long_captions(self, uids: list[str], images: list[bytes], texts: list[str],
                      truths: list[dict | None], seed: int) -> list[str]:
        """A detailed caption of several sentences per image (DreamLIP)."""

    def short_captions(self, uids: list[str], images: list[bytes], texts: list[str],
                       truths: list[dict | None], seed: int) -> list[str]:
        """One short faithful sentence per image (ALIP's synthetic caption)."""


@dataclass(frozen=True)
class RewriteConfig:
    """Configuration of the `rewrite` stage (LaCLIP)."""

    backend: str = "simulated"
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

    backend: str = "simulated"
    """caption backend, a key of BACKENDS."""
    error_rate: float = 0.05
    """simulated backend: probability that a caption carries a wrong attribute."""
    batch_size: int = 256
    """samples per backend call."""


def sample_rng(seed: int, uid: str, stream: int) -> np.random.Generator:
    """A generator that depends only on (seed, uid, stream): independent of batches and workers."""
    digest = int.from_bytes(hashlib.blake2b(uid.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, digest, stream])


INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

REWRITE_TEMPLATES: tuple[str, ...] = (
    "a {desc}", "a picture of a {desc}", "an image showing a {desc}", "there is a {desc} in this picture",
    "a simple drawing of a {desc}", "this is a {desc}", "a {desc}, shown clearly", "a close view of a {desc}",
)
"""Frames of a truth-based rewrite; each of the k rewrites of a sample uses a different one."""

PARAPHRASE_FRAMES: tuple[str, ...] = (
    "{t}", "a picture of {t}", "an image showing {t}", "this image shows {t}", "{t}, as seen in the image",
    "a photo with {t}",
)
"""Frames of a lexical paraphrase (text without ground truth)."""

SYNONYMS: dict[str, tuple[str, ...]] = {
    "photo": ("picture", "image", "snapshot"), "picture": ("photo", "image"), "image": ("picture", "photo"),
    "small": ("little", "tiny"), "large": ("big", "huge"), "big": ("large",), "little": ("small",),
    "drawing": ("sketch", "illustration"), "shows": ("depicts", "displays"), "with": ("featuring",),
    "beautiful": ("lovely", "pretty"), "free": ("complimentary",), "buy": ("purchase",),
}
"""Word substitutions of the lexical paraphraser."""


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def mentioned_concepts(text: str, truth: dict) -> dict:
    """The part of a scene that a caption states truly: objects whose shape it names (with the
    colour, size and texture it also names, else None), relations between two such objects that
    it names, and the background if named. What a text-only rewriter may keep (LaCLIP)."""
    words, lower = _words(text), text.lower()
    keep = [i for i, o in enumerate(truth["objects"]) if o["shape"] in words]
    objects = [{attr: (o[attr] if attr == "shape" or o[attr] in words else None)
                for attr in ("shape", "colour", "size", "texture")} for o in (truth["objects"][i] for i in keep)]
    relations = [{"subject": keep.index(r["subject"]), "relation": r["relation"], "object": keep.index(r["object"])}
                 for r in truth["relations"]
                 if r["subject"] in keep and r["object"] in keep and r["relation"] in lower]
    bg = truth["background"]
    named_bg = bg in words and (bg not in COLOURS or "background" in words)
    return {"objects": objects, "relations": relations, "background": bg if named_bg else None}


def corrupt(scene: dict, rng: np.random.Generator, index: int | None = None,
            avoid: frozenset[str] = frozenset()) -> dict:
    """A copy of a scene with one wrong attribute of one object (a hallucination): its colour becomes
    one absent from the scene (and from `avoid`), or its shape when the colour is unknown."""
    out = copy.deepcopy(scene)
    if not out["objects"]:
        return out
    obj = out["objects"][int(rng.integers(len(out["objects"]))) if index is None else index]
    attr, vocab = ("colour", COLOURS) if obj.get("colour") is not None else ("shape", SHAPES)
    present = {o.get(attr) for o in out["objects"]} | {out.get("background")} | avoid
    choices = [v for v in vocab if v not in present]
    obj[attr] = choices[int(rng.integers(len(choices)))]
    return out


def _phrase(obj: dict) -> str:
    texture = obj.get("texture") if obj.get("texture") != "solid" else None
    return " ".join(w for w in (obj.get("size"), texture, obj.get("colour"), obj["shape"]) if w)


def _content(concepts: dict, rng: np.random.Generator) -> str:
    """'red star left of a blue circle on grass' from kept concepts; relations may be inverted."""
    objects, parts, named = concepts["objects"], [], set()
    for r in concepts["relations"]:
        a, rel, b = r["subject"], r["relation"], r["object"]
        if rng.random() < 0.5:
            a, rel, b = b, INVERSE_RELATION[rel], a
        parts.append(f"{_phrase(objects[a])} {rel} a {_phrase(objects[b])}")
        named |= {a, b}
    parts += [_phrase(o) for i, o in enumerate(objects) if i not in named]
    text = " and a ".join(parts)
    if concepts["background"]:
        text += " on " + BACKGROUND_PHRASES[concepts["background"]]
    return text


FRAME_PREFIX = re.compile(r"^(an?|the)\s+(photo|picture|image|drawing|snapshot)\s+(of|showing|with)\s+", re.I)


def paraphrase(text: str, rng: np.random.Generator, frame: int) -> str:
    """Lexical paraphrase: synonyms for known words, re-framed by one of PARAPHRASE_FRAMES."""
    def swap(match: re.Match) -> str:
        word = match.group(0)
        options = SYNONYMS.get(word.lower())
        return options[int(rng.integers(len(options)))] if options and rng.random() < 0.7 else word

    body = FRAME_PREFIX.sub("", text.strip().rstrip("."))
    if body[:1].isupper() and body[1:2].islower():  # 'Buy ...' -> 'buy ...', but 'IMG_2034' stays
        body = body[0].lower() + body[1:]
    body = re.sub(r"[A-Za-z]+", swap, body)
    return articles(PARAPHRASE_FRAMES[frame % len(PARAPHRASE_FRAMES)].format(t=body))


def _truth_rewrites(text: str, truth: dict, k: int, error_rate: float, rng: np.random.Generator
                    ) -> list[str] | None:
    """k rewrites of what the caption says truly, each in another frame; None if it says nothing true."""
    concepts = mentioned_concepts(text, truth)
    if not concepts["objects"]:
        return None
    frames = rng.permutation(len(REWRITE_TEMPLATES))
    in_scene = frozenset(v for o in truth["objects"] for v in (o["shape"], o["colour"]))
    out = []
    for j in range(k):
        scene = corrupt(concepts, rng, avoid=in_scene) if rng.random() < error_rate else concepts
        out.append(articles(REWRITE_TEMPLATES[frames[j % len(frames)]].format(desc=_content(scene, rng))))
    return out


def _long_paraphrase(text: str, rng: np.random.Generator) -> str:
    """Three sentences built from the text alone (no image understanding without truth)."""
    first, second = paraphrase(text, rng, 3), paraphrase(text, rng, int(rng.integers(1, 3)))
    original = text.strip().rstrip(".")
    return f"{first[0].upper() + first[1:]}. In short, {second}. The original caption reads: {original}."


@dataclass(frozen=True)
class SimulatedBackend:
    """The embedded caption backend: ground truth with injected errors on the synthetic world,
    lexical paraphrase elsewhere. Empty captions come back unchanged (nothing to rewrite)."""

    error_rate: float = 0.05
    """probability that a caption (or each rewrite) carries one wrong attribute."""
    name: str = "simulated"
    """what manifests and reports call this backend."""

    def rewrite(self, uids: list[str], texts: list[str], truths: list[dict | None], k: int,
                seed: int) -> list[list[str]]:
        out = []
        for uid, text, truth in zip(uids, texts, truths, strict=True):
            rng = sample_rng(seed, uid, 0)
            rewrites = _truth_rewrites(text, truth, k, self.error_rate, rng) if truth else None
            if rewrites is None:
                frames = rng.permutation(len(PARAPHRASE_FRAMES))
                rewrites = [paraphrase(text, rng, int(frames[j % len(frames)])) if text.strip() else text
                            for j in range(k)]
            out.append(rewrites)
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
            frame = int(rng.integers(len(PARAPHRASE_FRAMES)))
            return _long_paraphrase(text, rng) if style == "long" else paraphrase(text, rng, frame)
        # short captions describe objects[0], so that is where a short caption's error must land
        wrong = rng.random() < self.error_rate
        scene = corrupt(truth, rng, 0 if style == "short" else None) if wrong else truth
        return describe(scene, rng, style)


BACKENDS: dict[str, Callable[..., CaptionBackend]] = {"simulated": SimulatedBackend}
"""Caption backends by name; each is called with error_rate=..."""


def make_backend(name: str, error_rate: float) -> CaptionBackend:
    """The backend registered under `name`."""
    if name not in BACKENDS:
        raise ValueError(f"unknown caption backend {name!r}; choose from {sorted(BACKENDS)}")
    return BACKENDS[name](error_rate=error_rate)


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, max(batch_size, 1))]


def rewrite_table(table: pa.Table, truths: list[dict | None], cfg: RewriteConfig, seed: int) -> pa.Table:
    """`table` (uid, text, ...) with a `rewrites` list<string> column: cfg.k rewrites per row."""
    backend = make_backend(cfg.backend, cfg.error_rate)
    uids, texts = table.column("uid").to_pylist(), table.column("text").to_pylist()
    rewrites: list[list[str]] = []
    for part in _batches(table.num_rows, cfg.batch_size):
        got = backend.rewrite(uids[part], texts[part], truths[part], cfg.k, seed)
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
