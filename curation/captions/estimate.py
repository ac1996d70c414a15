"""A caption stage's dry run: how many requests a run would send, and roughly how many tokens, sending none.

The requests are built exactly as the stage builds them (:func:`curation.captions.runner.rewrite_requests`,
:func:`~curation.captions.runner.caption_requests`) and looked up in the answer cache, so the figure is what a
run would ask for now. Tokens are rough: prompt text at ~4 characters a token (the usual figure for English BPE
vocabularies), images counted apart (their token cost depends on the model's vision encoder), and completions
bounded by max_new_tokens (an upper bound: models usually stop sooner).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow.parquet as pq

from curation.captions.cache import keys_for, open_cache
from curation.captions.config import LongcapConfig, RewriteConfig
from curation.captions.requests import Request
from curation.captions.runner import caption_plan, caption_requests, captioner_identity, identity_of, rewrite_requests

CHARS_PER_TOKEN = 4


def _tokens(requests: list[Request], max_new_tokens: int) -> dict:
    return {"requests": len(requests),
            "prompt_tokens": sum(-(-len(r.prompt) // CHARS_PER_TOKEN) for r in requests),
            "images": sum(r.image is not None for r in requests),
            "max_completion_tokens": sum(r.max_new_tokens or max_new_tokens for r in requests)}


def _add(total: dict, part: dict) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0) + value


def estimate_parts(stage: str, cfg: RewriteConfig | LongcapConfig, parts: Sequence[str], seed: int,
                   cache_root: str | None) -> dict:
    """{"samples", "requests" (to send), "cached", "prompt_tokens", "images", "max_completion_tokens"}. Each
    cache's keys are read once for all parts."""
    total: dict = {"samples": 0, "cached": 0, "requests": 0, "prompt_tokens": 0, "images": 0,
                   "max_completion_tokens": 0}
    stored: dict[str, set[str]] = {}  # cache namespace -> the keys it holds
    for path in parts:
        columns = ["uid", "text"] if isinstance(cfg, RewriteConfig) else ["uid", "text", "image"]
        table = pq.read_table(path, columns=columns)
        total["samples"] += table.num_rows
        for identity, requests in _part_requests(cfg, table, seed):
            if identity is None:
                continue  # a simulated model sends nothing
            cache = open_cache(cache_root, stage, identity)
            if cache is not None and str(cache.root) not in stored:
                stored[str(cache.root)] = cache.stored_keys()
            known = stored.get(str(cache.root), set()) if cache is not None else set()
            todo = [r for r, k in zip(requests, keys_for(identity, cfg.sampling, requests)) if k not in known]
            total["cached"] += len(requests) - len(todo)
            _add(total, _tokens(todo, cfg.sampling.max_new_tokens))
    return total


def _part_requests(cfg: RewriteConfig | LongcapConfig, table, seed: int
                   ) -> list[tuple[dict | None, list[Request]]]:
    """(cache identity, requests) per request batch the part makes, as the stage makes them; identity None for
    a simulated model."""
    uids, texts = table.column("uid").to_pylist(), table.column("text").to_pylist()
    if isinstance(cfg, RewriteConfig):
        identity = None if cfg.backend == "simulated" else identity_of(cfg.backend, cfg)
        return [(identity, rewrite_requests(cfg, uids, texts, seed)[1] if identity else [])]
    images = table.column("image").to_pylist()
    captioners = cfg.resolved_captioners()
    return [(captioner_identity(captioners[i]), caption_requests(cfg, captioners[i], images, short))
            for i, short in caption_plan(captioners)]
