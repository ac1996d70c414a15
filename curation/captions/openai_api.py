"""The `openai` caption backend: any OpenAI-compatible server (vLLM, SGLang, Ollama, llama.cpp's server, a
hosted API), through ``/v1/chat/completions`` or, for base models, ``/v1/completions``.

Design notes:
- Concurrency is a thread pool of ``concurrency`` workers over one ``httpx.Client`` (its connection pool sized
  to match), so at most that many requests are in flight per worker process. Threads rather than asyncio: the
  stage's units run inside Ray tasks and Prefect tasks, where an event loop may or may not already run.
- Retries: timeouts, connection errors, 429 and 5xx are retried up to ``max_retries`` times with exponential
  backoff and equal jitter (half the delay fixed, half random, so the delay still grows); a 429's
  ``Retry-After`` (seconds or an HTTP date) replaces the backoff, capped at ``max_backoff_s``. Any other 4xx
  is not retried: the same request would fail again.
- A malformed 200 (not JSON, no choices, no text) is not retried either; it is counted as ``malformed``.
- The key is read from the environment variable the config names, only here, into the client's headers. It is
  never put in an outcome, an exception message, :meth:`OpenAIGenerator.describe` or a log line (httpx logs
  request lines without headers).
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import io
import itertools
import json
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

import httpx
from PIL import Image

from curation.captions.config import OpenAIConfig, SamplingConfig
from curation.captions.requests import Done, Outcome, Request
from curation.images import decode_rgb


def image_data_url(data: bytes, max_side: int, quality: int) -> str:
    """The image resized so its longest side is at most ``max_side`` (never enlarged), as a JPEG data URL."""
    rgb = decode_rgb(data)  # upright, 16-bit scaled, alpha over white (curation.images)
    rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header's delay: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    if re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half of ``min(cap, base * 2**attempt)`` fixed, half uniform."""
    delay = min(cap, base * 2 ** attempt)
    return delay / 2 + rng.uniform(0, delay / 2)


def _message_text(choice: dict, api: str) -> Any:
    if api == "completions":
        return choice.get("text")
    content = (choice.get("message") or {}).get("content")
    if isinstance(content, list):  # content parts: join the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content


def parse_response(body: bytes, api: str) -> Outcome:
    """A 200's body as an Outcome: the first choice's text and the usage counts; ``malformed`` when it is not JSON,
    has no choices or no string text, ``empty`` when the text is blank."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Outcome.failed("malformed", "body is not JSON")
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return Outcome.failed("malformed", "no choices")
    text = _message_text(choices[0], api)
    if not isinstance(text, str):
        return Outcome.failed("malformed", "no text in the first choice")
    if not text.strip():
        return Outcome.failed("empty", "blank text")
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
    return Outcome(text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                   completion_tokens=int(usage.get("completion_tokens") or 0),
                   finish_reason=choices[0].get("finish_reason"))


def served_model(cfg: OpenAIConfig) -> OpenAIConfig:
    """``cfg`` with its model named: as given, else the one model the server lists under ``/v1/models`` (vLLM and
    llama.cpp's server serve one). Several listed, or none, is an error asking for ``openai.model``."""
    if cfg.model:
        return cfg
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    url = cfg.base_url.rstrip("/") + "/models"
    try:
        response = httpx.get(url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=cfg.timeout_s)
        response.raise_for_status()
        served = [m["id"] for m in response.json().get("data", []) if isinstance(m, dict) and "id" in m]
    except (httpx.HTTPError, ValueError, AttributeError) as err:
        raise ValueError(f"openai backend: no model named, and {url} did not list one ({type(err).__name__}); "
                         "set openai.model") from None
    if len(served) != 1:
        raise ValueError(f"openai backend: no model named, and {url} lists {len(served)} ({', '.join(served[:5])});"
                         " set openai.model")
    return dataclasses.replace(cfg, model=served[0])


class OpenAIGenerator:
    """Requests to one OpenAI-compatible endpoint, ``concurrency`` at a time, each retried as the module says."""

    def __init__(self, cfg: OpenAIConfig, sampling: SamplingConfig, sleep: Callable[[float], None] = time.sleep):
        if not cfg.model:
            raise ValueError("openai backend: no model named (name_served_models asks the server for it)")
        self.cfg, self.sampling, self._sleep = cfg, sampling, sleep
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(
            base_url=cfg.base_url.rstrip("/") + "/", headers=headers, timeout=httpx.Timeout(cfg.timeout_s),
            limits=httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency))
        self._path = "chat/completions" if cfg.api == "chat" else "completions"
        self._rng = random.Random(sampling.seed)

    def describe(self) -> dict:
        return {"base_url": self.cfg.base_url, "model": self.cfg.model, "api": self.cfg.api,
                "concurrency": self.cfg.concurrency, "key_from_env": self.cfg.api_key_env,
                "key_set": "Authorization" in self._client.headers}

    def close(self) -> None:
        self._client.close()

    def generate(self, requests: Sequence[Request], done: Done) -> None:
        """Every request through the pool, ``concurrency`` in flight and the next submitted as one finishes (so
        neither a batch boundary nor a slow request idles the pool); ``done`` runs in the calling thread."""
        width = max(1, self.cfg.concurrency)
        queue = iter(enumerate(requests))
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="openai") as pool:
            pending = {pool.submit(self.complete, r): i for i, r in itertools.islice(queue, width)}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    done(pending.pop(future), future.result())
                for i, r in itertools.islice(queue, len(finished)):
                    pending[pool.submit(self.complete, r)] = i

    def body(self, request: Request) -> dict:
        """The JSON body of one request (sampling settings, the prompt, the image as a data URL)."""
        s = self.sampling
        body: dict[str, Any] = {"model": self.cfg.model, "temperature": s.temperature, "top_p": s.top_p,
                                "max_tokens": request.max_new_tokens or s.max_new_tokens}
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if self.cfg.api == "completions":
            if request.image is not None:
                raise ValueError("openai backend: images need rewrite/longcap.openai.api: chat")
            body["prompt"] = request.prompt
        else:
            content: Any = request.prompt
            if request.image is not None:
                url = image_data_url(request.image, self.cfg.image_max_side, self.cfg.image_quality)
                content = [{"type": "text", "text": request.prompt}, {"type": "image_url", "image_url": {"url": url}}]
            messages = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
            body["messages"] = [*messages, {"role": "user", "content": content}]
        return {**body, **self.cfg.extra_body}

    def complete(self, request: Request) -> Outcome:
        """One request with its retries; never raises for the request's own failure."""
        try:
            body = self.body(request)
        except (OSError, Image.DecompressionBombError) as err:  # PIL's UnidentifiedImageError is an OSError
            return Outcome.failed("malformed", f"image: {type(err).__name__}")
        outcome = Outcome.failed("connection", "not tried")
        for attempt in range(self.cfg.max_retries + 1):
            outcome, wait = self._try(body)
            if wait is None:
                return outcome
            if attempt < self.cfg.max_retries:
                delay = backoff_delay(attempt, self.cfg.backoff_s, self.cfg.max_backoff_s, self._rng)
                self._sleep(min(self.cfg.max_backoff_s, wait) if wait > 0 else delay)
        return outcome

    def _try(self, body: dict) -> tuple[Outcome, float | None]:
        """One attempt: its outcome, and None when it is final, else the server's requested wait (0: backoff)."""
        try:
            response = self._client.post(self._path, json=body)
        except httpx.TimeoutException as err:
            return Outcome.failed("timeout", type(err).__name__), 0.0
        except httpx.TransportError as err:  # refused, reset, dropped mid-body
            return Outcome.failed("connection", type(err).__name__), 0.0
        status = response.status_code
        if status == 200:
            return parse_response(response.content, self.cfg.api), None
        if status == 429:
            return Outcome.failed("http_429", "429"), retry_after_seconds(response.headers.get("retry-after")) or 0.0
        if 500 <= status < 600:
            return Outcome.failed("http_5xx", str(status)), 0.0
        return Outcome.failed("http_4xx", str(status)), None
