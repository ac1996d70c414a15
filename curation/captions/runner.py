"""How a caption stage turns a part's rows into requests, answers them (cache first), and back into columns.

- ``rewrite`` (LaCLIP): k prompts per caption, rewrite j in context of pool j's examples; each answer is
  cleaned (first line, preambles stripped) and dropped when empty, identical to the caption or under two words.
  A caption keeps every rewrite that survives: fewer than k where requests failed, none where all did, and
  training always has the original caption to draw (``training.data.laclip_text``).
- ``longcap`` (DreamLIP, ALIP): one request per image per captioner for the long caption, and one more to the
  first captioner for the short synthetic caption. A failed request leaves the sample's original caption in its
  place, so every row has every column.

The simulated backend skips prompts: it writes from the caption (rewrite) or the scene (longcap) directly, and
its outputs are not cached (recomputing is cheaper than reading them back).

:class:`Tally` counts what happened to every request, by reason; the stage sums the parts' tallies and fails when
the failure share passes ``max_failure_share``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from curation.captions.cache import AnswerCache, keys_for, namespace, open_cache
from curation.captions.config import CaptionerConfig, LongcapConfig, RewriteConfig, SamplingConfig
from curation.captions.laclip import clean_rewrite, rewrite_prompts, strip_preamble
from curation.captions.openai_api import OpenAIGenerator, served_model
from curation.captions.requests import FAILURE_REASONS, Generator, Outcome, Request
from curation.captions.simulated import SimulatedBackend

_SENTENCE_SPLIT = re.compile(r"\n|</s>|\.")


def split_sentences(text: str) -> list[str]:
    """A long caption's sentences as DreamLIP cuts them (its training/data.py `split_caption`): at newlines,
    '</s>' and full stops, stripped, empties dropped. These are the units DreamLIP samples sub-captions from."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text or "") if s.strip()]


def clean_caption(output: str) -> str:
    """A captioner's answer with a chat model's preamble ("Sure, here is a description:") stripped and the
    whitespace collapsed."""
    return " ".join(strip_preamble(output).split())


@dataclass
class Tally:
    """What happened to a part's requests: counts per outcome and reason, and the tokens the model reported."""

    samples: int = 0
    requests: int = 0
    cached: int = 0
    sent: int = 0
    answered: int = 0
    failures: Counter = field(default_factory=Counter)
    """failed requests by reason (FAILURE_REASONS)."""
    rejected: Counter = field(default_factory=Counter)
    """answers dropped by the cleaning rules (identical to the caption, too short)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0
    """answers that stopped at max_new_tokens (finish_reason `length`)."""

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["failures"] = {r: int(self.failures.get(r, 0)) for r in FAILURE_REASONS}
        out["rejected"] = dict(self.rejected)
        return out

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def merge_tallies(tallies: Sequence[dict]) -> dict:
    """The stage's tally: every part's summed (failures by every reason, even those at 0)."""
    total: dict = {"failures": dict.fromkeys(FAILURE_REASONS, 0), "rejected": {}}
    for t in tallies:
        for key, value in t.items():
            if isinstance(value, dict):
                for reason, n in value.items():
                    total[key][reason] = total[key].get(reason, 0) + n
            else:
                total[key] = total.get(key, 0) + value
    requests = total.get("requests", 0)
    total["failure_share"] = round(sum(total["failures"].values()) / requests, 6) if requests else 0.0
    return total


class CaptionFailureError(RuntimeError):
    """More of a caption stage's requests failed than its max_failure_share allows."""


def check_failures(stage: str, max_share: float, tally: dict) -> None:
    """Raise CaptionFailureError when the stage's failure share (failed requests / requests) passes max_share."""
    share = tally["failure_share"]
    if share > max_share:
        reasons = ", ".join(f"{r} {n}" for r, n in tally["failures"].items() if n)
        raise CaptionFailureError(
            f"{stage}: {share:.1%} of {tally['requests']} requests failed after retries ({reasons}), over "
            f"{stage}.max_failure_share={max_share:.1%}; answered requests are cached, so a rerun asks only for "
            "the failed ones")


class Answerer:
    """One generator behind the per-sample cache: answers a list of requests, asking the model only for the ones
    not cached, counting every outcome in a Tally and showing progress."""

    def __init__(self, generator: Generator, identity: dict, sampling: SamplingConfig, cache: AnswerCache | None,
                 progress: bool, label: str):
        self.generator, self.identity, self.sampling, self.cache = generator, identity, sampling, cache
        self.progress, self.label = progress, label

    def answer(self, requests: Sequence[Request], tally: Tally) -> list[str | None]:
        keys = keys_for(self.identity, self.sampling, requests)
        known = self.cache.lookup(keys) if self.cache is not None else {}
        answers: list[str | None] = [known.get(k) for k in keys]
        todo = [i for i, a in enumerate(answers) if a is None]
        tally.requests += len(requests)
        tally.cached += len(requests) - len(todo)
        tally.sent += len(todo)
        bar = tqdm(total=len(requests), initial=len(requests) - len(todo), desc=self.label, unit="req",
                   file=sys.stderr, mininterval=2.0, disable=not self.progress or not todo, dynamic_ncols=True)

        def done(position: int, outcome: Outcome) -> None:
            index = todo[position]
            tally.prompt_tokens += outcome.prompt_tokens
            tally.completion_tokens += outcome.completion_tokens
            tally.truncated += outcome.finish_reason == "length"
            if outcome.text is None:
                tally.failures[outcome.reason or "malformed"] += 1
            else:
                answers[index] = outcome.text
                if self.cache is not None:
                    self.cache.put(keys[index], outcome.text)
            bar.update(1)
            bar.set_postfix(failed=tally.failed, refresh=False)

        try:
            if todo:
                self.generator.generate([requests[i] for i in todo], done)
        finally:
            if self.cache is not None:
                self.cache.flush()
            bar.close()
        tally.answered += sum(a is not None for a in answers)
        return answers


def identity_of(backend: str, cfg: CaptionerConfig | RewriteConfig) -> dict:
    """What, besides the prompt and sampling, decides a backend's answer (the cache identity): the model and the
    request shape; not the server's address, the key or the concurrency."""
    if backend == "openai":
        o = cfg.openai
        return {"backend": "openai", "model": o.model, "api": o.api, "system_prompt": o.system_prompt,
                "extra_body": o.extra_body, "image_max_side": o.image_max_side, "image_quality": o.image_quality}
    t = cfg.transformers
    return {"backend": "transformers", "model": str(Path(t.model_dir).name), "model_dir": t.model_dir,
            "decoding": t.decoding, "dtype": t.dtype}


def name_served_models(cfg: RewriteConfig | LongcapConfig) -> RewriteConfig | LongcapConfig:
    """``cfg`` with every `openai` block that names no model given the one its server serves (asked once, where
    the stage starts, so the stage's key and the answer cache hold the model's name)."""
    if cfg.backend == "openai":
        cfg = dataclasses.replace(cfg, openai=served_model(cfg.openai))
    if isinstance(cfg, LongcapConfig) and cfg.captioners:
        named = tuple(dataclasses.replace(c, openai=served_model(c.openai)) if c.backend == "openai" and c.openai
                      else c for c in cfg.captioners)
        cfg = dataclasses.replace(cfg, captioners=named)
    return cfg


def make_generator(backend: str, cfg: CaptionerConfig | RewriteConfig, sampling: SamplingConfig,
                   task: str) -> Generator:
    """The `openai` or `transformers` generator of one captioner (or the rewriter)."""
    if backend == "openai":
        return OpenAIGenerator(cfg.openai, sampling)
    if backend == "transformers":
        from curation.captions.local import TransformersGenerator  # torch and transformers load only here
        return TransformersGenerator(cfg.transformers, sampling, task)
    raise ValueError(f"unknown caption backend {backend!r}")


def rewrite_requests(cfg: RewriteConfig, uids: list[str], texts: list[str], seed: int
                     ) -> tuple[list[int], list[Request]]:
    """LaCLIP's k prompts per non-empty caption, and the row each belongs to."""
    owners, requests = [], []
    for row, (uid, text) in enumerate(zip(uids, texts)):
        if text.strip():
            for prompt in rewrite_prompts(uid, text, cfg.k, cfg.pools, seed, cfg.instruction, cfg.examples):
                owners.append(row)
                requests.append(Request(prompt))
    return owners, requests


def caption_requests(cfg: LongcapConfig, captioner: CaptionerConfig, images: list[bytes], short: bool
                     ) -> list[Request]:
    """One request per image: the captioner's long-caption prompt, or the stage's short prompt and limit."""
    prompt = cfg.short_prompt if short else captioner.prompt
    limit = cfg.short_max_new_tokens if short else None
    return [Request(prompt, image=image, max_new_tokens=limit) for image in images]


def captioner_identity(c: CaptionerConfig) -> dict | None:
    """A longcap captioner's cache identity (its backend's, plus its name); None for a simulated one."""
    return None if c.backend == "simulated" else {**identity_of(c.backend, c), "captioner": c.name}


def cache_namespaces(cfg: RewriteConfig | LongcapConfig) -> list[str]:
    """The answer-cache folders (``cache.namespace``) a caption stage with ``cfg`` reads and writes, one per
    backend that is not simulated: what the stage records in its manifest, so ``curaclip gc`` knows which cache
    entries a run needs. The workers open exactly these (``Rewriter``, ``Captioner``)."""
    if isinstance(cfg, RewriteConfig):
        return [] if cfg.backend == "simulated" else [namespace("rewrite", identity_of(cfg.backend, cfg))]
    return sorted({namespace("longcap", identity) for c in cfg.resolved_captioners()
                   if (identity := captioner_identity(c)) is not None})


def caption_plan(captioners: Sequence[CaptionerConfig]) -> list[tuple[int, bool]]:
    """(captioner index, short?) of every request batch a longcap part makes: each captioner's long captions,
    then ALIP's short caption from the first."""
    return [(i, False) for i in range(len(captioners))] + [(0, True)]


class Rewriter:
    """The rewrite stage's worker state: the backend, built once (a local model loads here)."""

    def __init__(self, cfg: RewriteConfig, cache_root: str | None):
        self.cfg = cfg
        self.simulated = SimulatedBackend(cfg.error_rate) if cfg.backend == "simulated" else None
        self.answerer: Answerer | None = None
        if self.simulated is None:
            identity = identity_of(cfg.backend, cfg)
            cache = open_cache(cache_root, "rewrite", identity, cfg.cache_batch)
            self.answerer = Answerer(make_generator(cfg.backend, cfg, cfg.sampling, "text"), identity, cfg.sampling,
                                     cache, cfg.progress, "rewrite")

    def describe(self) -> dict:
        if self.simulated is not None:
            return self.simulated.describe("rewrite")
        return {"name": self.cfg.backend, "simulated": False, "sees": "the caption text only",
                **self.answerer.generator.describe()}

    def rewrite_table(self, table: pa.Table, seed: int) -> tuple[pa.Table, Tally]:
        """``table`` with a ``rewrites`` list<string> column."""
        uids, texts = table.column("uid").to_pylist(), table.column("text").to_pylist()
        tally = Tally(samples=table.num_rows)
        if self.simulated is not None:
            rewrites = self.simulated.rewrite(uids, texts, self.cfg.k, seed)
        else:
            rewrites = self._rewrite_prompted(uids, texts, seed, tally)
        return table.append_column("rewrites", pa.array(rewrites, pa.list_(pa.string()))), tally

    def _rewrite_prompted(self, uids: list[str], texts: list[str], seed: int, tally: Tally) -> list[list[str]]:
        owners, requests = rewrite_requests(self.cfg, uids, texts, seed)
        rewrites: list[list[str]] = [[] for _ in uids]
        for row, answer in zip(owners, self.answerer.answer(requests, tally)):
            if answer is None:
                continue
            text, reason = clean_rewrite(answer, texts[row])
            if text is not None:
                rewrites[row].append(text)
            elif reason == "empty":
                tally.failures["empty"] += 1
            else:
                tally.rejected[reason] += 1
        return rewrites

    def close(self) -> None:
        if self.answerer is not None:
            self.answerer.generator.close()


LONGCAP_COLUMNS = (("long_caption", pa.string()), ("long_captions", pa.list_(pa.string())),
                   ("long_caption_sentences", pa.list_(pa.string())), ("synthetic_caption", pa.string()))


class Captioner:
    """The longcap stage's worker state: one generator per configured captioner (or the simulated one)."""

    def __init__(self, cfg: LongcapConfig, cache_root: str | None):
        self.cfg = cfg
        self.captioners = cfg.resolved_captioners()
        names = [c.name for c in self.captioners]
        if len(set(names)) != len(names):
            raise ValueError(f"longcap.captioners: names must differ, got {names}")
        self.backends: list[SimulatedBackend | Answerer] = [self._backend(c, cache_root) for c in self.captioners]

    def _backend(self, c: CaptionerConfig, cache_root: str | None) -> SimulatedBackend | Answerer:
        if c.backend == "simulated":
            return SimulatedBackend(self.cfg.error_rate)
        identity = captioner_identity(c)
        cache = open_cache(cache_root, "longcap", identity, self.cfg.cache_batch)
        generator = make_generator(c.backend, c, self.cfg.sampling, "image")
        return Answerer(generator, identity, self.cfg.sampling, cache, self.cfg.progress, f"longcap {c.name}")

    def describe(self) -> dict:
        described = []
        for c, b in zip(self.captioners, self.backends):
            if isinstance(b, SimulatedBackend):
                described.append({"captioner": c.name, **b.describe("longcap")})
            else:
                described.append({"captioner": c.name, "name": c.backend, "simulated": False,
                                  "sees": "the image and the prompt", **b.generator.describe()})
        return {**described[0], "simulated": all(d["simulated"] for d in described), "captioners": described}

    def longcap_table(self, table: pa.Table, truths: list[dict | None], seed: int) -> tuple[pa.Table, Tally]:
        """``table`` with long_caption, long_captions (one per captioner, config order), long_caption_sentences
        and synthetic_caption."""
        uids, texts = table.column("uid").to_pylist(), table.column("text").to_pylist()
        images = table.column("image").to_pylist()
        tally = Tally(samples=table.num_rows)
        *per_captioner, short = [self._captions(i, uids, texts, images, truths, seed, is_short, tally)
                                 for i, is_short in caption_plan(self.captioners)]
        long_captions = [list(row) for row in zip(*per_captioner)]
        sentences = [[s for caption in row for s in split_sentences(caption)] for row in long_captions]
        columns = (per_captioner[0], long_captions, sentences, short)
        for (name, tp), values in zip(LONGCAP_COLUMNS, columns):
            table = table.append_column(name, pa.array(values, tp))
        return table, tally

    def _captions(self, index: int, uids: list[str], texts: list[str], images: list[bytes],
                  truths: list[dict | None], seed: int, short: bool, tally: Tally) -> list[str]:
        backend = self.backends[index]
        if isinstance(backend, SimulatedBackend):
            # captioner i > 0 draws from its own seed: several simulated captioners write different captions
            write = backend.short_captions if short else backend.long_captions
            return write(uids, texts, truths, seed + 1000 * index)
        answers = backend.answer(caption_requests(self.cfg, self.captioners[index], images, short), tally)
        out = []
        for answer, text in zip(answers, texts):
            cleaned = clean_caption(answer) if answer is not None else ""
            if answer is not None and not cleaned:
                tally.failures["empty"] += 1
            out.append(cleaned or text)  # a failed request keeps the sample's original caption
        return out

    def close(self) -> None:
        for b in self.backends:
            if isinstance(b, Answerer):
                b.generator.close()
