"""A small OpenAI-compatible HTTP server on loopback, for the caption backends' tests and benchmark.

It serves ``POST /v1/chat/completions``, ``POST /v1/completions`` and ``GET /v1/models`` as a real server does
(HTTP/1.1 keep-alive, JSON bodies, ``usage`` counts) and can be told, per request, to misbehave.
``server.behave`` is a function of (prompt text, how many times this prompt was asked before) returning one
behaviour:

- ``ok``; ``preamble`` (a chat model's "Sure! Here is a rewritten caption:" before the answer);
- ``delay:S`` (answer after S seconds), ``hang`` (sleep ``hang_s``, past the client's timeout, then answer);
- ``429:S`` (Too Many Requests with ``Retry-After: S``), ``500``, ``503``, ``400``, ``401``;
- ``drop`` (close the connection without answering), ``cut`` (announce a longer body than is sent, then close);
- ``notjson``, ``nochoices``, ``truncated`` (a JSON body cut in half), ``empty`` (a choice with empty content).

Answers are deterministic: a LaCLIP prompt's caption (its last line, before `` =>``) comes back as "A view of
<caption>"; an image comes back described by its pixel size and mean brightness, so a test can check what was
sent. Every request is logged (path, Authorization header, body, behaviour, start and end times); ``latency_s``
delays every answer (the benchmark's fixed service time).
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

FAULTS = {
    "429": "caption API: HTTP 429 (rate limited)", "500": "caption API: HTTP 500", "503": "caption API: HTTP 503",
    "400": "caption API: HTTP 400", "401": "caption API: HTTP 401",
    "hang": "caption API: no answer within the client's timeout", "drop": "caption API: connection closed unanswered",
    "cut": "caption API: body shorter than announced", "notjson": "caption API: answer not JSON",
    "nochoices": "caption API: answer without choices", "truncated": "caption API: JSON answer cut in half",
    "empty": "caption API: empty answer",
}
"""A failing behaviour's name (before any ``:S``) -> the reliability ledger's fault (tests/conftest.py)."""


def prompt_of(body: dict) -> tuple[str, bytes | None]:
    """The prompt text and the first image (decoded from its data URL) of a chat or completions body."""
    if "prompt" in body:
        return str(body["prompt"]), None
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content, None
    text, image = "", None
    for part in content:
        if part.get("type") == "text":
            text += part["text"]
        elif part.get("type") == "image_url" and image is None:
            image = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
    return text, image


def answer_for(prompt: str, image: bytes | None) -> str:
    if image is not None:
        with Image.open(io.BytesIO(image)) as img:
            grey = img.convert("L")
            mean = sum(grey.getdata()) / (grey.width * grey.height)
            return (f"A test picture of {img.width} by {img.height} pixels in {img.format}. "
                    f"Its mean brightness is {mean:.0f}.\nNothing else is in it.")
    last = prompt.strip().splitlines()[-1]
    caption = last[:-2].strip() if last.endswith("=>") else last
    return f"A view of {caption.rstrip('.')}"


class OpenAICompatibleServer:
    """``with OpenAICompatibleServer() as server: server.url`` -> "http://127.0.0.1:PORT/v1"."""

    def __init__(self, latency_s: float = 0.0, hang_s: float = 5.0):
        self.latency_s, self.hang_s = latency_s, hang_s
        self.behave: Callable[[str, int], str] = lambda prompt, attempt: "ok"
        self.log: list[dict] = []
        self.models = ["served-model"]
        """what GET /v1/models lists"""
        self.seen: Counter = Counter()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> OpenAICompatibleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def answered(self) -> list[dict]:
        """Logged requests that got a 200 with an answer."""
        with self._lock:
            return [r for r in self.log if r["behaviour"] in ("ok", "preamble") or r["behaviour"].startswith("delay")]

    def in_flight_average(self) -> float:
        """Requests in flight on average between the first arrival and the last answer."""
        with self._lock:
            spans = [(r["start"], r["end"]) for r in self.log if r.get("end")]
        if not spans:
            return 0.0
        window = max(e for _, e in spans) - min(s for s, _ in spans)
        return sum(e - s for s, e in spans) / window if window > 0 else 0.0

    def _record(self, path: str, headers, body: dict) -> tuple[dict, str]:
        prompt, _ = prompt_of(body)
        with self._lock:
            attempt = self.seen[prompt]
            self.seen[prompt] += 1
            behaviour = self.behave(prompt, attempt)
            entry = {"path": path, "authorization": headers.get("Authorization"), "body": body,
                     "behaviour": behaviour, "start": time.perf_counter(), "end": None}
            self.log.append(entry)
        return entry, behaviour

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go as two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args) -> None:
                """Quiet: the test reads ``server.log`` instead of stderr lines."""

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.rstrip("/") != "/v1/models":
                    _send(self, 404, b'{"error": {"message": "not found"}}')
                    return
                data = [{"id": name, "object": "model"} for name in server.models]
                _send(self, 200, json.dumps({"object": "list", "data": data}).encode())

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                entry, behaviour = server._record(self.path, self.headers, body)
                try:
                    server._respond(self, body, behaviour)
                finally:
                    entry["end"] = time.perf_counter()

        return Handler

    def _respond(self, handler: BaseHTTPRequestHandler, body: dict, behaviour: str) -> None:
        time.sleep(self.latency_s)
        name, _, arg = behaviour.partition(":")
        if name == "delay":
            time.sleep(float(arg))
        if name == "hang":
            time.sleep(self.hang_s)
        if name == "drop":
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if name in ("429", "500", "503", "400", "401"):
            headers = {"Retry-After": arg} if name == "429" and arg else {}
            _send(handler, int(name), json.dumps({"error": {"message": f"status {name}"}}).encode(), headers)
            return
        _send_answer(handler, body, name)


def _send(handler: BaseHTTPRequestHandler, status: int, payload: bytes, headers: dict | None = None,
          length: int | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload) if length is None else length))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(payload)
    if length is not None:
        handler.close_connection = True


def _send_answer(handler: BaseHTTPRequestHandler, body: dict, name: str) -> None:
    prompt, image = prompt_of(body)
    text = answer_for(prompt, image)
    if name == "preamble":
        text = "Sure! Here is a rewritten caption:\n\n" + text
    if name == "empty":
        text = ""
    chat = "messages" in body
    choice = {"index": 0, "finish_reason": "stop",
              **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
    payload = {"id": "cmpl-test", "object": "chat.completion" if chat else "text_completion", "model": body["model"],
               "choices": [] if name == "nochoices" else [choice],
               "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                         "total_tokens": len(prompt.split()) + len(text.split())}}
    raw = json.dumps(payload).encode()
    if name == "notjson":
        raw = b"<html>502 Bad Gateway</html>"
    if name == "truncated":
        raw = raw[: len(raw) // 2]
    _send(handler, 200, raw, length=len(raw) + 100 if name == "cut" else None)
