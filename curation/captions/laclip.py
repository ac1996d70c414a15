"""LaCLIP's rewrite prompts and the cleaning of what a model answers.

LaCLIP ("Improving CLIP Training with Language Rewrites", Fan et al. 2023) rewrites each caption by in-context
learning: an instruction line, three `source => target` pairs drawn without replacement from one example pool
(``curation.captions.laclip_pools``), and the caption followed by `` =>`` for the model to complete. The
authors' rewrite/llama_rewrite.py ``main()`` builds exactly this string (blank lines between the blocks),
samples with temperature 0.9, top-p 0.95 and at most 77 new tokens, and keeps the continuation's first line,
stripped. Deliberate differences, each for a reason:

- their literal indents every line after the instruction by the 12 spaces of the code around it; the prompt here
  has no indentation (it is an artefact of the source, and the first line of the answer is the same either way);
- the caption's whitespace runs (newlines included) become one space, where they delete newlines (which glues
  two words together);
- the examples are drawn from a generator seeded per (seed, uid, rewrite), not the process-wide ``random``,
  so a prompt does not depend on batching or order;
- their `coco` branch draws two of an image's five captions; our `coco` pool holds fixed pairs;
- no token-based truncation of long prompts (theirs needs LLaMA's tokenizer; the backends cap prompts);
- chat models answer with preambles ("Sure! Here is a rewrite:") and quotes, which :func:`clean_rewrite`
  removes before it takes the first line; it also rejects empty, unchanged and one-word answers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from curation.captions.laclip_pools import POOLS

SEPARATOR = " => "
"""Between an example's source and target (LaCLIP's ``{} => {}``)."""

PREAMBLES: tuple[re.Pattern[str], ...] = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"^(?:sure(?: thing)?|certainly|of course|absolutely|okay|alright|great)\s*[!.,:]+\s*",  # "Sure!", "Certainly,"
    r"^here(?:'s|\u2019s| is| are)\b[^\n:]*:\s*",  # "Here's a rewrite:", "Here is a rewritten caption:"
    r"^(?:[a-z]+\s+){0,2}?(?:caption|rewrite|rewritten|rephrased|paraphrase|version|output|answer)\s*\d*\s*:\s*",
    r"^=>\s*",  # a base model that repeats the separator
))
"""Openings a chat model puts before its rewrite, removed (repeatedly, in any order) by :func:`strip_preamble`."""
QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}
"""Opening quote -> closing quote of a rewrite wrapped in quotes."""
FINAL_PUNCTUATION = ".!?,;:\u2026"
"""Ignored at a caption's end when comparing a rewrite with its source."""


def build_prompt(caption: str, pool: Sequence[tuple[str, str]], rng: np.random.Generator, instruction: str,
                 examples: int = 3) -> str:
    """LaCLIP's in-context prompt: `instruction`, `examples` pairs drawn without replacement from `pool`, then
    the caption and `` =>``, the blocks separated by a blank line (llama_rewrite.py ``main()``, undented)."""
    if not 0 <= examples <= len(pool):
        raise ValueError(f"examples must be in [0, {len(pool)}] for a pool of {len(pool)} pairs, got {examples}")
    chosen = rng.choice(len(pool), size=examples, replace=False)
    blocks = [instruction, *(f"{pool[i][0]}{SEPARATOR}{pool[i][1]}" for i in chosen)]
    blocks.append(" ".join(caption.split()) + SEPARATOR.rstrip())
    return "\n\n".join(blocks)


def prompt_rng(seed: int, uid: str, j: int) -> np.random.Generator:
    """The generator of rewrite `j` of sample `uid`: a function of (seed, uid, j) alone, whatever the batching."""
    digest = int.from_bytes(hashlib.blake2b(uid.encode("utf-8"), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, digest, j])


def rewrite_prompts(uid: str, caption: str, k: int, pools: Sequence[str], seed: int, instruction: str,
                    examples: int) -> list[str]:
    """The k prompts of one caption; rewrite j draws its examples from pool ``pools[j % len(pools)]``
    (LaCLIP rewrites every caption once per pool)."""
    if not pools:
        raise ValueError("at least one example pool is needed")
    unknown = [name for name in pools if name not in POOLS]
    if unknown:
        raise ValueError(f"unknown example pool(s) {unknown}; known: {sorted(POOLS)}")
    return [build_prompt(caption, POOLS[pools[j % len(pools)]], prompt_rng(seed, uid, j), instruction, examples)
            for j in range(k)]


def _unquote(text: str) -> str:
    while len(text) >= 2 and QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


def strip_preamble(text: str) -> str:
    """`text` without a chat model's opening ("Sure, here is a rewritten caption:", "Rewritten caption:"),
    a leading ``=>`` and the quotes around it."""
    text = text.strip()
    previous = None
    while text != previous:
        previous = text
        for pattern in PREAMBLES:
            text = pattern.sub("", text, count=1).strip()
        text = _unquote(text)
    return text


def _normalise(text: str) -> str:
    return " ".join(text.split()).lower().rstrip(FINAL_PUNCTUATION).rstrip()


def clean_rewrite(output: str, source: str) -> tuple[str | None, str | None]:
    """A model's answer as a rewrite: its first non-empty line once the preamble is gone (LaCLIP keeps the
    continuation's first line, stripped), or None and why: `empty`, `identical` (to the source, ignoring case,
    whitespace and final punctuation) or `too_short` (under two words)."""
    lines = [line for line in strip_preamble(output).splitlines() if line.strip()]
    text = strip_preamble(lines[0]) if lines else ""
    if not text:
        return None, "empty"
    if _normalise(text) == _normalise(source):
        return None, "identical"
    if len(text.split()) < 2:
        return None, "too_short"
    return text, None
