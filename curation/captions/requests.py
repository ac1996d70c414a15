"""What a caption stage asks a model, and what comes back: the contract between the stages' prompt logic and the
`openai` and `transformers` generators.

A generator answers every request it is given, each with an :class:`Outcome`: the text, or the reason it has none.
It never raises for one bad request (a timeout, a 429, a malformed body): the stage keeps the sample's original
caption, counts the reason, and fails only when the share of failures passes the stage's threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

FailureReason = Literal["timeout", "http_429", "http_5xx", "http_4xx", "connection", "malformed", "empty"]
"""Why a request has no text after its retries. `http_4xx` is any other client error (never retried);
`malformed`: a body that is not JSON, has no choices, or no text; `empty`: a text with nothing left once cleaned."""
FAILURE_REASONS: tuple[str, ...] = get_args(FailureReason)


@dataclass(frozen=True)
class Request:
    """One generation: a text prompt, and for captions the image it is about."""

    prompt: str
    """the whole prompt (LaCLIP's instruction, examples and caption; or a captioning instruction)."""
    image: bytes | None = None
    """the encoded image (PNG or JPEG bytes) for vision-language models; None for text-only prompts."""
    max_new_tokens: int | None = None
    """overrides the sampling config's limit for this request (the short ALIP caption)."""


@dataclass(frozen=True)
class Outcome:
    """A request's answer: its text, or why there is none."""

    text: str | None
    reason: FailureReason | None = None
    prompt_tokens: int = 0
    """tokens the server (or tokenizer) counted in the prompt; 0 when not reported."""
    completion_tokens: int = 0
    finish_reason: str | None = None
    """`stop`, `length` (hit max_new_tokens), ... as the model reported it."""
    detail: str = ""
    """a short, secret-free note on a failure (the status line, the exception's type)."""

    @staticmethod
    def failed(reason: FailureReason, detail: str = "") -> Outcome:
        return Outcome(text=None, reason=reason, detail=detail)


Done = Callable[[int, Outcome], None]
"""Called once per request, with its index in the batch, as soon as its outcome is known (any order)."""


class Generator(Protocol):
    """A model that writes text for prompts: the `openai` client or a local `transformers` model."""

    def generate(self, requests: Sequence[Request], done: Done) -> None:
        """Answer every request, calling ``done(i, outcome)`` exactly once for each; returns when all are done."""

    def describe(self) -> dict:
        """What manifests say of it (model, endpoint or directory, device); never a secret."""

    def close(self) -> None:
        """Release connections or memory."""
