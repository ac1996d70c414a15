"""The caption stages' workers on the `openai` backend, against the loopback server: LaCLIP prompts out, cleaned
rewrites and captions back, the per-sample cache, failures by reason and the failure threshold, the dry run."""

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.captions import CaptionerConfig, LongcapConfig, OpenAIConfig, RewriteConfig, merge_tallies
from curation.captions.cache import AnswerCache
from curation.captions.estimate import estimate_parts
from curation.captions.laclip_pools import POOLS
from curation.captions.runner import Captioner, CaptionFailureError, Rewriter, check_failures
from tests.servers.openai_server import FAULTS, OpenAICompatibleServer, prompt_of

CAPTIONS = ["red star sticker on a laptop", "a dog runs on the beach", "two cups of coffee on a table",
            "blue car parked by the river", "a child flying a kite", "old wooden bridge in fog"]


@pytest.fixture
def server():
    with OpenAICompatibleServer(hang_s=1.0) as s:
        yield s


def _openai(server, **kw) -> OpenAIConfig:
    settings = {"base_url": server.url, "model": "tiny-llm", "backoff_s": 0.01, "max_backoff_s": 0.05,
                "timeout_s": 0.5, "max_retries": 1, "concurrency": 4, **kw}
    return OpenAIConfig(**settings)


def _table(n: int = len(CAPTIONS)) -> pa.Table:
    return pa.table({"uid": [f"u{i}" for i in range(n)], "text": CAPTIONS[:n]})


def _rewrite_cfg(server, **kw) -> RewriteConfig:
    return RewriteConfig(backend="openai", openai=_openai(server), progress=False, **kw)


def _caption_of(prompt: str) -> str:
    return prompt.strip().splitlines()[-1].removesuffix("=>").strip()


def test_rewrites_come_from_laclip_prompts_one_pool_each(server, tmp_path):
    server.behave = lambda prompt, attempt: "preamble" if "dog" in _caption_of(prompt) else "ok"
    table, tally = Rewriter(_rewrite_cfg(server), str(tmp_path)).rewrite_table(_table(), seed=1)
    rows = table.column("rewrites").to_pylist()
    assert rows == [[f"A view of {c}"] * 4 for c in CAPTIONS]  # the preamble ("Sure! Here is...") stripped
    assert len(server.log) == 4 * len(CAPTIONS)
    for entry in server.log:
        prompt = prompt_of(entry["body"])[0]
        blocks = prompt.split("\n\n")
        assert blocks[0] == "rewrite image captions differently," and blocks[-1].endswith(" =>")
        pairs = [tuple(b.split(" => ")) for b in blocks[1:-1]]
        assert len(pairs) == 3 and any(set(pairs) <= set(pool) for pool in POOLS.values())
    pools_used = {next(name for name, pool in POOLS.items() if set(
        tuple(b.split(" => ")) for b in prompt_of(e["body"])[0].split("\n\n")[1:-1]) <= set(pool))
        for e in server.log if "dog" in prompt_of(e["body"])[0].splitlines()[-1]}
    assert pools_used == {"chatgpt", "bard", "human", "coco"}  # one rewrite per pool
    assert tally.requests == tally.sent == tally.answered == 24 and tally.failed == 0
    assert tally.prompt_tokens > 0 and tally.completion_tokens > 0


def test_a_rerun_asks_only_for_what_the_cache_lacks(server, tmp_path):
    first, _ = Rewriter(_rewrite_cfg(server), str(tmp_path)).rewrite_table(_table(), seed=1)
    assert len(server.log) == 24
    again, tally = Rewriter(_rewrite_cfg(server), str(tmp_path)).rewrite_table(_table(), seed=1)
    assert again.equals(first) and len(server.log) == 24  # nothing re-asked
    assert tally.cached == 24 and tally.sent == 0
    more, tally = Rewriter(_rewrite_cfg(server, k=5), str(tmp_path)).rewrite_table(_table(), seed=1)
    assert len(server.log) == 24 + 6 and tally.cached == 24  # only the fifth rewrite of each caption is new
    other_model = _rewrite_cfg(server)
    other_model = RewriteConfig(**{**other_model.__dict__, "openai": _openai(server, model="other-llm")})
    Rewriter(other_model, str(tmp_path)).rewrite_table(_table(), seed=1)
    assert len(server.log) == 30 + 24  # another model's answers are not this one's


def test_failed_requests_keep_the_original_and_are_counted_by_reason(server, tmp_path, reliability):
    behaviours = {"a dog runs on the beach": "400", "a child flying a kite": "503", "blue car parked by the river":
                  "notjson"}
    server.behave = lambda prompt, attempt: behaviours.get(_caption_of(prompt), "ok")
    table, tally = Rewriter(_rewrite_cfg(server), str(tmp_path)).rewrite_table(_table(), seed=1)
    rows = dict(zip(CAPTIONS, table.column("rewrites").to_pylist()))
    assert rows["a dog runs on the beach"] == [] and rows["red star sticker on a laptop"] != []
    assert tally.failures == {"http_4xx": 4, "http_5xx": 4, "malformed": 4}
    total = merge_tallies([tally.as_dict()])
    assert total["failure_share"] == pytest.approx(12 / 24)
    with pytest.raises(CaptionFailureError, match=r"50.0% of 24 requests failed.*http_5xx 4.*max_failure_share"):
        check_failures("rewrite", 0.05, total)
    check_failures("rewrite", 0.5, total)  # at the threshold: no error
    # the rerun asks again for the failed ones only (failures are never cached)
    server.behave = lambda prompt, attempt: "ok"
    _, tally = Rewriter(_rewrite_cfg(server), str(tmp_path)).rewrite_table(_table(), seed=1)
    assert tally.sent == 12 and tally.cached == 12 and tally.failed == 0
    for behaviour, reason in {"400": "http_4xx", "503": "http_5xx", "notjson": "malformed"}.items():
        reliability.fault(FAULTS[behaviour], "rewrite: request failed, original kept",
                          times=total["failures"][reason])


def _image(side: int, grey: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side // 2), (grey, grey, grey)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_longcap_keeps_every_captioners_output_and_the_short_caption(server, tmp_path):
    table = pa.table({"uid": ["a", "b", "c"], "text": ["alt a", "alt b", "alt c"],
                      "image": [_image(1024, 10), _image(300, 200), b"broken"]})
    cfg = LongcapConfig(backend="openai", openai=_openai(server, image_max_side=512), progress=False,
                        captioners=(CaptionerConfig("llava"),
                                    CaptionerConfig("sharegpt4v", openai=_openai(server, model="vlm-2",
                                                                                 image_max_side=256))))
    out, tally = Captioner(cfg, str(tmp_path)).longcap_table(table, [None] * 3, seed=2)
    rows = out.to_pylist()
    assert rows[0]["long_caption"].startswith("A test picture of 512 by 256 pixels in JPEG. Its mean brightness is 10")
    assert rows[0]["long_captions"][1].startswith("A test picture of 256 by 128 pixels")  # the second's own settings
    assert rows[0]["long_caption_sentences"] == [
        "A test picture of 512 by 256 pixels in JPEG", "Its mean brightness is 10", "Nothing else is in it",
        "A test picture of 256 by 128 pixels in JPEG", "Its mean brightness is 10", "Nothing else is in it"]
    assert rows[0]["synthetic_caption"].startswith("A test picture of 512")
    assert rows[2]["long_caption"] == rows[2]["synthetic_caption"] == "alt c"  # failed: the original caption
    assert rows[2]["long_captions"] == ["alt c", "alt c"]
    assert tally.failures == {"malformed": 3} and tally.requests == 9
    models = [e["body"]["model"] for e in server.log]
    assert models.count("tiny-llm") == 4 and models.count("vlm-2") == 2  # long + short from the first
    shorts = [e for e in server.log if e["body"]["max_tokens"] == cfg.short_max_new_tokens]
    assert len(shorts) == 2 and all(e["body"]["messages"][0]["content"][0]["text"] == cfg.short_prompt
                                    for e in shorts)
    described = Captioner(cfg, str(tmp_path)).describe()
    assert described["simulated"] is False and [c["captioner"] for c in described["captioners"]] == [
        "llava", "sharegpt4v"]


def test_the_dry_run_counts_what_a_run_would_send_and_sends_nothing(server, tmp_path):
    part = tmp_path / "part.parquet"
    pq.write_table(_table(), part)
    cfg = _rewrite_cfg(server)
    before = estimate_parts("rewrite", cfg, [str(part)], 1, str(tmp_path / "cache"))
    assert before["requests"] == 24 and before["cached"] == 0 and before["samples"] == 6
    assert before["max_completion_tokens"] == 24 * 77 and before["prompt_tokens"] > 24 * 20
    assert server.log == []
    Rewriter(cfg, str(tmp_path / "cache")).rewrite_table(_table(3), seed=1)
    after = estimate_parts("rewrite", cfg, [str(part)], 1, str(tmp_path / "cache"))
    assert after["requests"] == 12 and after["cached"] == 12
    assert estimate_parts("rewrite", RewriteConfig(), [str(part)], 1, None)["requests"] == 0  # simulated


def test_cache_batches_are_whole_files(tmp_path):
    cache = AnswerCache(tmp_path, batch=3)
    for i in range(7):
        cache.put(f"k{i}", f"t{i}")
    assert len(cache.files()) == 2 and len(cache) == 6  # the seventh waits for a flush
    cache.flush()
    assert len(cache) == 7 and cache.lookup(["k0", "k6", "nope"]) == {"k0": "t0", "k6": "t6"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_progress_bar_shows_done_total_rate_and_failures(server, tmp_path, capsys):
    server.behave = lambda prompt, attempt: "400" if "kite" in _caption_of(prompt) else "ok"
    cfg = RewriteConfig(backend="openai", openai=_openai(server), progress=True)
    Rewriter(cfg, str(tmp_path)).rewrite_table(_table(), seed=1)
    bar = capsys.readouterr().err.strip().splitlines()[-1].split("\r")[-1]
    assert "rewrite" in bar and "24/24" in bar and "req/s" in bar and "failed=4" in bar
