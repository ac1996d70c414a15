"""Configuration of the caption stages (`rewrite`, `longcap`) and of their backends.

One block per backend (`openai`, `transformers`) sits under each stage, so switching `backend` is the only key a
user changes to go from the embedded simulated model to a server or a local model directory. Fields that only
change *how* the work runs (concurrency, timeouts, retries, the failure threshold, dry runs) are left out of the
stage's cache key (:meth:`RewriteConfig.key_config`): they do not change what a model writes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

BackendName = Literal["simulated", "openai", "transformers"]
"""Caption backends a config may name (the keys of ``curation.captions.BACKENDS``; a test keeps the two equal)."""

OPERATIONAL_FIELDS = frozenset({"concurrency", "timeout_s", "max_retries", "backoff_s", "max_backoff_s",
                                "max_failure_share", "dry_run", "cache_batch", "progress", "api_key_env",
                                "batch_size", "device", "base_url"})
"""Fields that change how a stage runs, never what it writes: not part of its cache key. (A request's seed,
prompt, model and sampling are; the per-sample cache keys on exactly those.)"""


@dataclass(frozen=True)
class SamplingConfig:
    """How text is decoded, the same for every backend (LaCLIP sampled with temperature 0.9, top-p 0.95 and at
    most 77 new tokens)."""

    temperature: float = 0.9
    """softmax temperature; 0 decodes greedily."""
    top_p: float = 0.95
    """nucleus sampling mass."""
    max_new_tokens: int = 77
    """tokens generated at most per request (LaCLIP: 77, CLIP's context length)."""
    stop: tuple[str, ...] = ()
    """strings that end a generation (sent as the API's `stop`; `stop_strings` for local models)."""
    seed: int | None = None
    """the request's `seed` (OpenAI-compatible servers that honour it; the torch seed of local models)."""


@dataclass(frozen=True)
class OpenAIConfig:
    """An OpenAI-compatible server: vLLM, SGLang, Ollama, llama.cpp's server, a hosted API."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """the API root, ending in /v1 (vLLM's default port; Ollama: http://127.0.0.1:11434/v1)."""
    model: str = ""
    """the served model's name, as the server lists it under /v1/models; empty: the one model it lists (asked
    once when the stage starts; a server listing several needs the name)."""
    api: Literal["chat", "completions"] = "chat"
    """`chat`: /v1/chat/completions (instruction and vision models); `completions`: /v1/completions (base
    models, such as the LLaMA LaCLIP prompted in context)."""
    api_key_env: str = "OPENAI_API_KEY"
    """the environment variable that holds the key (its value is never written anywhere); unset: no key sent."""
    system_prompt: str | None = None
    """chat only: a system message sent before the prompt (None: the prompt is the one user message)."""
    concurrency: int = 32
    """requests in flight per worker (each of the stage's parallel units has its own client)."""
    timeout_s: float = 60.0
    """seconds before a request counts as timed out (connect, read and write each)."""
    max_retries: int = 4
    """retries after the first try, on timeouts, connection errors, 429 and 5xx (never on other 4xx)."""
    backoff_s: float = 1.0
    """first retry's delay; doubled each retry, with full jitter, capped at max_backoff_s."""
    max_backoff_s: float = 60.0
    """longest wait between two tries (a 429's Retry-After is honoured up to this)."""
    image_max_side: int = 768
    """captions: images are resized so their longest side is at most this, and sent as JPEG data URLs."""
    image_quality: int = 90
    """JPEG quality of the re-encoded image."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """extra request fields merged into every body (vLLM's `top_k`, `repetition_penalty`, Ollama's `options`)."""


@dataclass(frozen=True)
class TransformersConfig:
    """A local Hugging Face model directory, batched on the stage's actor pool."""

    model_dir: str = ""
    """the directory (config.json, weights, tokenizer or processor); nothing is downloaded."""
    batch_size: int = 16
    """prompts per generate() call."""
    device: str = "auto"
    """`auto`: the first GPU when one is visible, else the CPU; or `cpu`, `cuda`, `cuda:1`."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """weights' dtype; `auto`: bfloat16 on a GPU, float32 on the CPU."""
    decoding: Literal["sample", "greedy"] = "sample"
    """sampled (the stage's temperature and top_p) or greedy decoding."""
    trust_remote_code: bool = False
    """run code shipped with the model; off unless a model needs it."""


@dataclass(frozen=True)
class CaptionerConfig:
    """One of the `longcap` stage's captioners (DreamLIP combines three MLLMs' captions). Unset fields take the
    stage's own."""

    name: str
    """what the report and `long_captions` order call it."""
    backend: BackendName | None = None
    prompt: str | None = None
    openai: OpenAIConfig | None = None
    transformers: TransformersConfig | None = None


def key_config(cfg: Any) -> dict:
    """A config as a plain mapping without its operational fields (at any depth): what a stage's key hashes."""
    def strip(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: strip(getattr(value, f.name)) for f in dataclasses.fields(value)
                    if f.name not in OPERATIONAL_FIELDS}
        if isinstance(value, (list, tuple)):
            return [strip(v) for v in value]
        return value
    return strip(cfg)


LACLIP_INSTRUCTION = "rewrite image captions differently,"
"""The instruction before LaCLIP's in-context examples (the paper's prompt opens with "rewrite image captions
differently")."""


@dataclass(frozen=True)
class CaptionStageConfig:
    """What both caption stages configure alike: the backend and its blocks, and how the stage runs."""

    backend: BackendName = "simulated"
    """caption backend, a key of BACKENDS."""
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    transformers: TransformersConfig = field(default_factory=TransformersConfig)
    error_rate: float = 0.05
    """simulated backend: probability that a rewrite or caption carries a wrong attribute (hallucination)."""
    max_failure_share: float = 0.05
    """the stage fails when more than this share of its requests still fail after their retries."""
    cache_batch: int = 256
    """answers per file of the per-sample cache (a crash loses at most this many)."""
    dry_run: bool = False
    """count the requests and tokens a run would send, send none, and stop the run there."""
    progress: bool = True
    """show a progress bar per part (done / total, rate, failures) on stderr."""

    def key_config(self) -> dict:
        return key_config(self)


@dataclass(frozen=True)
class RewriteConfig(CaptionStageConfig):
    """Configuration of the `rewrite` stage (LaCLIP)."""

    k: int = 4
    """rewrites per caption, one per example pool in `pools` order (LaCLIP: ChatGPT, Bard, human, COCO)."""
    pools: tuple[str, ...] = ("chatgpt", "bard", "human", "coco")
    """LaCLIP's in-context example pools (``curation.captions.laclip_pools``); rewrite j uses pool j mod len."""
    instruction: str = LACLIP_INSTRUCTION
    """the line before the examples."""
    examples: int = 3
    """in-context `source => target` pairs per prompt, sampled per caption from its pool (LaCLIP: 3)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


LONG_PROMPT = ("Describe this image in detail, in several sentences: every object, its color, size and "
               "material, where it is, and how the objects relate to each other.")
"""The default long-caption prompt (DreamLIP asked its MLLMs for a detailed description)."""
SHORT_PROMPT = "Describe this image in one short sentence."
"""The default synthetic-caption prompt (ALIP's short caption beside the alt-text)."""


@dataclass(frozen=True)
class LongcapConfig(CaptionStageConfig):
    """Configuration of the `longcap` stage: DreamLIP long captions from one or more captioners, and ALIP's
    short synthetic caption from the first."""

    prompt: str = LONG_PROMPT
    """the instruction sent with each image for its long caption."""
    short_prompt: str = SHORT_PROMPT
    """the instruction for the short synthetic caption (ALIP); asked of the first captioner."""
    captioners: tuple[CaptionerConfig, ...] = ()
    """several captioners (DreamLIP combined three MLLMs); empty: one, named after the backend, from the
    stage's own settings."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.2, top_p=0.95,
                                                                            max_new_tokens=256))
    """long captions are sampled cooler and longer than rewrites."""
    short_max_new_tokens: int = 40
    """tokens at most for the short caption."""

    def resolved_captioners(self) -> tuple[CaptionerConfig, ...]:
        """Every captioner with each unset field taken from the stage."""
        listed = self.captioners or (CaptionerConfig(name=self.backend),)
        return tuple(CaptionerConfig(name=c.name, backend=c.backend or self.backend, prompt=c.prompt or self.prompt,
                                     openai=c.openai or self.openai, transformers=c.transformers or self.transformers)
                     for c in listed)
