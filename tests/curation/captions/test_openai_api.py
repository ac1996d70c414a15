"""The `openai` backend against an OpenAI-compatible server started on loopback (tests/servers/openai_server.py):
request bodies, retries and their backoff, every failure reason, image payloads, and the key's handling."""

import io
import random
from email.utils import formatdate

import pytest
from PIL import Image

from curation.captions.config import OpenAIConfig, SamplingConfig
from curation.captions.openai_api import (
    OpenAIGenerator,
    backoff_delay,
    image_data_url,
    parse_response,
    retry_after_seconds,
)
from curation.captions.requests import Request
from tests.servers.openai_server import FAULTS, OpenAICompatibleServer, prompt_of

KEY = "sk-test-3f9c1e7d-never-in-a-file"


@pytest.fixture
def server():
    with OpenAICompatibleServer(hang_s=1.5) as s:
        yield s


def _generator(server, sleeps=None, **overrides):
    settings = {"base_url": server.url, "model": "tiny-llm", "api_key_env": "CURACLIP_TEST_KEY", "backoff_s": 0.01,
                "max_backoff_s": 0.5, "timeout_s": 0.5, "max_retries": 2, "concurrency": 4, **overrides}
    cfg = OpenAIConfig(**settings)
    sampling = SamplingConfig(stop=("\n",), seed=11)
    return OpenAIGenerator(cfg, sampling, sleep=sleeps.append if sleeps is not None else (lambda s: None))


def _run(generator, requests):
    got = {}

    def done(i, outcome):
        assert i not in got
        got[i] = outcome

    generator.generate(requests, done)
    return [got[i] for i in range(len(requests))]


def _prompt(i: int) -> str:
    return f"rewrite image captions differently,\n\na b => c d\n\ncaption number {i} =>"


def test_chat_bodies_answers_usage_and_the_key_header(server, monkeypatch):
    monkeypatch.setenv("CURACLIP_TEST_KEY", KEY)
    gen = _generator(server, extra_body={"top_k": 20})
    outcomes = _run(gen, [Request(_prompt(i)) for i in range(10)])
    assert [o.text for o in outcomes] == [f"A view of caption number {i}" for i in range(10)]
    assert all(o.reason is None and o.prompt_tokens > 0 and o.completion_tokens == 6 for o in outcomes)
    assert len(server.log) == 10
    body = server.log[0]["body"]
    assert server.log[0]["path"] == "/v1/chat/completions"
    assert body["model"] == "tiny-llm" and body["temperature"] == 0.9 and body["top_p"] == 0.95
    assert body["max_tokens"] == 77 and body["stop"] == ["\n"] and body["seed"] == 11 and body["top_k"] == 20
    assert body["messages"] == [{"role": "user", "content": prompt_of(body)[0]}]  # one user message, no system
    assert {e["authorization"] for e in server.log} == {f"Bearer {KEY}"}
    assert KEY not in repr(gen.describe()) and gen.describe()["key_set"] is True


def test_completions_api_and_system_prompt(server, monkeypatch):
    monkeypatch.delenv("CURACLIP_TEST_KEY", raising=False)
    (outcome,) = _run(_generator(server, api="completions"), [Request(_prompt(1))])
    assert outcome.text == "A view of caption number 1"
    assert server.log[0]["path"] == "/v1/completions" and server.log[0]["body"]["prompt"] == _prompt(1)
    assert server.log[0]["authorization"] is None  # no key set: none sent
    _run(_generator(server, system_prompt="You rewrite captions."), [Request(_prompt(2))])
    assert server.log[1]["body"]["messages"][0] == {"role": "system", "content": "You rewrite captions."}


def test_retries_honour_retry_after_then_back_off_exponentially(server, reliability):
    plans = {_prompt(0): ["429:0.3", "ok"], _prompt(1): ["500", "503", "ok"]}
    server.behave = lambda prompt, attempt: plans[prompt][attempt]
    sleeps: list[float] = []
    outcomes = _run(_generator(server, sleeps=sleeps, concurrency=1), [Request(_prompt(0)), Request(_prompt(1))])
    assert all(o.text for o in outcomes)
    assert [e["behaviour"] for e in server.log] == ["429:0.3", "ok", "500", "503", "ok"]
    assert sleeps[0] == pytest.approx(0.3)  # Retry-After, not the backoff
    assert 0.005 <= sleeps[1] <= 0.01 and 0.01 <= sleeps[2] <= 0.02  # base 0.01, doubled, equal jitter
    for entry in server.log:
        if entry["behaviour"] != "ok":
            reliability.fault(FAULTS[entry["behaviour"].split(":")[0]], "caption backend (OpenAI API): retried")


@pytest.mark.parametrize(("behaviour", "reason", "tries"), [
    ("503", "http_5xx", 3), ("500", "http_5xx", 3), ("429:0", "http_429", 3), ("hang", "timeout", 3),
    ("drop", "connection", 3), ("cut", "connection", 3),
    ("400", "http_4xx", 1), ("401", "http_4xx", 1),  # other 4xx: never retried
    ("notjson", "malformed", 1), ("nochoices", "malformed", 1), ("truncated", "malformed", 1),
    ("empty", "empty", 1),
])
def test_each_failure_is_counted_by_reason_after_its_retries(server, behaviour, reason, tries, reliability):
    server.behave = lambda prompt, attempt: behaviour if prompt == _prompt(0) else "ok"
    bad, good = _run(_generator(server), [Request(_prompt(0)), Request(_prompt(1))])
    assert bad.text is None and bad.reason == reason
    assert good.text == "A view of caption number 1"  # one bad request fails nobody else
    assert sum(prompt_of(e["body"])[0] == _prompt(0) for e in server.log) == tries
    assert KEY not in bad.detail
    reliability.fault(FAULTS[behaviour.split(":")[0]], "caption backend (OpenAI API): failed alone", times=tries)


def test_images_are_resized_and_sent_as_jpeg_data_urls(server):
    buffer = io.BytesIO()
    Image.new("RGB", (1000, 500), (200, 200, 200)).save(buffer, format="PNG")
    small = io.BytesIO()
    Image.new("RGB", (40, 20), (0, 0, 0)).save(small, format="PNG")
    requests = [Request("Describe it.", image=buffer.getvalue()), Request("Describe it.", image=small.getvalue()),
                Request("Describe it.", image=b"not an image")]
    big, tiny, broken = _run(_generator(server, image_max_side=256), requests)
    assert big.text.startswith("A test picture of 256 by 128 pixels in JPEG. Its mean brightness is 200")
    assert tiny.text.startswith("A test picture of 40 by 20 pixels in JPEG")  # never enlarged
    assert broken.reason == "malformed" and "image" in broken.detail
    assert len(server.log) == 2  # the broken image was never sent
    content = server.log[0]["body"]["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "Describe it."}
    assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    with pytest.raises(ValueError, match="api: chat"):
        _generator(server, api="completions").body(requests[0])


def test_at_most_concurrency_requests_are_in_flight(server):
    server.latency_s = 0.05
    _run(_generator(server, concurrency=3), [Request(_prompt(i)) for i in range(12)])
    events = sorted([(e["start"], 1) for e in server.log] + [(e["end"], -1) for e in server.log])
    level, peak = 0, 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert 1 < peak <= 3


def test_parsing_and_header_helpers():
    assert parse_response(b'{"choices": [{"message": {"content": [{"type": "text", "text": "a b"}]}}]}',
                          "chat").text == "a b"
    assert parse_response(b'{"choices": [{"message": {}}]}', "chat").reason == "malformed"
    assert parse_response(b'{"choices": [{"text": "  "}]}', "completions").reason == "empty"
    assert parse_response(b'[1, 2]', "chat").reason == "malformed"
    assert retry_after_seconds("2.5") == 2.5 and retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert 8 < retry_after_seconds(formatdate(timeval=__import__("time").time() + 10, usegmt=True)) <= 10
    rng = random.Random(0)
    delays = [backoff_delay(a, 1.0, 5.0, rng) for a in range(6)]
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2 and all(2.5 <= d <= 5 for d in delays[3:])
    url = image_data_url(_png(), 16, 80)
    assert url.startswith("data:image/jpeg;base64,")


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 32)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_model_name_is_required(server):
    with pytest.raises(ValueError, match="model"):
        OpenAIGenerator(OpenAIConfig(base_url=server.url), SamplingConfig())


def test_an_unnamed_model_is_the_one_the_server_lists(server):
    from curation.captions.openai_api import served_model

    assert served_model(OpenAIConfig(base_url=server.url)).model == "served-model"
    assert served_model(OpenAIConfig(base_url=server.url, model="mine")).model == "mine"  # never asked
    server.models = ["a", "b"]
    with pytest.raises(ValueError, match="lists 2 .*set openai.model"):
        served_model(OpenAIConfig(base_url=server.url))
    with pytest.raises(ValueError, match="did not list one"):
        served_model(OpenAIConfig(base_url=server.url + "/nowhere"))
